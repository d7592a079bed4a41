// The result record of a program's return value, for every JavaScript runtime: the Deno harnesses import
// it, and the isolate worker passes its source (minus `export`) to the isolate prelude. One function, so
// that the source is also one expression.
//
// `resultEncoder(stringify, parse, byteLength)` is called before any program runs, with the JSON functions
// the caller took then; `byteLength` (default: counted here) gives a string's UTF-8 size, which is what the
// output limit is in. The encoder's records have no prototype, so a patched Object.prototype.toJSON
// cannot replace them.
export function resultEncoder(stringify, parse, byteLength) {
  const apply = Reflect.apply;
  const charCodeAt = String.prototype.charCodeAt;
  const size = byteLength ?? ((text) => {
    let bytes = 0;
    for (let i = 0; i < text.length; i++) {
      const unit = apply(charCodeAt, text, [i]);
      if (unit < 0x80) bytes += 1;
      else if (unit < 0x800) bytes += 2;
      else if (unit >= 0xd800 && unit < 0xdc00 && i + 1 < text.length) {
        const next = apply(charCodeAt, text, [i + 1]);
        if (next >= 0xdc00 && next < 0xe000) {
          bytes += 4;
          i++;
        } else bytes += 3;
      } else bytes += 3;
    }
    return bytes;
  });
  const unserializable = (why) => ({ __proto__: null, status: "ok", unserializable: why });

  return (value, maxBytes) => {
    if (value === undefined) return { __proto__: null, status: "ok" };
    let json;
    try {
      json = stringify(value);
    } catch (error) {
      return unserializable(`the return value is not JSON-serialisable: ${error.message}`);
    }
    if (json === undefined) return unserializable(`a ${typeof value} return value is not JSON-serialisable`);
    if (size(json) > maxBytes) {
      return unserializable(`the return value is larger than the ${maxBytes}-byte output limit`);
    }
    return { __proto__: null, status: "ok", value: parse(json) };
  };
}
