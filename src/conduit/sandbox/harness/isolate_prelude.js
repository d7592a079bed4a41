// Conduit's prelude for V8-isolate sandboxes: runs first in every fresh context, before user code.
//
// It receives the host's bridge function, installs `console`, timers, `tools` and
// `discoverMCPTools`, removes globals whose memory escapes the isolate's heap limit
// (ArrayBuffer family, SharedArrayBuffer, Atomics, WebAssembly), and returns the runner that
// executes the program and reports its outcome as a JSON string. Everything the runner needs is
// captured here first, so a program that patches built-ins only affects itself.
//
// Console output is buffered here and handed to the host with every tool call and with the
// outcome: the host never has to call into the isolate while the program may be running. The
// buffer is capped near the output limits (the host enforces them exactly); past the cap,
// console methods throw and the outcome reports the overflow.
(function conduitPrelude(hostCall, createTools, limits) {
  "use strict";
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  const StringCtor = String;
  const ErrorCtor = Error;
  const PromiseCtor = Promise;
  const SAB = SharedArrayBuffer;
  const I32 = Int32Array;
  const waitAsync = Atomics.waitAsync;
  const define = Object.defineProperty;
  const keys = Object.keys;
  const push = Array.prototype.push;

  let buffered = [];
  let units = 0;
  let lines = 0;
  let overflowed = false;

  function drain() {
    const out = buffered;
    buffered = [];
    return out;
  }

  function emit(stream, text) {
    if (overflowed) throw new ErrorCtor("output limit exceeded");
    push.call(buffered, [stream, text]);
    units += text.length;
    for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) lines++;
    if (units > limits.maxOutputBytes || lines > limits.maxLogEntries) {
      overflowed = true;
      throw new ErrorCtor("output limit exceeded");
    }
  }

  function format(value) {
    if (typeof value === "string") return value;
    if (value instanceof ErrorCtor) {
      return StringCtor(value.stack ?? `${value.name}: ${value.message}`).replaceAll("<anonymous>", "program.js");
    }
    if (typeof value === "function") return `[Function ${value.name || "(anonymous)"}]`;
    if (typeof value === "bigint") return `${value}n`;
    if (typeof value === "symbol" || value === undefined) return StringCtor(value);
    try {
      return stringify(value) ?? StringCtor(value);
    } catch (_) {
      return StringCtor(value);
    }
  }

  function writer(stream) {
    return (...args) => {
      emit(stream, args.map(format).join(" ") + "\n");
    };
  }

  const console = {
    log: writer("stdout"),
    info: writer("stdout"),
    debug: writer("stdout"),
    warn: writer("stderr"),
    error: writer("stderr"),
    trace: writer("stderr"),
  };

  // Timers on Atomics.waitAsync, with the constructors captured before they are removed below.
  let nextTimer = 1;
  const pendingTimers = new Set();
  function setTimeout(callback, delay = 0, ...args) {
    const id = nextTimer++;
    pendingTimers.add(id);
    const view = new I32(new SAB(4));
    waitAsync(view, 0, 0, Math.max(0, Number(delay) || 0)).value.then(() => {
      if (pendingTimers.delete(id)) callback(...args);
    });
    return id;
  }
  function clearTimeout(id) {
    pendingTimers.delete(id);
  }

  async function call(method, params) {
    const answer = parse(await hostCall(method, stringify(params ?? {}), stringify(drain())));
    if (answer.error) {
      const error = new ErrorCtor(answer.error.message);
      error.name = "ToolError";
      error.code = answer.error.code;
      throw error;
    }
    return answer.result;
  }

  const surface = createTools(call);
  const globals = { console, ...surface };
  for (const name of keys(globals)) {
    define(globalThis, name, { value: globals[name], writable: false, enumerable: false, configurable: false });
  }
  // mini-racer declares these as non-configurable globals: replace their values.
  globalThis.setTimeout = setTimeout;
  globalThis.clearTimeout = clearTimeout;
  // For the host, after the isolate was stopped (timeout): what the program printed last.
  define(globalThis, "__conduitDrain", { value: () => stringify(drain()), enumerable: false });
  for (const name of [
    "ArrayBuffer", "SharedArrayBuffer", "DataView", "Atomics", "WebAssembly", "Int8Array", "Uint8Array",
    "Uint8ClampedArray", "Int16Array", "Uint16Array", "Int32Array", "Uint32Array", "Float16Array",
    "Float32Array", "Float64Array", "BigInt64Array", "BigUint64Array", "__TimerManager",
  ]) {
    delete globalThis[name];
  }

  function describe(error) {
    if (error instanceof ErrorCtor) {
      const described = { name: StringCtor(error.name), message: StringCtor(error.message) };
      if (typeof error.code === "number") described.code = error.code;
      return described;
    }
    return { name: "Error", message: format(error) };
  }

  function encode(value) {
    if (value === undefined) return { status: "ok" };
    let json;
    try {
      json = stringify(value);
    } catch (error) {
      return { status: "ok", unserializable: `the return value is not JSON-serialisable: ${error.message}` };
    }
    if (json === undefined) {
      return { status: "ok", unserializable: `a ${typeof value} return value is not JSON-serialisable` };
    }
    if (json.length > limits.maxOutputBytes) {
      const limit = limits.maxOutputBytes;
      return { status: "ok", unserializable: `the return value is larger than the ${limit}-byte output limit` };
    }
    return { status: "ok", value: parse(json) };
  }

  function finish(record) {
    record.output = drain();
    if (overflowed) record.overflowed = true;
    return stringify(record);
  }

  // The runner: the program's promise in, the outcome record (a JSON string) out.
  return (programPromise) =>
    PromiseCtor.resolve(programPromise).then(
      (value) => finish(encode(value)),
      (error) => {
        push.call(buffered, ["stderr", `Uncaught ${format(error)}\n`]);
        return finish({ status: "error", error: describe(error) });
      },
    );
});
