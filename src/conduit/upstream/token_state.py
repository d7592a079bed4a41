"""Where an OAuth2 credential's tokens live between requests, and the lock one refresh holds.

A refresh token that rotates may be used once: two refreshes with the same one can get the whole
token family revoked. So a refresh happens under a lock, and the tokens are read again after taking
it (someone else may just have refreshed). :class:`LocalTokenState` is this process's memory and an
``anyio`` lock; :class:`SharedTokenState` (``cluster.redisUrl``) keeps the tokens in Redis, encrypted
with ``cluster.key``, and the lock there too, so a cluster refreshes once per expiry and a restarted
replica goes on with the current refresh token instead of the configured one that was used long ago.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Final, Protocol

import anyio
from cryptography.fernet import InvalidToken
from redis.exceptions import LockError

from conduit.cluster.store import FAILURES, SharedStore
from conduit.config.schema import Credentials
from conduit.errors import StoreUnavailableError, UpstreamError

logger = logging.getLogger(__name__)

LOCK_TTL_S: Final = 30.0
"""A refresh lock left by a replica that died with it expires after this long."""
LOCK_WAIT_S: Final = 15.0
"""How long a refresh waits for another replica's before the call fails."""
KEEP_S: Final = 30 * 86_400
"""Tokens unused for this long are dropped from Redis."""


@dataclass(frozen=True)
class Tokens:
    access: str
    expires_at: float
    """Wall-clock time (``time.time()``): replicas share it."""
    refresh: str | None


class TokenState(Protocol):
    def lock(self) -> AbstractAsyncContextManager[None]: ...

    async def read(self) -> Tokens | None: ...

    async def write(self, tokens: Tokens) -> None: ...


class LocalTokenState:
    """The tokens in this process's memory, refreshed under an ``anyio`` lock."""

    def __init__(self) -> None:
        self._lock = anyio.Lock()
        self._tokens: Tokens | None = None

    def lock(self) -> AbstractAsyncContextManager[None]:
        return self._lock

    async def read(self) -> Tokens | None:
        return self._tokens

    async def write(self, tokens: Tokens) -> None:
        self._tokens = tokens


def state_name(upstream: str, credentials: Credentials, principal: str | None = None) -> str:
    """The Redis name of one credential's tokens: its upstream, its principal, and a digest of what was
    configured (a new client or refresh token starts afresh instead of reading the old one's tokens)."""
    configured = credentials.model_dump_json(by_alias=True, exclude_none=True)
    secret = credentials.refresh_token.get_secret_value() if credentials.refresh_token else ""
    digest = hashlib.sha256(f"{configured}\0{secret}".encode()).hexdigest()[:24]
    return f"{upstream}:{principal or '-'}:{digest}"


def token_state_for(
    shared: SharedStore | None, upstream: str, credentials: Credentials | None, principal: str | None = None
) -> TokenState | None:
    """Where an upstream's OAuth tokens live: Redis in cluster mode, else None (the process's memory)."""
    if shared is None or credentials is None or credentials.type not in ("oauth2", "tokenExchange"):
        return None
    return SharedTokenState(shared, state_name(upstream, credentials, principal))


class SharedTokenState:
    """The tokens in Redis, encrypted; the refresh lock in Redis. While Redis is away,
    ``cluster.onStoreError``: ``local`` goes on with this process's memory and lock, ``refuse`` fails the call."""

    def __init__(self, shared: SharedStore, name: str) -> None:
        self._shared = shared
        self._key = shared.key("tokens", name)
        self._lock_key = shared.key("tokens-lock", name)
        self._local = LocalTokenState()

    @asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        lock = self._shared.client.lock(self._lock_key, timeout=LOCK_TTL_S, blocking_timeout=LOCK_WAIT_S)

        async def without_redis() -> None:
            return None

        acquired = await self._shared.with_fallback(lock.acquire, without_redis)
        if acquired is None:  # Redis is away, and onStoreError is local
            async with self._local.lock():
                yield
            return
        if not acquired:
            raise UpstreamError("another replica has held the token refresh lock too long; retry shortly")
        try:
            yield
        finally:
            with contextlib.suppress(LockError, *FAILURES):
                await lock.release()

    async def read(self) -> Tokens | None:
        async def remote() -> Tokens | None:
            sealed = await self._shared.client.get(self._key)
            return self._open(sealed) if sealed is not None else None

        return await self._shared.with_fallback(remote, self._local.read)

    async def write(self, tokens: Tokens) -> None:
        await self._local.write(tokens)
        sealed = self._shared.fernet.encrypt(json.dumps(asdict(tokens)).encode())

        async def remote() -> None:
            await self._shared.client.set(self._key, sealed, ex=int(KEEP_S))

        try:
            await self._shared.with_fallback(remote, self._kept_locally)
        except StoreUnavailableError:  # even with `refuse`: the refresh has happened, its tokens must not be lost
            await self._kept_locally()

    async def _kept_locally(self) -> None:
        logger.warning("OAuth tokens kept in this replica's memory only: the cluster's Redis is unreachable")

    def _open(self, sealed: bytes | str) -> Tokens | None:
        try:
            document = json.loads(self._shared.fernet.decrypt(sealed.encode() if isinstance(sealed, str) else sealed))
            return Tokens(str(document["access"]), float(document["expires_at"]), document.get("refresh"))
        except (InvalidToken, ValueError, KeyError, TypeError):
            logger.warning("the OAuth tokens in Redis cannot be read with cluster.key: refreshing anew")
            return None
