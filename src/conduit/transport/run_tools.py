"""Runs over MCP: background executions, their status and cancel tools, and asking a client's person.

A request *attends* a run (:func:`attend`): it waits for its outcome, and asks the client to approve
each call the run waits for. A client on a handshake protocol version is asked in the request with
an elicitation form; one on 2026-07-28 gets the multi-round-trip form: the tool call answers
``input_required`` with the form, and the client's next round (``inputResponses`` and the
``requestState`` it was given) brings the answer back to the same run, which kept running meanwhile.
A client that did not declare elicitation is never asked: such calls are declined at once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import anyio
import mcp_types as types
from anyio.abc import TaskGroup
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from conduit.catalog import CONDUIT_PREFIX
from conduit.core.approvals import Answer, ApprovalRequest
from conduit.core.runs import AnyRun, LostRunError, Pending, Runs
from conduit.errors import INVALID_PARAMS, ConduitError
from conduit.observability.context import ENDED_BY
from conduit.security.callers import Caller
from conduit.transport.wire import failed_tool_call, json_result

logger = logging.getLogger(__name__)

STATUS: Final = f"{CONDUIT_PREFIX}mcp_execution_status"
CANCEL: Final = f"{CONDUIT_PREFIX}mcp_cancel_execution"
_ID_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"executionId": {"type": "string"}},
    "required": ["executionId"],
}
TOOLS: Final = {
    STATUS: types.Tool(
        name=STATUS,
        description="A background execution's output so far; its result once done.",
        input_schema=_ID_SCHEMA,
    ),
    CANCEL: types.Tool(name=CANCEL, description="Stop a background execution.", input_schema=_ID_SCHEMA),
}
Answered = types.CallToolResult | types.InputRequiredResult


def can_ask(ctx: ServerRequestContext[Any]) -> bool:
    """Whether the client declared elicitation (a call needing approval is declined at once otherwise)."""
    return ctx.session.check_client_capability(types.ClientCapabilities(elicitation=types.ElicitationCapability()))


def modern(ctx: ServerRequestContext[Any]) -> bool:
    """Whether the request's session speaks the 2026-07-28 protocol (rather than a handshake-era one)."""
    return ctx.session.protocol_version in MODERN_PROTOCOL_VERSIONS


def elicitation(request: ApprovalRequest) -> types.ElicitRequestFormParams:
    """The form a person is shown: the tool, the (scrubbed) arguments, and one yes/no field."""
    schema: Any = {
        "type": "object",
        "properties": {"approve": {"type": "boolean", "title": f"Approve {request.tool}", "default": False}},
        "required": ["approve"],
    }
    return types.ElicitRequestFormParams(message=request.message, requested_schema=schema)


def answer_of(response: object) -> Answer:
    """A client's answer to the form: approval only for ``accept`` with ``approve: true``."""
    if not isinstance(response, types.ElicitResult):
        return "decline"
    if response.action == "accept":
        return "accept" if (response.content or {}).get("approve") is True else "decline"
    return "cancel" if response.action == "cancel" else "decline"


async def resumed(
    runs: Runs, caller: Caller, params: types.CallToolRequestParams, tool: str | None = None
) -> AnyRun | None:
    """The run a later round continues (its ``requestState``), with the round's answers given to it: an
    execution's, or (``tool``) the proxied call of that tool."""
    if params.request_state is None:
        return None
    run = await runs.by_token(caller, params.request_state)
    if run is None or run.tool != tool:
        raise MCPError(INVALID_PARAMS, "unknown or expired requestState: start the call again")
    for key, response in (params.input_responses or {}).items():
        await runs.answer(run, key, answer_of(response))
    return run


