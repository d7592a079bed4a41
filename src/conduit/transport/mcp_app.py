"""Conduit as an MCP server: its tool list and what each tool call does.

Built on the official SDK's low-level ``Server``; the same instance serves stdio and
Streamable HTTP. Protocol faults (unknown tool, invalid arguments) are JSON-RPC errors;
everything that happened inside a sandbox, failures included, is a tool result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError

from conduit import __version__
from conduit.core.gateway import Gateway, outcome_payload
from conduit.errors import BUSY, INVALID_PARAMS, ConduitError, ToolDeniedError, UnknownToolError, UpstreamError
from conduit.observability.context import REQUEST_ID
from conduit.security.allowlist import Allowlist
from conduit.transport import disclosure_tools

logger = logging.getLogger(__name__)

PREFIX: Final = "conduit__"

_LIMITS_SCHEMA: Final = {
    "type": "object",
    "description": "Lower the server's limits for this run (values above the server's ceilings are capped).",
    "properties": {
        "timeoutMs": {"type": "integer", "minimum": 1},
        "memoryLimitMb": {"type": "integer", "minimum": 1},
        "maxOutputBytes": {"type": "integer", "minimum": 1},
        "maxLogEntries": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}

EXECUTE_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "description": "The program to run."},
        "allowedTools": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Tools the program may call: '*', 'upstream.*', 'upstream.tool' or 'tool'.",
        },
        "limits": _LIMITS_SCHEMA,
    },
    "required": ["code"],
    "additionalProperties": False,
}

EXECUTE_ARGUMENTS: Final = frozenset({"code", "allowedTools", "limits"})

_TS_DESCRIPTION: Final = """\
Run a TypeScript program in a fresh, locked-down Deno sandbox and return its output.

The program calls upstream MCP tools through the global `tools` object:
`const r = await tools.<upstream>.<tool>({...args})` returns the tool's CallToolResult
(`r.content`, `r.structuredContent`, `r.isError`). `await tools.$raw("upstream__tool", args)`
calls by name; `await discoverMCPTools()` lists the tools this run may call. Denied, unknown or
failed calls throw an Error with a numeric `code`. Top-level `await` works; a top-level `return`
value becomes `result`. console.log/info/debug go to stdout, console.warn/error to stderr.
The sandbox has no file, env, network or subprocess access, and each run starts fresh.
Result: {stdout, stderr, exitCode, result?, error?: {code, message}}."""

_ISOLATE_DESCRIPTION: Final = """\
Run a plain JavaScript program in a fresh V8 isolate: the fastest runtime, for computation and tool calls.

Same SDK as the TypeScript runtime: `await tools.<upstream>.<tool>({...args})` returns the tool's
CallToolResult, `await tools.$raw("upstream__tool", args)` calls by name, `await discoverMCPTools()`
lists the tools this run may call; failed calls throw an Error with a numeric `code`. Top-level `await`
works; a top-level `return` value becomes `result`. console.log/info/debug go to stdout,
console.warn/error to stderr. Only ECMAScript built-ins exist: no modules, no fetch, no timers beyond
setTimeout, no ArrayBuffer/typed arrays/WebAssembly. Each run starts in a fresh isolate.
Result: {stdout, stderr, exitCode, result?, error?: {code, message}}."""

_PYTHON_DESCRIPTION: Final = """\
Run a Python program (CPython 3.14 on Pyodide/WASM) in a fresh, sealed sandbox and return its output.

The program calls upstream MCP tools through the global `tools` object:
`r = await tools.<upstream>.<tool>(arg=value, ...)` (or pass one dict) returns the tool's CallToolResult
as a dict (`r["content"]`, `r["structuredContent"]`, `r.get("isError")`).
`await tools.raw("upstream__tool", {...})` calls by name; `await discover_mcp_tools()` lists the tools
this run may call. Denied, unknown or failed calls raise `ToolError` with a numeric `.code`.
Top-level `await` works; the value of the last expression becomes `result` (JSON values only).
print() goes to stdout, exceptions print a traceback of the program to stderr. The standard library
works (json, re, asyncio, dataclasses, sqlite3...); there is no file, env, network or subprocess
access, and each run starts in a fresh interpreter.
Result: {stdout, stderr, exitCode, result?, error?: {code, message}}."""

_LANGUAGE_TOOLS: Final = {
    f"{PREFIX}mcp_execute_typescript": ("typescript", _TS_DESCRIPTION),
    f"{PREFIX}mcp_execute_python": ("python", _PYTHON_DESCRIPTION),
    f"{PREFIX}mcp_execute_isolate": ("isolate", _ISOLATE_DESCRIPTION),
}


def _conduit_tools() -> list[types.Tool]:
    return [
        types.Tool(name=name, description=description, input_schema=EXECUTE_SCHEMA)
        for name, (_language, description) in _LANGUAGE_TOOLS.items()
    ]


def execution_result(payload: Mapping[str, Any], is_error: bool) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(payload, ensure_ascii=False))],
        structured_content=dict(payload),
        is_error=is_error,
    )


def _check_arguments(arguments: Mapping[str, Any]) -> None:
    unknown = sorted(set(arguments) - EXECUTE_ARGUMENTS)
    if unknown:
        raise MCPError(INVALID_PARAMS, f"unknown argument(s): {', '.join(unknown)}")
    if "code" not in arguments:
        raise MCPError(INVALID_PARAMS, "missing required argument 'code'")


def progress_token(ctx: ServerRequestContext[Any]) -> str | int | None:
    """The client's progress token for this request, if it sent one."""
    meta: Mapping[str, Any] = ctx.meta or {}
    token = meta.get("progress_token", meta.get("progressToken"))
    return token if isinstance(token, str | int) else None


