"""The V8-isolate worker process: ``python -I -m conduit.sandbox.isolate.isolate_worker``.

Isolates never live in the server's own process: a program that spins inside an async
continuation blocks every Python thread that touches its isolate. So the server supervises
worker processes like this one and kills any that miss a deadline.

The worker reads one job per line on stdin and creates a **fresh** V8 context for each;
nothing survives from one job to the next. It speaks JSON lines on stdout::

    {"type": "ready"}                                         once, after start-up
    {"type": "output", "stream": "stdout"|"stderr", "data": str}   buffered console output, in order
    {"type": "done", "record": {...}}                         the program's outcome

Tool calls go from the isolate to the host bridge over loopback TCP with the job's session
token, exactly as a Deno sandbox's do, so the host enforces the same allowlist.
"""

from __future__ import annotations

import asyncio
import ctypes
import encodings.utf_16_le  # noqa: F401  (loaded now: after a late uid drop the stdlib may be unreadable)
import json
import os
import re
import signal
import sys
import types
from pathlib import Path
from typing import Any, Final

from py_mini_racer import JSEvalException, JSFunction, JSOOMException, JSParseException, mini_racer

PR_SET_PDEATHSIG: Final = 1
PROTOCOL_FILES: Final = Path(__file__).parents[1] / "protocol"
"""The host–sandbox protocol (``conduit.sandbox.protocol``), read from its files: the worker imports nothing
of Conduit's, so that it loads no server module."""
_PROTOCOL: Final[dict[str, Any]] = json.loads((PROTOCOL_FILES / "protocol.json").read_text(encoding="utf-8"))
INVALID_PARAMS: Final[int] = _PROTOCOL["codes"]["invalidParams"]
INTERNAL_ERROR: Final[int] = _PROTOCOL["codes"]["internalError"]
records = types.ModuleType("_conduit_records")
exec(compile((PROTOCOL_FILES / "records.py").read_text(encoding="utf-8"), "records.py", "exec"), records.__dict__)
PRELUDE: Final = (Path(__file__).parent / "isolate_prelude.js").read_text(encoding="utf-8").strip().rstrip(";")
RESULT_ENCODER: Final = (
    (PROTOCOL_FILES / "result.js").read_text(encoding="utf-8").replace("export function ", "function ")
)
"""The one result encoder of every JavaScript runtime, as a function expression for the prelude."""
_out = sys.stdout.buffer


def send(message: dict[str, Any]) -> None:
    _out.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    _out.flush()


class Bridge:
    """A pipelined JSON-RPC client for the host bridge, connected on the first request (a program
    that calls no tool never opens a connection)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self._address = (host, port)
        self._token = token
        self._next = 1
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Task[asyncio.StreamWriter] | None = None
        self._task: asyncio.Task[None] | None = None

    async def _connection(self) -> asyncio.StreamWriter:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        return await self._connecting

    async def _connect(self) -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection(*self._address)
        self._writer = writer
        self._task = asyncio.ensure_future(self._read(reader))
        return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                future = self._pending.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
        except (OSError, ValueError):
            pass
        for future in self._pending.values():
            if not future.done():
                future.set_result({"error": {"code": INTERNAL_ERROR, "message": "bridge connection closed"}})
        self._pending.clear()

    async def call(self, method: Any, params_json: Any, output: Any = "") -> str:
        """Forward the output the prelude handed over, then one request; always answers a JSON string.

        The answer is ``{"result": ...}`` or ``{"error": {"code", "message", "data"?}}``: nothing from Python
        (exceptions, tracebacks) ever reaches the isolate.
        """
        forward_output(output)
        try:
            params = json.loads(str(params_json))
        except ValueError:
            return json.dumps({"error": {"code": INVALID_PARAMS, "message": "arguments are not JSON-serialisable"}})
        try:
            return await self._request(str(method), params)
        except Exception:  # never let a Python exception (and its traceback) cross into the isolate
            return json.dumps({"error": {"code": INTERNAL_ERROR, "message": "the bridge is unavailable"}})

    async def _request(self, method: str, params: Any) -> str:
        request_id = self._next
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        request = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": method,
            "params": params,
            "auth": {"bearerToken": self._token},
        }
        writer = await self._connection()
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        answer = await future
        if "error" in answer:
            error = answer["error"]
            sent = {"code": error.get("code", INTERNAL_ERROR), "message": str(error.get("message"))}
            if "data" in error:
                sent["data"] = error["data"]
            return json.dumps({"error": sent})
        return json.dumps({"result": answer.get("result")})

    async def aclose(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.close()


def decode_output(encoded: str) -> tuple[list[tuple[str, str]], str | None]:
    """Split the prelude's output string into ``(stream, text)`` chunks and the outcome record's JSON.

    The prelude writes ``o<n>:<text>`` (stdout) and ``e<n>:<text>`` (stderr), ``n`` in UTF-16 code units,
    optionally followed by ``r<record JSON>``; offsets are taken in UTF-16 so any text, astral characters
    included, comes back exactly.

    >>> decode_output("o6:hi \\U0001f600\\ne2:!\\nr{}")
    ([('stdout', 'hi 😀\\n'), ('stderr', '!\\n')], '{}')
    """
    units = encoded.encode("utf-16-le", "surrogatepass")
    chunks: list[tuple[str, str]] = []
    pos, end = 0, len(units)
    while pos < end:
        tag = units[pos]
        if tag == ord("r") and units[pos + 1] == 0:
            return chunks, units[pos + 2 :].decode("utf-16-le", "replace")
        if tag not in (ord("o"), ord("e")) or units[pos + 1] != 0:
            break  # not the prelude's format: nothing more can be trusted
        length, pos = 0, pos + 2
        while pos < end and 0x30 <= units[pos] <= 0x39 and units[pos + 1] == 0:
            length = length * 10 + units[pos] - ord("0")
            pos += 2
        pos += 2
        text = units[pos : pos + 2 * length].decode("utf-16-le", "replace")
        chunks.append(("stderr" if tag == ord("e") else "stdout", text))
        pos += 2 * length
    return chunks, None


def forward_output(encoded: Any) -> None:
    """Send the program's output, handed over by the prelude, to the server in order."""
    for stream, text in decode_output(str(encoded))[0]:
        send({"type": "output", "stream": stream, "data": text})


