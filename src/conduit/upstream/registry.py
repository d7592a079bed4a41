"""All configured upstreams: discovery across them, and routing a qualified tool name to one.

Tool ids (``<upstreamId>__<tool>``) are parsed by :mod:`conduit.catalog`. Discovery asks every
upstream at once and reports the ones that failed beside the tools of the others: one dead
upstream never hides the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import TaskGroup

from conduit.catalog import Catalog, ToolEntry, ToolId
from conduit.cluster.store import SharedStore
from conduit.config.schema import UpstreamConfig
from conduit.errors import (
    AuthorizationRequiredError,
    ConfigError,
    CredentialMissingError,
    InvalidParamsError,
    UnknownToolError,
    UpstreamError,
)
from conduit.security.callers import MASTER, Caller
from conduit.security.ssrf import NetworkPolicy
from conduit.upstream.connection import UpstreamConnection
from conduit.upstream.credential_store import CredentialStore
from conduit.upstream.on_demand import Authorizations
from conduit.upstream.per_principal import PrincipalConnections

logger = logging.getLogger(__name__)


Upstream = UpstreamConnection | PrincipalConnections
"""One upstream: a connection shared by every caller, or one per principal."""


class UpstreamRegistry:
    """The gateway's upstream connections, keyed by id."""

    def __init__(
        self,
        *,
        base_dir: Path,
        host_env: Mapping[str, str],
        tg: TaskGroup,
        network: NetworkPolicy | None = None,
        store: CredentialStore | None = None,
        shared: SharedStore | None = None,
    ) -> None:
        self._base_dir = base_dir
        self._shared = shared
        self._host_env = host_env
        self._tg = tg
        self._network = network or NetworkPolicy()
        self._store = store
        self._connections: dict[str, Upstream] = {}
        self.authorizations: Authorizations | None = None
        """Principals connecting their own accounts on demand (upstreams with ``authorization``), if any."""

    def add(self, config: UpstreamConfig) -> Upstream:
        """Register an upstream (connected lazily, on first use).

        Raises:
            UpstreamError: an upstream with this id exists.
            ConfigError: it takes per-principal credentials and there is no credential store.
        """
        if config.id in self._connections:
            raise UpstreamError(f"upstream {config.id!r} is already registered")
        connection: Upstream
        if config.per_principal:
            if self._store is None and not config.exchanges_tokens:
                raise ConfigError(
                    f"upstream {config.id!r} takes per-principal credentials: configure auth.credentialStore"
                )
            connection = PrincipalConnections(
                config,
                self._store,
                base_dir=self._base_dir,
                host_env=self._host_env,
                tg=self._tg,
                network=self._network,
                shared=self._shared,
            )
        else:
            connection = UpstreamConnection(
                config,
                base_dir=self._base_dir,
                host_env=self._host_env,
                tg=self._tg,
                network=self._network,
                shared=self._shared,
            )
        self._connections[config.id] = connection
        return connection

    @property
    def connections(self) -> Mapping[str, Upstream]:
        return self._connections

    @property
    def version(self) -> tuple[tuple[str, int], ...]:
        """Changes whenever an upstream is added, (re)connected or re-listed, i.e. whenever tools may have changed."""
        return tuple((connection.id, connection.generation) for connection in self._connections.values())

    async def catalog(self) -> Catalog:
        """Every upstream's tools, asked concurrently; failures are reported, not raised."""
        found: dict[str, list[types.Tool]] = {}
        failures: dict[str, str] = {}

        async def list_one(connection: Upstream) -> None:
            try:
                found[connection.id] = await connection.list_tools()
            except UpstreamError as exc:
                failures[connection.id] = exc.message

        async with anyio.create_task_group() as tg:
            for connection in self._connections.values():
                tg.start_soon(list_one, connection)
        entries = [
            ToolEntry.of(upstream_id, tool) for upstream_id in self._connections for tool in found.get(upstream_id, ())
        ]
        return Catalog(tools=tuple(entries), failures=failures)

    async def resolve(self, tool_id: ToolId | str, caller: Caller = MASTER) -> ToolEntry:
        """The tool behind a tool id (parsed already, or a qualified name), as ``caller`` calls it.

        Raises:
            UnknownToolError: no such upstream, or the upstream has no such tool.
            UpstreamError: the upstream cannot be reached to find out.
            AuthorizationRequiredError: ``caller`` must connect its own account on the upstream first (-32042).
        """
        parts = ToolId.parse(tool_id) if isinstance(tool_id, str) else tool_id
        qualified = tool_id if isinstance(tool_id, str) else parts.qualified
        upstream_id, tool = parts.upstream, parts.tool
        if not upstream_id or not tool:
            raise UnknownToolError(f"unknown tool {qualified!r}: tool names look like '<upstream>__<tool>'")
        connection = self._connections.get(upstream_id)
        if connection is None:
            raise UnknownToolError(f"unknown tool {qualified!r}: no upstream named {upstream_id!r}")
        if isinstance(connection, PrincipalConnections) and not connection.has_credential(caller):
            await self._connect_first(connection, caller)  # its tools may not even be listable yet
        for candidate in await connection.list_tools():
            if candidate.name == tool:
                return ToolEntry.of(upstream_id, candidate)
        raise UnknownToolError(f"unknown tool {qualified!r}: upstream {upstream_id!r} has no tool {tool!r}")

    async def call(
        self, entry: ToolEntry, arguments: Mapping[str, Any], caller: Caller = MASTER
    ) -> types.CallToolResult:
        """Call a resolved tool on its upstream, with ``caller``'s own credential where the upstream takes one.

        Raises:
            UpstreamError: the upstream failed, or ``caller`` has no credential it needs (-32005).
        """
        upstream = self._connections[entry.upstream]
        if not isinstance(upstream, PrincipalConnections):
            return await upstream.call_tool(entry.name, arguments)
        try:
            connection = upstream.for_caller(caller)
        except CredentialMissingError:
            await self._connect_first(upstream, caller)
            raise
        return await connection.call_tool(entry.name, arguments)

    async def _connect_first(self, upstream: PrincipalConnections, caller: Caller) -> None:
        """For a principal without its own credential on an upstream whose users connect their accounts
        (``authorization``): a flow started, and the URL its user opens, as -32042. Otherwise nothing.

        Raises:
            AuthorizationRequiredError: the URL to open.
            DiscoveryError, AuthorizationError: the flow could not be started.
        """
        if upstream.config.authorization is None or self.authorizations is None or not caller.is_principal:
            return
        url = await self.authorizations.start(caller, upstream.config)
        raise AuthorizationRequiredError(
            f"connect your own account on {upstream.id!r} first: open {url} (then make the call again)",
            url=url,
            upstream=upstream.id,
        )

    @property
    def per_principal(self) -> list[str]:
        """The upstreams that take each principal's own stored credential, by id."""
        return sorted(
            cid
            for cid, upstream in self._connections.items()
            if isinstance(upstream, PrincipalConnections) and not upstream.config.exchanges_tokens
        )

    def connected(self, caller: Caller, upstream_id: str) -> bool:
        """Whether ``caller`` has its own credential for ``upstream_id`` now (a per-principal upstream)."""
        upstream = self._connections.get(upstream_id)
        return isinstance(upstream, PrincipalConnections) and upstream.has_credential(caller)

    def timeout_s(self, upstream_id: str) -> float:
        """How long a call may wait for its user to connect an account on ``upstream_id``."""
        upstream = self._connections.get(upstream_id)
        authorization = upstream.config.authorization if upstream is not None else None
        return authorization.timeout_ms / 1000 if authorization is not None else 0.0

    def note(self, caller: Caller) -> None:
        """A caller came by: upstreams that exchange its access token keep the newest one (their tool list can
        be read through it)."""
        for upstream in self._connections.values():
            if isinstance(upstream, PrincipalConnections):
                upstream.note(caller)

    def disconnect(self, caller: Caller, upstream_id: str) -> bool:
        """Forget ``caller``'s own credential for a per-principal upstream (its next call needs a new one); whether
        there was one.

        Raises:
            InvalidParamsError: no such upstream, one that takes no per-principal credential, or a caller that is
                no principal.
            ConfigError: the credential store cannot be read or written.
            StoreUnavailableError: Redis is away and ``onStoreError`` is ``refuse``.
        """
        upstream = self._connections.get(upstream_id)
        if not isinstance(upstream, PrincipalConnections) or upstream_id not in self.per_principal:
            raise InvalidParamsError(
                f"upstream {upstream_id!r} does not take per-principal credentials"
                f" (those that do: {', '.join(self.per_principal) or 'none'})"
            )
        if not caller.is_principal:
            raise InvalidParamsError(f"the {caller.kind} caller is no principal and keeps no credentials of its own")
        return upstream.disconnect(caller.id)

    async def aclose(self) -> None:
        async with anyio.create_task_group() as tg:
            for connection in self._connections.values():
                tg.start_soon(connection.aclose)
