"""An upstream marked ``credentials: perPrincipal``: one connection per principal, each with its own credential.

A principal's calls go out on its own connection, made with its credential from the
:class:`~conduit.upstream.credential_store.CredentialStore` (its own MCP session too: a server that
binds sessions to users sees each user as itself). A caller with no credential there gets -32005
naming what is missing; nothing ever falls back to another principal's credential, and the master
token and the local stdio caller, who are no principal, have none. The upstream's tool list is read
through the connection of the first principal (by id) holding a credential: every principal sees
the same list, and what each may call is its policy's business.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import mcp_types as types
from anyio.abc import TaskGroup

from conduit.cluster.store import SharedStore
from conduit.config.schema import UpstreamConfig
from conduit.errors import UpstreamError
from conduit.security.callers import Caller
from conduit.security.ssrf import NetworkPolicy
from conduit.upstream.connection import UpstreamConnection
from conduit.upstream.credential_store import CredentialStore


class PrincipalConnections:
    """The connections of one per-principal upstream, made on first use by each principal."""

    def __init__(
        self,
        config: UpstreamConfig,
        store: CredentialStore,
        *,
        base_dir: Path,
        host_env: Mapping[str, str],
        tg: TaskGroup,
        network: NetworkPolicy,
        shared: SharedStore | None = None,
    ) -> None:
        self.config = config
        self._store = store
        self._shared = shared
        self._make = functools.partial(
            UpstreamConnection, config, base_dir=base_dir, host_env=host_env, tg=tg, network=network, shared=shared
        )
        self._tg = tg
        self._connections: dict[str, tuple[int, UpstreamConnection]] = {}

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def connected(self) -> bool:
        return any(connection.connected for _, connection in self._connections.values())

    @property
    def last_error(self) -> str | None:
        lister = self._lister()
        return lister.last_error if lister is not None else None

    @property
    def generation(self) -> int:
        lister = self._lister()
        return lister.generation if lister is not None else 0

    def for_caller(self, caller: Caller) -> UpstreamConnection:
        """The connection ``caller``'s calls go out on.

        Raises:
            UpstreamError: the caller has no credential for this upstream (-32005).
        """
        if not caller.is_principal:
            raise UpstreamError(
                f"upstream {self.id!r} takes each principal's own credential, and the {caller.kind} caller is no "
                "principal: call it with a principal's key or token"
            )
        connection = self._connection(caller.id)
        if connection is None:
            raise UpstreamError(
                f"upstream {self.id!r} needs principal {caller.id!r}'s own credential, and there is none: "
                f"run `conduit auth --principal {caller.id} --upstream {self.id}`"
            )
        return connection

    async def list_tools(self) -> list[types.Tool]:
        lister = self._lister()
        if lister is None:
            raise UpstreamError(
                f"upstream {self.id!r} takes each principal's own credential, and no principal has one yet "
                f"(`conduit auth --principal ID --upstream {self.id}`)"
            )
        return await lister.list_tools()

    def disconnect(self, principal_id: str) -> bool:
        """Forget ``principal_id``'s credential for this upstream and close its connection: its next call needs a
        new one. Whether it had one.

        Raises:
            ConfigError: the store cannot be read or written.
            StoreUnavailableError: the store is in the cluster's Redis, away, and ``onStoreError`` is ``refuse``.
        """
        removed = self._store.remove(principal_id, self.id)
        self._drop(principal_id)
        return removed

    async def aclose(self) -> None:
        for _, connection in self._connections.values():
            await connection.aclose()

    def _lister(self) -> UpstreamConnection | None:
        for principal_id in self._store.principals_for(self.id):
            connection = self._connection(principal_id)
            if connection is not None:
                return connection
        return None

    def _connection(self, principal_id: str) -> UpstreamConnection | None:
        found = self._store.get(principal_id, self.id)
        if found is None:
            self._drop(principal_id)  # removed meanwhile (here, by `conduit credentials rm`, another replica)
            return None
        credentials, generation = found
        known = self._connections.get(principal_id)
        if known is not None and known[0] == generation:
            return known[1]
        if known is not None:  # stored anew (`conduit auth` again): the old connection is closed
            self._tg.start_soon(known[1].aclose)
        # In cluster mode the current refresh token lives with the tokens in Redis; else it is written back here.
        rotate = None if self._shared else functools.partial(self._store.rotate_refresh_token, principal_id, self.id)
        connection = self._make(credentials=credentials, on_rotate=rotate, principal=principal_id)
        self._connections[principal_id] = (generation, connection)
        return connection

    def _drop(self, principal_id: str) -> None:
        known = self._connections.pop(principal_id, None)
        if known is not None:
            self._tg.start_soon(known[1].aclose)