def program_script(code: str) -> str:
    """The program as a script whose value is the runner's promise; user line N stays line N.

    The runner is taken from the global the setup left it in, and the global deleted, before the
    program's first statement runs: the program can neither reach nor replace it.
    """
    opener = "(r => (delete globalThis.__conduitRunner, r((async () => {"
    return f"{opener}{code}\n}})())))(globalThis.__conduitRunner)"


def setup_script(sdk: str, limits: dict[str, Any], max_result_bytes: int) -> str:
    """Install the prelude with the host bridge the worker left in ``__conduitCall``; evaluates to ``drain``.

    The bridge's global is deleted at once, the runner waits in a global for :func:`program_script`
    (nothing runs in between), and ``drain`` is only ever held by the worker.
    """
    caps = {
        "maxOutputBytes": int(limits.get("maxOutputBytes", max_result_bytes)),
        "maxLogEntries": int(limits.get("maxLogEntries", 10_000)),
    }
    return (
        f"(() => {{ const p = ({PRELUDE})(globalThis.__conduitCall, ({sdk}), {json.dumps(caps)}, "
        f"({RESULT_ENCODER}\n)); delete globalThis.__conduitCall; globalThis.__conduitRunner = p.run; "
        "return p.drain; })()"
    )


async def run_program(racer: Any, code: str) -> Any:
    """Evaluate the program and wait for the runner's outcome string (one await, one deadline)."""
    promise = await racer.eval_cancelable(program_script(code))
    return await promise


_PARSE_ERROR = re.compile(r"^<anonymous>:(\d+): SyntaxError: (.*)$")


def syntax_error_message(raw: str) -> str:
    """``"<anonymous>:2: SyntaxError: Unexpected token '}'"`` -> ``"Unexpected token '}' (program.js:2)"``."""
    first = raw.strip().splitlines()[0] if raw.strip() else ""
    match = _PARSE_ERROR.match(first)
    return f"{match.group(2)} (program.js:{match.group(1)})" if match else sanitize(first or "invalid syntax")


def sanitize(text: str) -> str:
    return text.replace("<anonymous>", "program.js")


async def drain_after_stop(drain: Any) -> None:
    """Fetch what a stopped program printed last; bounded, as the isolate may be unusable."""
    try:
        forward_output(await asyncio.wait_for(drain.cancelable()(), 0.5))
    except Exception:  # an isolate past a limit may refuse anything; its last output is then lost
        return