class ProgressStream:
    """Turns a running program's output into progress notifications, one per line.

    Output arrives in chunks from the sandbox; complete lines are queued (bounded: if the client
    reads slower than the program prints, the excess lines are skipped, never blocking the run)
    and sent by a task in order. The final result always carries the whole output.
    """

    QUEUE: Final = 1000

    def __init__(self, ctx: ServerRequestContext[Any], send: MemoryObjectSendStream[str]) -> None:
        self._ctx = ctx
        self._send = send
        self._partial = {"stdout": "", "stderr": ""}

    @classmethod
    @asynccontextmanager
    async def open(cls, ctx: ServerRequestContext[Any]) -> AsyncIterator[ProgressStream | None]:
        if progress_token(ctx) is None:
            yield None
            return
        send, receive = anyio.create_memory_object_stream[str](cls.QUEUE)
        stream = cls(ctx, send)
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream._forward, receive)
            try:
                yield stream
            except Exception as exc:  # re-raised below, not wrapped in the task group's ExceptionGroup
                failure = exc
            finally:
                stream._flush()
                send.close()
        if failure is not None:
            raise failure

    def feed(self, name: str, text: str) -> None:
        lines = (self._partial[name] + text).split("\n")
        self._partial[name] = lines.pop()
        for line in lines:
            self._queue(name, line)

    def _flush(self) -> None:
        for name, rest in self._partial.items():
            if rest:
                self._queue(name, rest)
        self._partial = {"stdout": "", "stderr": ""}

    def _queue(self, name: str, line: str) -> None:
        with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._send.send_nowait(line if name == "stdout" else f"[stderr] {line}")

    async def _forward(self, receive: MemoryObjectReceiveStream[str]) -> None:
        count = 0
        async with receive:
            async for line in receive:
                count += 1
                try:
                    await self._ctx.session.report_progress(count, None, line)
                except Exception:  # a client gone mid-run: keep draining so the program is never blocked
                    logger.debug("progress notification not delivered")


def build_server(gateway: Gateway) -> Server[Any]:
    """The MCP server for ``gateway``."""
    everything = Allowlist.parse(["*"])

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        tools = [*_conduit_tools(), *disclosure_tools.TOOLS.values()]
        if not gateway.config.code_mode_only:
            catalog = await gateway.registry.catalog()
            tools.extend(
                types.Tool(name=entry.qualified, description=entry.description, input_schema=dict(entry.input_schema))
                for entry in catalog.tools
            )
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        REQUEST_ID.set(str(ctx.request_id) if ctx.request_id is not None else uuid.uuid4().hex)
        arguments = params.arguments or {}
        if params.name not in disclosure_tools.TOOLS:
            _admit(gateway, ctx)
        if params.name in _LANGUAGE_TOOLS:
            language = _LANGUAGE_TOOLS[params.name][0]
            _check_arguments(arguments)
            try:
                async with ProgressStream.open(ctx) as progress:
                    outcome = await gateway.execute(
                        language,
                        arguments.get("code"),
                        allowed_tools=arguments.get("allowedTools"),
                        limits=arguments.get("limits"),
                        on_output=progress.feed if progress else None,
                    )
            except ConduitError as exc:
                if exc.code == INVALID_PARAMS:
                    raise MCPError(exc.code, exc.message) from None
                return execution_result({"stdout": "", "stderr": "", "exitCode": 1, "error": _error(exc)}, True)
            return execution_result(outcome_payload(outcome), outcome.error is not None)
        if params.name in disclosure_tools.TOOLS:
            try:
                answer = await disclosure_tools.call(gateway, params.name, arguments)
            except ConduitError as exc:
                raise MCPError(exc.code, exc.message) from None
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=json.dumps(answer, ensure_ascii=False))],
                structured_content=answer,
            )
        if params.name.startswith(PREFIX):
            raise MCPError(INVALID_PARAMS, f"unknown tool {params.name!r} (not available in this version)")
        if gateway.config.code_mode_only:
            raise MCPError(INVALID_PARAMS, f"unknown tool {params.name!r} (this server runs in code-mode-only)")
        try:
            return await gateway.call_tool(params.name, arguments, everything)
        except (UnknownToolError, ToolDeniedError) as exc:
            raise MCPError(INVALID_PARAMS, exc.message) from None
        except UpstreamError as exc:
            return types.CallToolResult(content=[types.TextContent(type="text", text=exc.message)], is_error=True)
        except ConduitError as exc:
            raise MCPError(exc.code, exc.message) from None

    return Server(
        "conduit",
        version=__version__,
        instructions="Code mode: write one program that calls many tools via conduit__mcp_execute_typescript.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _admit(gateway: Gateway, ctx: ServerRequestContext[Any]) -> None:
    """Count one unit of work against the HTTP client's rate limit (stdio is never limited).

    Raises:
        MCPError: the client is over its limit (-32000, with when to retry).
    """
    client = getattr(ctx.request, "client", None) if ctx.request is not None else None
    if client is None:
        return
    retry_after = gateway.rate_limiter.admit(str(client.host))
    if retry_after is not None:
        gateway.metrics.rate_limited.inc()
        raise MCPError(
            BUSY, f"rate limit {gateway.rate_limiter.spec} exceeded for {client.host}; retry in {retry_after:.1f} s"
        )


def _error(exc: ConduitError) -> dict[str, Any]:
    return {"code": exc.code, "message": exc.message}
