"""An upstream each principal reaches as itself: one connection per principal, each with its own credential.

Two kinds. ``credentials: perPrincipal``: a principal's calls go out with its credential from the
:class:`~conduit.upstream.credential_store.CredentialStore`. ``credentials: {type: tokenExchange}``: with the
principal's own OAuth access token (the one its request carried) exchanged for one meant for the upstream
(RFC 8693; cached per principal, shared by replicas: :mod:`conduit.upstream.credentials`); the inbound token
itself never goes out. Either way each principal has its own connection and MCP session (a server that binds
sessions to users sees each user as itself). A caller with no credential gets -32005 naming what is missing;
nothing ever falls back to another principal's credential, and the master token and the local stdio caller,
who are no principal, have none (nor, for token exchange, an API-key principal: it brings no access token).
The upstream's tool list is read through the connection of the first principal (by id) holding a credential:
every principal sees the same list, and what each may call is its policy's business.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import mcp_types as types
from anyio.abc import TaskGroup

from conduit.cluster.store import SharedStore
from conduit.config.schema import UpstreamConfig
from conduit.errors import CredentialMissingError, UpstreamError
from conduit.security.callers import Caller
from conduit.security.ssrf import NetworkPolicy
from conduit.upstream.connection import UpstreamConnection
from conduit.upstream.credential_store import CredentialStore


class PrincipalConnections:
    """The connections of one per-principal upstream, made on first use by each principal."""

    def __init__(
        self,
        config: UpstreamConfig,
        store: CredentialStore | None,
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
        self._subjects: dict[str, str] = {}
        """tokenExchange: each principal's latest access token, as its requests brought it."""
        assert store is not None or config.exchanges_tokens, "stored credentials need a credential store"

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
        if self.config.exchanges_tokens:
            self.note(caller)
            if caller.subject_token is None:
                raise UpstreamError(
                    f"upstream {self.id!r} is reached with the caller's own OAuth access token (token exchange), "
                    f"and principal {caller.id!r} called with an API key: call it with an OAuth access token"
                )
        connection = self._connection(caller.id)
        if connection is None:
            raise CredentialMissingError(
                f"upstream {self.id!r} needs principal {caller.id!r}'s own credential, and there is none: "
                f"run `conduit auth --principal {caller.id} --upstream {self.id}`"
            )
        return connection

    def has_credential(self, caller: Caller) -> bool:
        """Whether ``caller`` can call now: a principal with a stored credential (or, for token exchange, an
        access token)."""
        if not caller.is_principal:
            return False
        if self._store is None:
            return caller.subject_token is not None
        return self._store.get(caller.id, self.id) is not None

    def note(self, caller: Caller) -> None:
        """Keep ``caller``'s access token (tokenExchange): the next exchange for it uses the newest one."""
        if self.config.exchanges_tokens and caller.is_principal and caller.subject_token is not None:
            self._subjects[caller.id] = caller.subject_token

    async def list_tools(self) -> list[types.Tool]:
        lister = self._lister()
        if lister is None:
            how = (
                "an OAuth caller has called it yet"
                if self.config.exchanges_tokens
                else f"a principal has one yet (`conduit auth --principal ID --upstream {self.id}`)"
            )
            raise UpstreamError(f"upstream {self.id!r} takes each principal's own credential, and no {how}")
        return await lister.list_tools()

    def disconnect(self, principal_id: str) -> bool:  # stored credentials only: an exchange is the caller's own
        """Forget ``principal_id``'s credential for this upstream and close its connection: its next call needs a
        new one. Whether it had one.

        Raises:
            ConfigError: the store cannot be read or written.
            StoreUnavailableError: the store is in the cluster's Redis, away, and ``onStoreError`` is ``refuse``.
        """
        removed = self._store.remove(principal_id, self.id) if self._store is not None else False
        self._drop(principal_id)
        return removed

    async def aclose(self) -> None:
        for _, connection in self._connections.values():
            await connection.aclose()

    def _lister(self) -> UpstreamConnection | None:
        principals = sorted(self._subjects) if self._store is None else self._store.principals_for(self.id)
        for principal_id in principals:
            connection = self._connection(principal_id)
            if connection is not None:
                return connection
        return None

    def _connection(self, principal_id: str) -> UpstreamConnection | None:
        if self._store is None:  # tokenExchange: the config's credentials, the principal's own access token
            if principal_id not in self._subjects:
                return None
            known = self._connections.get(principal_id)
            if known is None:
                subject = functools.partial(self._subjects.get, principal_id)
                known = self._connections[principal_id] = (0, self._make(principal=principal_id, subject=subject))
            return known[1]
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
