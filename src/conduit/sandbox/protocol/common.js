// The JavaScript side of the host–sandbox protocol (conduit/sandbox/protocol), shared by Conduit's
// Deno-hosted harnesses (TypeScript and Pyodide): reading the one job, the bridge client, the outcome
// records, and the record written behind the job's marker. The names and markers are protocol.json's,
// which the host reads too.
//
// What the harness needs to report an outcome (the stdio writers, exit, JSON, the text encoder) is
// taken here, when the harness loads and before any program runs: a program that replaces
// `Deno.stdout.writeSync`, `Deno.exit` or `JSON.stringify` changes only what it calls itself.

import protocol from "./protocol.json" with { type: "json" };
import { resultEncoder } from "./result.js";

export const PROTOCOL = protocol;
const { resultPrefix: RESULT_PREFIX, endPrefix: END_PREFIX } = protocol;
const INTERNAL_ERROR = protocol.codes.internalError;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const apply = Reflect.apply;
const encodeText = encoder.encode.bind(encoder);
const subarray = Uint8Array.prototype.subarray;
const stringify = JSON.stringify;
const parse = JSON.parse;
const exit = Deno.exit.bind(Deno);

function writerOf(stream) {
  const write = stream.writeSync.bind(stream);
  return (bytes) => {
    let written = 0;
    while (written < bytes.length) written += write(apply(subarray, bytes, [written]));
    return written;
  };
}

/** Write all of `bytes` (or a string, UTF-8 encoded) to the process's stdout or stderr. */
export const stdout = writerOf(Deno.stdout);
export const stderr = writerOf(Deno.stderr);

/** `text` as UTF-8 bytes, with the encoder taken before any program ran. */
export function utf8(text) {
  return encodeText(text);
}

export async function readJob() {
  // Deno.stdin.read in a loop, not Deno.stdin.readable: the web stream costs
  // a fresh process about 13 ms more CPU for the same bytes (so does a Deno.Conn's readable).
  const chunks = [];
  let total = 0;
  for (;;) {
    const buffer = new Uint8Array(64 * 1024);
    const count = await Deno.stdin.read(buffer);
    if (count === null) break;
    chunks.push(buffer.subarray(0, count));
    total += count;
  }
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return parse(decoder.decode(bytes));
}

export function base64(text) {
  const bytes = encodeText(text);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function dataUrl(source, mediaType) {
  return `data:${mediaType};base64,${base64(source)}`;
}

export class BridgeClient {
  #open;
  #conn = null;
  #token;
  #nextId = 1;
  #pending = new Map();
  #writeChain = Promise.resolve();

  /**
   * `connection` is an open Deno.Conn, or a function that opens one: the connection is then made
   * on the first request, so a program that calls no tool never connects.
   */
  constructor(connection, token = null) {
    this.#open = typeof connection === "function" ? connection : () => connection;
    this.#token = token;
    if (typeof connection !== "function") this.#connection();
  }

  /** The session token; a connection opened before the job arrives gets it afterwards. */
  set token(value) {
    this.#token = value;
  }

  #connection() {
    if (this.#conn === null) {
      this.#conn = Promise.resolve(this.#open()).then((conn) => {
        conn.setNoDelay(true);
        this.#readLoop(conn);
        return conn;
      });
    }
    return this.#conn;
  }

  async #readLoop(conn) {
    let buffer = "";
    const chunk = new Uint8Array(64 * 1024);
    try {
      // conn.read, not conn.readable: the first web stream a process makes costs it ~10 ms of CPU.
      for (let count; (count = await conn.read(chunk)) !== null; ) {
        buffer += decoder.decode(chunk.subarray(0, count), { stream: true });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (line.trim()) this.#dispatch(parse(line));
        }
      }
    } catch (_) {
      // connection gone: fall through and fail what is pending
    }
    for (const { reject } of this.#pending.values()) {
      reject(Object.assign(new Error("bridge connection closed"), { code: INTERNAL_ERROR }));
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
      // Made here, the error's stack is this read loop's; the program's line is in the stack of the call.
      const site = waiter.site.stack ?? "";
      error.stack = `ToolError: ${error.message}${site.slice(site.indexOf("\n"))}`;
      waiter.reject(error);
    } else {
      waiter.resolve(message.result);
    }
  }

  request(method, params) {
    const id = this.#nextId++;
    const line = stringify({ jsonrpc: "2.0", id, method, params, auth: { bearerToken: this.#token } }) + "\n";
    const site = new Error(); // where the program called: a failure's stack points there
    const promise = new Promise((resolve, reject) => this.#pending.set(id, { resolve, reject, site }));
    const bytes = encodeText(line);
    this.#writeChain = this.#writeChain.then(async () => {
      const conn = await this.#connection();
      let written = 0;
      while (written < bytes.length) written += await conn.write(bytes.subarray(written));
    }).catch((err) => {
      const waiter = this.#pending.get(id);
      this.#pending.delete(id);
      waiter?.reject(Object.assign(new Error(`bridge write failed: ${err?.message ?? err}`), { code: INTERNAL_ERROR }));
    });
    return promise;
  }
}

/** The outcome record of a program that failed with `error`: `{name, message, code?}` (see records.py). */
export const errorRecord = (error) => ({ status: "error", error });

/** The outcome record of a limit the sandbox itself saw: `memory` or `timeout`. */
export const limitRecord = (limit) => ({ status: "limit", limit });

/** The result record of a program's return value (see result.js), with this harness's JSON and encoder. */
export const encodeResult = resultEncoder(stringify, parse, (text) => encodeText(text).length);

/**
 * Report the outcome and end the process with `exitCode`. The end marker on stderr and the record on
 * stdout (after everything the program wrote to each) tell the host the output is complete, so it
 * need not wait for the process to finish exiting.
 */
export function finish(nonce, payload, exitCode) {
  stderr(encodeText(`${END_PREFIX}${nonce}\n`));
  // Without a prototype, neither the record nor its error can be replaced by a patched toJSON.
  const record = { __proto__: null, ...payload, exitCode };
  if (payload.error) record.error = { __proto__: null, ...payload.error };
  stdout(encodeText(`${RESULT_PREFIX}${nonce}:${stringify(record)}\n`));
  exit(exitCode);
}

