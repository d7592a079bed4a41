"""Conduit as an MCP server: its tool list and what each tool call does.

Built on the official SDK's low-level ``Server``; the same instance serves stdio and
Streamable HTTP. Protocol faults (unknown tool, invalid arguments) are JSON-RPC errors;
everything that happened inside a sandbox, failures included, is a tool result
(:mod:`conduit.transport.wire` maps one to the other). The execution tools come from the
language table (:mod:`conduit.core.languages`).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError

from conduit import __version__
from conduit.auth.http import caller_of
from conduit.catalog import CONDUIT_PREFIX, ToolEntry
from conduit.core.gateway import Gateway
from conduit.core.languages import BY_NAME, BY_TOOL, LANGUAGES, Language
from conduit.core.requests import ExecutionRequest, ToolCall, listed_schema, read_call
from conduit.core.runs import Run
from conduit.core.sessions import Session
from conduit.errors import BUSY, INVALID_PARAMS, UNAUTHORIZED, AuthorizationRequiredError, BusyError, ConduitError
from conduit.observability.context import CANCELLED, CLIENT_GONE, ENDED_BY, PRINCIPAL, REQUEST_ID, Ending
from conduit.security.callers import LOCAL, Caller
from conduit.transport import credential_tools, disclosure_tools, run_tools, skill_tools
from conduit.transport.disconnect import went_away
from conduit.transport.wire import (
    answer_failure,
    failed_execution,
    failed_tool_call,
    json_result,
    mcp_form,
    url_elicitation_required,
)

logger = logging.getLogger(__name__)

NO_WORK_TOOLS: Final = frozenset({*disclosure_tools.TOOLS, *run_tools.TOOLS, credential_tools.DISCONNECT})
"""Conduit's tools that start no work: disclosure, following or stopping a run, disconnecting an account."""


def _conduit_tools() -> list[types.Tool]:
    return [
        types.Tool(name=language.tool, description=language.description, input_schema=listed_schema(language))
        for language in LANGUAGES
    ]


def starts_work(message: Mapping[str, Any]) -> bool:
    """Whether a JSON-RPC message asks for new work (an execution, a proxied tool call): what a draining
    server refuses. Everything else starts none, a later round of a run (its ``requestState``) included.

    >>> starts_work({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "up__refund"}})
    True
    >>> starts_work({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    False
    """
    if message.get("method") != "tools/call" or "id" not in message:
        return False
    params = message.get("params")
    if not isinstance(params, Mapping) or params.get("requestState") is not None:
        return False
    return params.get("name") not in NO_WORK_TOOLS


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


