"""``conduit__mcp_disconnect_upstream``: a principal disconnects one of its own upstream accounts (its credential
for a ``credentials: perPrincipal`` upstream is forgotten, and its connection closed); listed only where some
upstream takes per-principal credentials."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import mcp_types as types

from conduit.catalog import CONDUIT_PREFIX
from conduit.core.gateway import Gateway
from conduit.errors import InvalidParamsError
from conduit.security.callers import Caller

DISCONNECT: Final = f"{CONDUIT_PREFIX}mcp_disconnect_upstream"

TOOL: Final = types.Tool(
    name=DISCONNECT,
    description="Disconnect your own account on an upstream: its credential is forgotten.",
    input_schema={"type": "object", "properties": {"upstream": {"type": "string"}}, "required": ["upstream"]},
)


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
