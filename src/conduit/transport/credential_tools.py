"""Principals' own upstream accounts over MCP: connecting one while a call waits, and disconnecting one.

A handshake-era client that declared URL elicitation is asked, in the call's request, to send its user to the
URL a call needing a connected account got (:func:`connect_then_call`); the call waits, within the upstream's
``authorization.timeoutMs``, until the callback stored the account (on any replica), tells the client the
elicitation is complete, and is made again. ``conduit__mcp_disconnect_upstream``: a principal disconnects one of
its own accounts (its credential for a ``credentials: perPrincipal`` upstream is forgotten, and its connection
closed); listed only where some upstream takes per-principal credentials."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import NoBackChannelError

from conduit.catalog import CONDUIT_PREFIX
from conduit.core.gateway import Gateway
from conduit.core.requests import ToolCall
from conduit.core.sessions import Session
from conduit.errors import AuthorizationError, AuthorizationRequiredError, InvalidParamsError
from conduit.security.callers import Caller
from conduit.transport.wire import failed_tool_call, mcp_form, url_elicitation_required

DISCONNECT: Final = f"{CONDUIT_PREFIX}mcp_disconnect_upstream"

TOOL: Final = types.Tool(
    name=DISCONNECT,
    description="Disconnect your own account on an upstream: its credential is forgotten.",
    input_schema={"type": "object", "properties": {"upstream": {"type": "string"}}, "required": ["upstream"]},
)


WAIT_POLL_S: Final = 0.5
"""How often a waiting call looks whether its user's account is connected."""


def can_open_urls(ctx: ServerRequestContext[Any]) -> bool:
    """Whether the client declared URL-mode elicitation (it can send its user to a page)."""
    wanted = types.ClientCapabilities(elicitation=types.ElicitationCapability(url=types.UrlElicitationCapability()))
    return ctx.session.check_client_capability(wanted)


async def connect_then_call(
    ctx: ServerRequestContext[Any],
    gateway: Gateway,
    caller: Caller,
    call: ToolCall,
    required: AuthorizationRequiredError,
) -> types.CallToolResult:
    """Send the client's user to the URL ``required`` carries (URL-mode elicitation), wait until the account is
    connected, and make the call again.

    Raises:
        ConduitError: the call made again failed (answered by the caller as any call's failure).
        MCPError: the client cannot be sent a request (a stateless server): the -32042 error instead.
    """
    upstream, elicitation_id = required.upstream, required.elicitation_id
    try:
        answer = await ctx.session.elicit_url(
            required.message, required.url, elicitation_id, related_request_id=ctx.request_id
        )
    except NoBackChannelError:
        raise url_elicitation_required(required) from None
    if answer.action != "accept":
        return failed_tool_call(AuthorizationError(f"the account on {upstream!r} was not connected ({answer.action})"))
    waited = gateway.registry.timeout_s(upstream)
    for _ in range(math.ceil(waited / WAIT_POLL_S)):  # the callback may land on any replica: look, no event
        if gateway.registry.connected(caller, upstream):
            break
        await anyio.sleep(WAIT_POLL_S)
    if not gateway.registry.connected(caller, upstream):
        return failed_tool_call(AuthorizationError(f"the account on {upstream!r} was not connected in {waited:g} s"))
    await ctx.session.send_elicit_complete(elicitation_id, related_request_id=ctx.request_id)
    return mcp_form(await gateway.audited_call(Session.of(caller), call))


def listed(gateway: Gateway) -> bool:
    return bool(gateway.registry.per_principal)


def disconnect(gateway: Gateway, caller: Caller, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Forget ``caller``'s own credential for the upstream ``arguments`` name: ``{upstream, disconnected}``
    (``disconnected`` false: it had none).

    Raises:
        InvalidParamsError: no upstream named, or one without per-principal credentials, or no principal.
        ConfigError: the credential store cannot be read or written.
        StoreUnavailableError: the cluster's Redis is away and ``onStoreError`` is ``refuse``.
    """
    upstream = arguments.get("upstream")
    if not isinstance(upstream, str) or not upstream:
        raise InvalidParamsError("upstream must be an upstream's id")
    return {"upstream": upstream, "disconnected": gateway.registry.disconnect(caller, upstream)}