async def attend(ctx: ServerRequestContext[Any], runs: Runs, run: AnyRun, *, owned: bool) -> Answered:
    """Wait for ``run``'s outcome (its foreground answer), asking the client about every approval it waits for.

    ``owned``: the run is this request's foreground run, cancelled if the request goes away (but not when
    it answers ``input_required``: the next round continues it).
    """
    handed_over = False
    try:
        async with anyio.create_task_group() as asking:
            while True:
                if not run.running:
                    asking.cancel_scope.cancel()
                    return answer(run)
                unsent = run.unsent()
                if unsent and modern(ctx):
                    handed_over = True
                    asking.cancel_scope.cancel()
                    return await input_required(runs, run, unsent)
                await _ask_in_request(asking, ctx, runs, run, unsent)
                run = await runs.refreshed(run)
        raise AssertionError("the loop above only ends by returning")  # pragma: no cover
    finally:
        if owned and not handed_over and run.running:
            with anyio.CancelScope(shield=True):
                await runs.cancel(run, ENDED_BY.get()())  # why this request was cancelled


def answer(run: AnyRun) -> types.CallToolResult:
    """A finished run's answer: an execution's result, or a proxied call's own (its failure as a failed call)."""
    payload, failed = run.result()
    if run.tool is None:
        return json_result(payload, failed)
    if "content" in payload:
        return types.CallToolResult.model_validate(payload)
    error = payload["error"]
    return failed_tool_call(ConduitError(str(error["message"]), code=int(error["code"])))


async def input_required(runs: Runs, run: AnyRun, unsent: list[Pending]) -> types.InputRequiredResult:
    """The multi-round-trip answer: the forms to fill in, and the state that brings the answers back."""
    for pending in unsent:
        await runs.mark_sent(run, pending)
    requests: dict[str, Any] = {p.key: types.ElicitRequest(params=elicitation(p.request)) for p in unsent}
    return types.InputRequiredResult(input_requests=requests, request_state=run.resume_token)


async def _ask_in_request(
    asking: TaskGroup, ctx: ServerRequestContext[Any], runs: Runs, run: AnyRun, unsent: list[Pending]
) -> None:
    """Ask the client about each of ``unsent`` with an ``elicitation/create`` on this request (handshake era),
    each in a task of ``asking``; the answers go to the run as they come."""
    for pending in unsent:
        await runs.mark_sent(run, pending)
        asking.start_soon(_elicit, ctx, runs, run, pending)


async def _elicit(ctx: ServerRequestContext[Any], runs: Runs, run: AnyRun, pending: Pending) -> None:
    form = elicitation(pending.request)
    try:
        response = await ctx.session.elicit_form(form.message, form.requested_schema, related_request_id=ctx.request_id)
    except Exception as exc:  # no back-channel, the client refused or went away: declined
        logger.warning("could not ask for approval of %s: %s", pending.request.tool, exc)
        await runs.answer(run, pending.key, "decline")
        return
    await runs.answer(run, pending.key, answer_of(response))


async def call(ctx: ServerRequestContext[Any], runs: Runs, caller: Caller, name: str, params: Any) -> Answered:
    """The status or cancel tool's answer."""
    arguments: Mapping[str, Any] = params.arguments or {}
    unknown = sorted(set(arguments) - {"executionId"})
    if unknown:
        raise MCPError(INVALID_PARAMS, f"unknown argument(s): {', '.join(unknown)}")
    run = await resumed(runs, caller, params)
    if run is None:
        try:
            run = await runs.find(caller, arguments.get("executionId"))
        except LostRunError as exc:
            return json_result({"executionId": exc.execution_id, "status": "lost", "message": exc.message}, True)
    if name == CANCEL:
        await runs.cancel(run)
        with anyio.move_on_after(5):
            while run.running:
                run = await runs.refreshed(run)
        payload, failed = run.status()
        return json_result(payload, failed)
    unsent = run.unsent()
    if unsent and can_ask(ctx) and modern(ctx):
        return await input_required(runs, run, unsent)
    if unsent and can_ask(ctx):
        async with anyio.create_task_group() as asking:
            await _ask_in_request(asking, ctx, runs, run, unsent)
    payload, failed = run.status()
    return json_result(payload, failed)
