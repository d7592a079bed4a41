"""How Conduit's results and errors look to an MCP client: the one mapping from the error tree.

A request that was wrong (``caller_fault`` in :mod:`conduit.errors`: bad arguments, an unknown or
forbidden tool, no such runtime) is a JSON-RPC error; work that failed (an upstream's failure, a
busy gateway, a sandbox that could not start) is a tool result with ``isError``, shaped like a
normal result of the tool that was called. The MCP specification wants an unknown tool answered
with invalid-params (-32602), whatever Conduit's own code for it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import mcp_types as types
from mcp.shared.exceptions import MCPError

from conduit.core.packages import value_result
from conduit.errors import INVALID_PARAMS, AuthorizationRequiredError, ConduitError, ToolDeniedError, UnknownToolError
from conduit.sandbox.base import ProgramFailure, execution_result


def protocol_error(exc: ConduitError) -> MCPError | None:
    """The JSON-RPC error for ``exc`` when the request was at fault; None when the work failed."""
    if isinstance(exc, (UnknownToolError, ToolDeniedError)):
        return MCPError(INVALID_PARAMS, exc.message)
    return MCPError(exc.code, exc.message) if exc.caller_fault else None


def url_elicitation_required(exc: AuthorizationRequiredError) -> MCPError:
    """A handshake-era client's answer to a call that needs its user at a URL first: the -32042 error, the URL as a
    URL-mode elicitation in its data."""
    elicitation = types.ElicitRequestURLParams(message=exc.message, url=exc.url, elicitation_id=exc.elicitation_id)
    data = types.ElicitationRequiredErrorData(elicitations=[elicitation])
    return MCPError(exc.code, exc.message, data=data.model_dump(mode="json", by_alias=True, exclude_none=True))


def json_result(payload: Mapping[str, Any], is_error: bool = False) -> types.CallToolResult:
    """A tool result carrying ``payload`` as structured content and as its JSON text twin (compact: the
    twin is what a model reads)."""
    result = value_result(dict(payload))
    return result.model_copy(update={"is_error": True}) if is_error else result


def mcp_form(result: types.CallToolResult) -> types.CallToolResult:
    """A tool's result as MCP carries it: ``structuredContent`` is an object there, so a value of another
    kind (a workspace listing, a skill's number) stays in the JSON text only."""
    if result.structured_content is None or isinstance(result.structured_content, dict):
        return result
    return result.model_copy(update={"structured_content": None})


def failed_execution(exc: ConduitError) -> types.CallToolResult:
    """An execution that could not run (busy, no sandbox), shaped like any execution result."""
    return json_result(execution_result("", "", 1, ProgramFailure(exc.code, exc.message)), is_error=True)


ERROR_CODE_META: Final = "conduit/errorCode"
"""The ``_meta`` key of a failed proxied call's Conduit error code (-32015 for a call not approved...)."""


def failed_tool_call(exc: ConduitError) -> types.CallToolResult:
    """A proxied upstream call that failed: the reason as the result's text, its code in ``_meta`` (and, for a call
    that needs the user to open a URL first, -32042, the URL in ``structuredContent``)."""
    structured = exc.data if isinstance(exc, AuthorizationRequiredError) else None
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=exc.message)],
        structured_content=structured,
        is_error=True,
        _meta={ERROR_CODE_META: exc.code},
    )


def answer_failure(exc: ConduitError, failed: Callable[[ConduitError], types.CallToolResult]) -> types.CallToolResult:
    """The failed result ``failed`` makes of ``exc`` when the work failed.

    Raises:
        MCPError: the request was at fault (see :func:`protocol_error`).
    """
    error = protocol_error(exc)
    if error is not None:
        raise error from None
    return failed(exc)