class FreshContext:
    """A V8 context made ahead of its one job: nothing has run in it but mini-racer's own set-up and the
    host function the prelude will take (``__conduitCall``), which answers for the job's bridge once it
    has one. Making a context costs ~3 ms; the worker makes the next one after answering a job, not
    when the job arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._context = mini_racer(loop)
        self.racer = self._context.__enter__()
        self.bridge: Bridge | None = None
        self._host = self.racer.wrap_py_function(self._call)

    @classmethod
    async def make(cls, loop: asyncio.AbstractEventLoop) -> FreshContext:
        fresh = cls(loop)
        host_call = await fresh._host.__aenter__()
        glob: Any = fresh.racer.eval("globalThis")
        glob["__conduitCall"] = host_call
        return fresh

    async def _call(self, *args: Any) -> str:
        if self.bridge is None:
            return json.dumps({"error": {"code": INTERNAL_ERROR, "message": "the bridge is unavailable"}})
        return await self.bridge.call(*args)

    async def close(self) -> None:
        await self._host.__aexit__(None, None, None)
        self._context.__exit__(None, None, None)


async def run_job(job: dict[str, Any], fresh: FreshContext) -> bool:
    """Run one job in ``fresh``; returns False when the worker must not be reused."""
    limits = job["limits"]
    bridge = Bridge(job["bridge"]["host"], job["bridge"]["port"], job["token"])
    fresh.bridge = bridge
    racer = fresh.racer
    reusable = True
    try:
        racer.set_hard_memory_limit(int(limits["memoryLimitMb"]) * 1024 * 1024)
        drain = await racer.eval_cancelable(setup_script(job["sdk"], limits, job["maxResultBytes"]))
        assert isinstance(drain, JSFunction)
        try:
            outcome = await asyncio.wait_for(run_program(racer, job["program"]), limits["timeoutMs"] / 1000)
            chunks, record_json = decode_output(str(outcome))
            for stream, text in chunks:
                send({"type": "output", "stream": stream, "data": text})
            record = json.loads(record_json) if record_json is not None else {}
            if not isinstance(record, dict):
                record = {}
        except JSParseException as exc:
            message = syntax_error_message(str(exc))
            send({"type": "output", "stream": "stderr", "data": f"Uncaught SyntaxError: {message}\n"})
            record = records.error_record("SyntaxError", message)
        except JSOOMException:
            record, reusable = records.limit_record("memory"), False
            await drain_after_stop(drain)
        except TimeoutError:
            record, reusable = records.limit_record("timeout"), False
            await drain_after_stop(drain)
        except JSEvalException as exc:
            if racer.was_hard_memory_limit_reached():
                record, reusable = records.limit_record("memory"), False
                await drain_after_stop(drain)
            else:
                message = sanitize(str(exc).strip().splitlines()[0] if str(exc).strip() else "Error")
                record = records.error_record("Error", message)
        if racer.was_hard_memory_limit_reached() and record.get("status") != "limit":
            record, reusable = records.limit_record("memory"), False
        if isinstance(record.get("error"), dict):
            record["error"]["message"] = sanitize(str(record["error"].get("message", "")))
        send({"type": "done", "record": record})
        if not reusable:
            os._exit(0)  # the isolate may still be running: never touch it again
    finally:
        await bridge.aclose()
    return reusable


def drop_privileges(argv: list[str]) -> None:
    """``--uid N``: become uid/gid N now that everything the worker needs is loaded (before any job).

    For interpreters the unprivileged user cannot start from (a Python under /root): the worker
    starts as root behind its other walls, loads Python, mini-racer, V8 and ICU, then drops. The uid
    change clears the parent-death signal the launcher set, so it is set again.
    """
    if len(argv) == 2 and argv[0] == "--uid":
        uid, parent = int(argv[1]), os.getppid()
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        # As conduit.sandbox.walls.confine.die_with_parent does (this module imports nothing of Conduit's).
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PDEATHSIG)")
        if os.getppid() != parent:
            os._exit(1)  # Conduit died during the start


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with mini_racer(loop) as warm:  # load V8 and ICU before the uid drops
        warm.eval("1")
    drop_privileges(sys.argv[1:])
    fresh = await FreshContext.make(loop)
    send({"type": "ready"})
    while line := await reader.readline():
        used = fresh
        if not await run_job(json.loads(line), used):
            return
        fresh = await FreshContext.make(loop)  # before the next job arrives, while the host answers this one
        await used.close()


if __name__ == "__main__":
    asyncio.run(main())
