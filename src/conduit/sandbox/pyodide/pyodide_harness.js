// Conduit's Pyodide harness: the main module of every Python sandbox (CPython in WASM, in Deno).
//
// Python code can reach the whole JS side (`import js`, `pyodide.code.run_js`, the Function
// constructor of any JS object), so hiding globals isolates nothing. What isolates is Deno
// itself: this harness loads Pyodide (read access to its directory only), caps the WASM memory,
// opens the bridge connection, and then revokes every Deno permission before it even reads the
// job. From then on files, env, new connections, subprocesses and dynamic imports all fail for
// Python and JS alike, while the already-open bridge connection keeps working.
//
// Args: <pyodide dir> <wasm memory limit MiB> <bridge host> <bridge port> [<memory snapshot file>].
// With a snapshot (made by pyodide_snapshot.js) the interpreter is restored instead of started.

import { BridgeClient, errorRecord, finish, PROTOCOL, readJob, stderr, stdout, utf8 } from "../protocol/common.js";
import capabilities from "../protocol/capabilities.py" with { type: "text" };
import records from "../protocol/records.py" with { type: "text" };
import { loadPyodideFrom } from "./pyodide_common.js";
import prelude from "./python_prelude.py" with { type: "text" };

const [pyodideDir, memoryMb, bridgeHost, bridgePort, snapshotFile] = Deno.args;
const WASM_PAGE = 65536;
const WARM_UP_RUNS = 10;
const REVOKED = ["read", "write", "net", "env", "run", "sys", "ffi", "import"];

// --- WASM memory ceiling -------------------------------------------------------------------------
// Pyodide's module defines its memory with a 4 GiB maximum. Rewriting the maximum in the module's
// memory section before it is instantiated makes allocations past the limit fail inside Python
// (MemoryError) instead of growing the process to gigabytes.

function readLeb(bytes, pos) {
  let result = 0;
  let shift = 0;
  let byte;
  do {
    byte = bytes[pos++];
    result += (byte & 0x7f) * 2 ** shift;
    shift += 7;
  } while (byte & 0x80);
  return [result, pos];
}

function writeLeb(value) {
  const out = [];
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value) byte |= 0x80;
    out.push(byte);
  } while (value);
  return out;
}

function capMemory(source, maxPages) {
  const bytes = new Uint8Array(source instanceof ArrayBuffer ? source : source.buffer);
  if (bytes[0] !== 0x00 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) return source;
  let pos = 8;
  while (pos < bytes.length) {
    const id = bytes[pos];
    const [size, start] = readLeb(bytes, pos + 1);
    if (id === 5) {
      let [count, cursor] = readLeb(bytes, start);
      const flags = bytes[cursor++];
      if (count !== 1 || flags & 0x04) return source; // several memories or memory64: leave alone
      let initial;
      [initial, cursor] = readLeb(bytes, cursor);
      if (initial > maxPages) {
        throw new Error(`memory limit too low for Python: it needs at least ${Math.ceil((initial * WASM_PAGE) / 2 ** 20)} MiB`);
      }
      const body = [...writeLeb(1), flags | 0x01, ...writeLeb(initial), ...writeLeb(maxPages)];
      const header = [5, ...writeLeb(body.length)];
      const rest = bytes.subarray(start + size);
      const out = new Uint8Array(pos + header.length + body.length + rest.length);
      out.set(bytes.subarray(0, pos), 0);
      out.set(header, pos);
      out.set(body, pos + header.length);
      out.set(rest, pos + header.length + body.length);
      return out.buffer;
    }
    pos = start + size;
  }
  return source;
}

const maxPages = Math.floor((Number(memoryMb) * 2 ** 20) / WASM_PAGE);
const instantiate = WebAssembly.instantiate;
WebAssembly.instantiate = (source, imports) =>
  instantiate(source instanceof WebAssembly.Module ? source : capMemory(source, maxPages), imports);
WebAssembly.instantiateStreaming = async (response, imports) =>
  instantiate(capMemory(await (await response).arrayBuffer(), maxPages), imports);

// --- load, connect, seal -------------------------------------------------------------------------

const pyodide = await loadPyodideFrom(
  pyodideDir,
  snapshotFile ? { _loadSnapshot: Deno.readFileSync(snapshotFile) } : {},
);
pyodide.setStdout({ write: stdout });
pyodide.setStderr({ write: stderr });

// Connected now, before every permission is revoked (the open connection keeps working afterwards).
const conn = await Deno.connect({ hostname: bridgeHost, port: Number(bridgePort), transport: "tcp" });
const bridge = new BridgeClient(conn);
pyodide.registerJsModule("_conduit_bridge", {
  CALL_TOOL: PROTOCOL.methods.callTool,
  DISCOVER_TOOLS: PROTOCOL.methods.discoverTools,
  INTERNAL_ERROR: PROTOCOL.codes.internalError,
  RECORDS: records,
  CAPABILITIES: capabilities,
  call: async (method, paramsJson) => {
    try {
      return JSON.stringify({ result: await bridge.request(method, JSON.parse(paramsJson)) });
    } catch (error) {
      const sent = { code: error?.code ?? PROTOCOL.codes.internalError, message: String(error?.message ?? error), data: error?.data };
      return JSON.stringify({ error: sent });
    }
  },
});
pyodide.runPython(prelude, { filename: "<conduit>" });
const run = pyodide.pyimport("_conduit").run;

// A restored interpreter runs on V8's baseline WASM code: the first program would take ~10x longer
// than later ones. Running a fixed program (no tools, no output) through the same path a few times
// lets V8 optimise the hot functions before the sandbox says it is ready. The real run replaces
// everything this touches (the SDK module, the program's source lines).
if (snapshotFile) {
  // Shaped like a generated SDK (see conduit/sdk/python.py), so its compile path gets optimised too.
  const sdk = [
    "from typing import Any, Literal",
    "class _Tools:",
    "    async def add(self, args: dict[str, Any] | None = None, /, *, a: float = _MISSING) -> dict[str, Any]:",
    '        """Add.\n\n        Args:\n            a (float, required)\n        """',
    "        return args",
    "tools = _Tools()",
    "",
  ].join("\n");
  const program = "data = {'n': [i * i for i in range(64)], 's': f'{await tools.add({})}'}\nsorted(data)";
  for (let i = 0; i < WARM_UP_RUNS; i++) await run(program, sdk, 4096);
}

for (const name of REVOKED) Deno.permissions.revokeSync({ name });
stdout(utf8("CONDUIT-READY\n"));

// --- the one job ---------------------------------------------------------------------------------

const job = await readJob();
bridge.token = job.token;
let record;
try {
  record = JSON.parse(await run(job.program, job.sdk, job.maxResultBytes));
} catch (_) {
  // The program broke the runtime's own bookkeeping (patched builtins or the standard library).
  const message = "the Python runtime failed after the program changed it (patched builtins or stdlib?)";
  record = errorRecord({ name: "RuntimeError", message });
}
finish(job.nonce, record, record.status === "ok" ? 0 : record.status === "exit" ? record.code : 1);
