// Conduit's fixed Deno harness: the main module of every TypeScript sandbox.
//
// It is the main module on purpose: imports written literally in a main module are loaded
// without permission checks, so user code is never the main module. The harness waits for
// exactly one job on stdin, connects to the host bridge, builds the `tools` SDK from the
// generated module it was sent, imports the user program from a data: URL (where every
// import is permission-checked), and reports the program's return value on stdout behind
// a per-job marker that user code cannot know. Then it exits: one sandbox, one program.

import {
  BridgeClient,
  dataUrl,
  encodeResult,
  errorRecord,
  finish,
  limitRecord,
  readJob,
  stderr,
  stdout,
  utf8,
} from "../protocol/common.js";

// Deno abbreviates long data: URLs in messages ("data:...;base64,AbCd......XyZ"), so both the
// full URLs and their abbreviations are replaced by the names the client knows.
const DATA_URL = /data:application\/(?:typescript|javascript);base64,[A-Za-z0-9+/=]*(?:\.\.\.\.\.\.[A-Za-z0-9+/=]*)?/g;

function scrub(text, programUrl, sdkUrl) {
  return String(text)
    .replaceAll(sdkUrl, "tools.ts")
    .replaceAll(programUrl, "program.ts")
    .replace(DATA_URL, (url) => (sdkUrl.startsWith(url.split("......")[0]) ? "tools.ts" : "program.ts"));
}

// A frame of Conduit's own code (the harness, the SDK, Deno's internals): the program's are the ones kept.
const SDK_FRAME = /^\s+at (?:.* \()?tools\.ts:\d+:\d+\)?$/;

function cleanStack(error, programUrl, sdkUrl) {
  const text = error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : String(error);
  const harnessDir = new URL(".", import.meta.url).href;
  return scrub(text, programUrl, sdkUrl)
    .split("\n")
    .filter((line) => !line.includes(harnessDir) && !line.includes("ext:") && !SDK_FRAME.test(line))
    .join("\n");
}

// A RangeError from an allocation the memory limit refused (a WebAssembly memory that cannot grow past
// its ceiling, an ArrayBuffer the heap cannot hold): the program ran out of memory, not into a bug.
const OUT_OF_MEMORY = /allocation failed|could not allocate memory|unable to grow instance memory|out of memory/i;

function outOfMemory(error) {
  return error instanceof RangeError && OUT_OF_MEMORY.test(String(error.message));
}

function describeError(error, programUrl, sdkUrl) {
  if (error instanceof Error) {
    const described = { name: error.name, message: scrub(error.message, programUrl, sdkUrl) };
    if (typeof error.code === "number") described.code = error.code;
    return described;
  }
  return { name: "Error", message: scrub(error, programUrl, sdkUrl) };
}

// Loaded and waiting: the host counts this sandbox as warm only from here on.
stdout(utf8("CONDUIT-READY\n"));

// Taken before any program runs: a program that replaces Deno.connect cannot see the bridge traffic.
const connect = Deno.connect.bind(Deno);

const job = await readJob();
// Connected on the first tool call (a program that calls none never opens a connection).
const bridge = new BridgeClient(
  () => connect({ hostname: job.bridge.host, port: job.bridge.port, transport: "tcp" }),
  job.token,
);

const sdkUrl = dataUrl(job.sdk, "application/javascript");
const programUrl = dataUrl(job.program, "application/typescript");
let failed = false;

function fail(error) {
  if (failed) return;
  failed = true;
  const stack = cleanStack(error, programUrl, sdkUrl);
  stderr(utf8(`Uncaught ${stack}\n`));
  const record = outOfMemory(error)
    ? limitRecord("memory")
    : errorRecord(describeError(error, programUrl, sdkUrl));
  finish(job.nonce, record, 1);
}

globalThis.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  fail(event.reason);
});
globalThis.addEventListener("error", (event) => {
  event.preventDefault();
  fail(event.error ?? event.message);
});

try {
  const sdk = await import(sdkUrl);
  const surface = sdk.createTools((method, params) => bridge.request(method, params));
  for (const [name, value] of Object.entries(surface)) {
    Object.defineProperty(globalThis, name, { value, writable: false, enumerable: false, configurable: false });
  }
  const program = await import(programUrl);
  const value = await program.default;
  finish(job.nonce, encodeResult(value, job.maxResultBytes), 0);
} catch (error) {
  fail(error);
}
