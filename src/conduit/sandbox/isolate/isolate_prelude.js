// Conduit's prelude for V8-isolate sandboxes: runs first in every fresh context, before user code.
//
// It is a function the worker calls with the host's bridge function, the SDK, the output caps and the
// result encoder of result.js. It installs `console`, timers, `tools` and `discoverMCPTools`, removes
// globals whose memory escapes the isolate's heap limit
// (ArrayBuffer family, SharedArrayBuffer, Atomics, WebAssembly), and returns `{run, drain}`: the worker
// keeps `drain` as a handle and hands `run` to the program script, which takes it before the program's
// first statement; nothing of Conduit's plumbing is left on `globalThis` for a program to call or replace.
//
// Console output is kept here until it is handed to the host, with every tool call and with the
// outcome (the host never calls into the isolate while the program may be running). Once a console
// call returns, its text belongs to the host: it is appended to a string that only `run` and `drain`
// read, in a length-prefixed form (`o<len>:<text>` for stdout, `e<len>:<text>` for stderr, lengths in
// UTF-16 units) built with primitive string operations only, so no prototype a program patches
// (`toJSON`, `push`, `call`, an index setter) can lose or alter it. The buffer is capped near the
// output limits (the host enforces them exactly); past the cap, console methods throw.
(function conduitPrelude(hostCall, createTools, limits, resultEncoder) {
  "use strict";
  const apply = Reflect.apply;
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  const StringCtor = String;
  const ErrorCtor = Error;
  const PromiseCtor = Promise;
  const promiseThen = Promise.prototype.then;
  const SAB = SharedArrayBuffer;
  const I32 = Int32Array;
  const waitAsync = Atomics.waitAsync;
  const define = Object.defineProperty;
  const keys = Object.keys;
  const indexOf = String.prototype.indexOf;
  const replaceAll = String.prototype.replaceAll;
  const arrayMap = Array.prototype.map;
  const arrayJoin = Array.prototype.join;
  const setAdd = Set.prototype.add;
  const setDelete = Set.prototype.delete;

  let pending = "";
  let units = 0;
  let lines = 0;
  let overflowed = false;

  function append(stream, text) {
    pending += (stream === "stderr" ? "e" : "o") + text.length + ":" + text;
  }

  function drain() {
    const out = pending;
    pending = "";
    return out;
  }

  function emit(stream, text) {
    if (overflowed) throw new ErrorCtor("output limit exceeded");
    append(stream, text);
    units += text.length;
    for (let i = apply(indexOf, text, ["\n"]); i >= 0; i = apply(indexOf, text, ["\n", i + 1])) lines++;
    if (units > limits.maxOutputBytes || lines > limits.maxLogEntries) {
      overflowed = true;
      throw new ErrorCtor("output limit exceeded");
    }
  }

  function format(value) {
    if (typeof value === "string") return value;
    if (value instanceof ErrorCtor) {
      const stack = StringCtor(value.stack ?? `${value.name}: ${value.message}`);
      return apply(replaceAll, stack, ["<anonymous>", "program.js"]);
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
      emit(stream, "" + apply(arrayJoin, apply(arrayMap, args, [format]), [" "]) + "\n");
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
    apply(setAdd, pendingTimers, [id]);
    const view = new I32(new SAB(4));
    apply(promiseThen, waitAsync(view, 0, 0, Math.max(0, Number(delay) || 0)).value, [
      () => {
        if (apply(setDelete, pendingTimers, [id])) apply(callback, undefined, args);
      },
    ]);
    return id;
  }
  function clearTimeout(id) {
    apply(setDelete, pendingTimers, [id]);
  }

  async function call(method, params) {
    const answer = parse(await hostCall(method, stringify(params ?? {}), drain()));
    if (answer.error) {
      const error = new ErrorCtor(answer.error.message);
      error.name = "ToolError";
      error.code = answer.error.code;
      if (answer.error.data !== undefined) error.data = answer.error.data;
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
  globalThis.__timer_manager = undefined;
  for (const name of [
    "ArrayBuffer", "SharedArrayBuffer", "DataView", "Atomics", "WebAssembly", "Int8Array", "Uint8Array",
    "Uint8ClampedArray", "Int16Array", "Uint16Array", "Int32Array", "Uint32Array", "Float16Array",
    "Float32Array", "Float64Array", "BigInt64Array", "BigUint64Array", "__TimerManager",
  ]) {
    delete globalThis[name];
  }

  function describe(error) {
    if (error instanceof ErrorCtor) {
      const described = { __proto__: null, name: StringCtor(error.name), message: StringCtor(error.message) };
      if (typeof error.code === "number") described.code = error.code;
      return described;
    }
    return { __proto__: null, name: "Error", message: format(error) };
  }

  const encode = resultEncoder(stringify, parse);

  // The outcome as one string: the output not yet handed over, then "r" and the record's JSON (the
  // record carries only what the program itself returned or threw). Records have no prototype, so a
  // patched Object.prototype.toJSON cannot replace them.
  function finish(record) {
    let json;
    try {
      json = stringify(record);
    } catch (_) {
      json = '{"status":"error","error":{"name":"Error","message":"the outcome could not be encoded"}}';
    }
    return drain() + "r" + json;
  }

  // `run`: the program's promise in, the outcome string out. `drain`: for the worker, after it stopped
  // a program at its deadline, what the program printed last.
  return {
    run: (programPromise) =>
      apply(promiseThen, PromiseCtor.resolve(programPromise), [
        (value) => finish(encode(value, limits.maxOutputBytes)),
        (error) => {
          append("stderr", `Uncaught ${format(error)}\n`);
          return finish({ __proto__: null, status: "error", error: describe(error) });
        },
      ]),
    drain,
  };
});