def build_server(
    gateway: Gateway, local: Caller = LOCAL, serving_ends: Callable[[], Ending | None] = lambda: None
) -> Server[Any]:
    """The MCP server for ``gateway``; ``local`` is who a request without HTTP (stdio) acts as, and
    ``serving_ends`` says why the front end stops serving, once it does (the server stops, the stdio
    client closed its end)."""

    def ending(ctx: ServerRequestContext[Any]) -> Ending:
        """Why the request's handler was cancelled (asked only once it was): its HTTP client went away, the
        serving ends, or else the client asked (``notifications/cancelled``)."""
        scope = getattr(ctx.request, "scope", None)
        if scope is not None and went_away(scope):
            return CLIENT_GONE
        return serving_ends() or CANCELLED

    def caller_for(ctx: ServerRequestContext[Any]) -> Caller:
        """Who the request acts as: the HTTP door let it in as someone; stdio is ``local``."""
        scope = getattr(ctx.request, "scope", None)
        caller = local if scope is None else caller_of(scope)
        if caller is None:  # the door refuses such a request before it gets here
            raise MCPError(UNAUTHORIZED, "no caller: a valid bearer token is required")
        PRINCIPAL.set(caller.id)
        return caller

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        caller = caller_for(ctx)
        tools = [*_conduit_tools(), *run_tools.TOOLS.values(), *disclosure_tools.TOOLS.values()]
        if skill_tools.skills_of(gateway) is not None:
            tools.append(skill_tools.TOOL)
        if credential_tools.listed(gateway):
            tools.append(credential_tools.TOOL)
        if not gateway.config.code_mode_only:
            catalog = await gateway.visible_catalog(caller.reach, caller)
            tools.extend(entry.proxied() for entry in catalog.tools)
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        REQUEST_ID.set(str(ctx.request_id) if ctx.request_id is not None else uuid.uuid4().hex)
        ENDED_BY.set(lambda: ending(ctx))
        caller = caller_for(ctx)
        arguments = params.arguments or {}
        if params.name not in NO_WORK_TOOLS:
            await _admit(gateway, ctx, caller)  # following or stopping a run is not new work
        language = BY_TOOL.get(params.name)
        if language is not None:
            return await _execution(ctx, gateway, caller, language, params)
        if params.name in run_tools.TOOLS:
            try:
                return await run_tools.call(ctx, gateway.runs, caller, params.name, params)
            except ConduitError as exc:
                return answer_failure(exc, failed_tool_call)
        if params.name in disclosure_tools.TOOLS:
            try:
                return json_result(await disclosure_tools.call(gateway, params.name, arguments, caller))
            except ConduitError as exc:
                return answer_failure(exc, failed_tool_call)
        if params.name == skill_tools.SAVE:
            try:
                return json_result(await skill_tools.save(gateway, caller, arguments))
            except ConduitError as exc:
                return answer_failure(exc, failed_tool_call)
        if params.name == credential_tools.DISCONNECT and credential_tools.listed(gateway):
            try:
                return json_result(credential_tools.disconnect(gateway, caller, arguments))
            except ConduitError as exc:
                return answer_failure(exc, failed_tool_call)
        if params.name.startswith(CONDUIT_PREFIX):
            raise MCPError(INVALID_PARAMS, f"unknown tool {params.name!r} (not available in this version)")
        if gateway.config.code_mode_only:
            raise MCPError(INVALID_PARAMS, f"unknown tool {params.name!r} (this server runs in code-mode-only)")
        try:
            call = read_call(params.name, arguments)
            if params.request_state is not None:
                return await _approved_call(ctx, gateway, caller, params)
            entry = await gateway.needs_approval(call, caller)
            if entry is not None and isinstance(call, ToolCall):
                return await _approved_call(ctx, gateway, caller, params, (call, entry))
            return mcp_form(await gateway.audited_call(Session.of(caller), call))
        except AuthorizationRequiredError as exc:
            if run_tools.modern(ctx):  # 2026-07-28 retired -32042: a failed result carrying the URL
                return failed_tool_call(exc)
            if not credential_tools.can_open_urls(ctx) or not isinstance(call, ToolCall):
                raise url_elicitation_required(exc) from None
            try:
                return await credential_tools.connect_then_call(ctx, gateway, caller, call, exc)
            except ConduitError as again:
                return answer_failure(again, failed_tool_call)
        except ConduitError as exc:
            return answer_failure(exc, failed_tool_call)

    return Server(
        "conduit",
        version=__version__,
        instructions=f"Code mode: write one program that calls many tools via {BY_NAME['typescript'].tool}.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def _execution(
    ctx: ServerRequestContext[Any],
    gateway: Gateway,
    caller: Caller,
    language: Language,
    params: types.CallToolRequestParams,
) -> types.CallToolResult | types.InputRequiredResult:
    """An execution tool's call: its arguments checked once (:class:`~conduit.core.requests.ExecutionRequest`;
    wrong ones are a protocol error), then planned and run. In this request when it needs nothing more; as a
    run of the gateway's (:mod:`conduit.core.runs`) when it is a background one (answered at once with its id)
    or may wait for approvals, which this request attends, asking the client's person (its later rounds
    continue it)."""
    try:
        request = ExecutionRequest.from_arguments(language, params.arguments or {})
        detached = request.background or bool(gateway.approvals)
        async with ProgressStream.open(ctx) as progress:
            feed = progress.feed if progress else None
            if not detached:
                outcome = await gateway.run(gateway.plan(request, caller), on_output=feed)
                return json_result(outcome.as_result(), outcome.error is not None)
            run = await run_tools.resumed(gateway.runs, caller, params)
            if run is None:
                plan = gateway.plan(request, caller)
                run = gateway.start_run(plan, background=request.background, askable=run_tools.can_ask(ctx))
                if request.background:
                    await gateway.runs.announced(run)  # the next status read may land on any replica
                    return json_result({"executionId": run.id, "status": "running"})
            if isinstance(run, Run):  # another replica's run streams nothing here; its result has all the output
                run.on_output = feed
            try:
                return await run_tools.attend(ctx, gateway.runs, run, owned=True)
            finally:
                if isinstance(run, Run):
                    run.on_output = None
    except ConduitError as exc:
        return answer_failure(exc, failed_execution)


async def _approved_call(
    ctx: ServerRequestContext[Any],
    gateway: Gateway,
    caller: Caller,
    params: types.CallToolRequestParams,
    new: tuple[ToolCall, ToolEntry] | None = None,
) -> types.CallToolResult | types.InputRequiredResult:
    """A proxied call an approval rule covers, as a run this request attends (:meth:`Gateway.start_call`): the
    person is asked in this request (handshake era) or over input_required rounds (2026-07-28), and the
    upstream sees the call only once they approve."""
    run = await run_tools.resumed(gateway.runs, caller, params, tool=params.name)
    if run is None:
        assert new is not None, "only a first round has no run, and it comes with its checked call"
        call, entry = new
        run = gateway.start_call(caller, call, entry, askable=run_tools.can_ask(ctx))
    answer = await run_tools.attend(ctx, gateway.runs, run, owned=True)
    return mcp_form(answer) if isinstance(answer, types.CallToolResult) else answer


async def _admit(gateway: Gateway, ctx: ServerRequestContext[Any], caller: Caller) -> None:
    """Count one unit of work against the caller's rate limit (see :mod:`conduit.core.ratelimit`).

    Raises:
        MCPError: over the limit (-32000, with when to retry).
    """
    client = getattr(ctx.request, "client", None) if ctx.request is not None else None
    try:
        await gateway.admit(caller, str(client.host) if client is not None else None)
    except BusyError as exc:
        raise MCPError(BUSY, exc.message) from None
