// Conduit's fixed Deno harness: the main module of every TypeScript sandbox.
//
// It is the main module on purpose: imports written literally in a main module are loaded
// without permission checks, so user code is never the main module. The harness waits for
// exactly one job on stdin, connects to the host bridge, builds the `tools` SDK from the
// generated module it was sent, imports the user program from a data: URL (where every
// import is permission-checked), and reports the program's return value on stdout behind
// a per-job marker that user code cannot know. Then it exits: one sandbox, one program.

const RESULT_PREFIX = "\x1eCONDUIT-RESULT:";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

async function readJob() {
  const chunks = [];
  for await (const chunk of Deno.stdin.readable) chunks.push(chunk);
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return JSON.parse(decoder.decode(bytes));
}

function base64(text) {
  const bytes = encoder.encode(text);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function dataUrl(source, mediaType) {
  return `data:${mediaType};base64,${base64(source)}`;
}

class BridgeClient {
  #conn;
  #token;
  #nextId = 1;
  #pending = new Map();
  #writeChain = Promise.resolve();

  constructor(conn, token) {
    this.#conn = conn;
    this.#token = token;
    this.#readLoop();
  }

  async #readLoop() {
    let buffer = "";
    try {
      for await (const chunk of this.#conn.readable) {
        buffer += decoder.decode(chunk, { stream: true });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (line.trim()) this.#dispatch(JSON.parse(line));
        }
      }
    } catch (_) {
      // connection gone: fall through and fail what is pending
    }
    for (const { reject } of this.#pending.values()) {
      reject(Object.assign(new Error("bridge connection closed"), { code: -32603 }));
    }
    this.#pending.clear();
  }

  #dispatch(message) {
    const waiter = this.#pending.get(message.id);
    if (!waiter) return;
    this.#pending.delete(message.id);
    if (message.error) {
      const error = new Error(message.error.message);
      error.name = "ToolError";
      error.code = message.error.code;
      if (message.error.data !== undefined) error.data = message.error.data;
      waiter.reject(error);
    } else {
      waiter.resolve(message.result);
    }
  }

  request(method, params) {
    const id = this.#nextId++;
    const line = JSON.stringify({ jsonrpc: "2.0", id, method, params, auth: { bearerToken: this.#token } }) + "\n";
    const promise = new Promise((resolve, reject) => this.#pending.set(id, { resolve, reject }));
    const bytes = encoder.encode(line);
    this.#writeChain = this.#writeChain.then(async () => {
      let written = 0;
      while (written < bytes.length) written += await this.#conn.write(bytes.subarray(written));
    }).catch((err) => {
      const waiter = this.#pending.get(id);
      this.#pending.delete(id);
      waiter?.reject(Object.assign(new Error(`bridge write failed: ${err?.message ?? err}`), { code: -32603 }));
    });
    return promise;
  }
}

// Deno abbreviates long data: URLs in messages ("data:...;base64,AbCd......XyZ"), so both the
// full URLs and their abbreviations are replaced by the names the client knows.
const DATA_URL = /data:application\/typescript;base64,[A-Za-z0-9+/=]*(?:\.\.\.\.\.\.[A-Za-z0-9+/=]*)?/g;

function scrub(text, programUrl, sdkUrl) {
  return String(text)
    .replaceAll(sdkUrl, "tools.ts")
    .replaceAll(programUrl, "program.ts")
    .replace(DATA_URL, (url) => (sdkUrl.startsWith(url.split("......")[0]) ? "tools.ts" : "program.ts"));
}

function cleanStack(error, programUrl, sdkUrl) {
  const text = error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : String(error);
  const harnessUrl = import.meta.url;
  return scrub(text, programUrl, sdkUrl)
    .split("\n")
    .filter((line) => !line.includes(harnessUrl) && !line.includes("ext:"))
    .join("\n");
}

function describeError(error, programUrl, sdkUrl) {
  if (error instanceof Error) {
    const described = { name: error.name, message: scrub(error.message, programUrl, sdkUrl) };
    if (typeof error.code === "number") described.code = error.code;
    return described;
  }
  return { name: "Error", message: scrub(error, programUrl, sdkUrl) };
}

function encodeResult(value, maxBytes) {
  if (value === undefined) return { status: "ok" };
  let json;
  try {
    json = JSON.stringify(value);
  } catch (error) {
    return { status: "ok", unserializable: `the return value is not JSON-serialisable: ${error.message}` };
  }
  if (json === undefined) {
    return { status: "ok", unserializable: `a ${typeof value} return value is not JSON-serialisable` };
  }
  if (encoder.encode(json).length > maxBytes) {
    return { status: "ok", unserializable: `the return value is larger than the ${maxBytes}-byte output limit` };
  }
  return { status: "ok", value: JSON.parse(json) };
}

function report(nonce, payload) {
  const line = encoder.encode(`${RESULT_PREFIX}${nonce}:${JSON.stringify(payload)}\n`);
  let written = 0;
  while (written < line.length) written += Deno.stdout.writeSync(line.subarray(written));
}

const job = await readJob();
const conn = await Deno.connect({ hostname: job.bridge.host, port: job.bridge.port, transport: "tcp" });
conn.setNoDelay(true);
const bridge = new BridgeClient(conn, job.token);

const sdkUrl = dataUrl(job.sdk, "application/typescript");
const programUrl = dataUrl(job.program, "application/typescript");
let failed = false;

function fail(error) {
  if (failed) return;
  failed = true;
  const stack = cleanStack(error, programUrl, sdkUrl);
  const line = encoder.encode(`Uncaught ${stack}\n`);
  Deno.stderr.writeSync(line);
  report(job.nonce, { status: "error", error: describeError(error, programUrl, sdkUrl) });
  Deno.exit(1);
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
  report(job.nonce, encodeResult(value, job.maxResultBytes));
  Deno.exit(0);
} catch (error) {
  fail(error);
}
