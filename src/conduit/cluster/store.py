"""One replica's link to the cluster's Redis, and what it does while Redis is away.

Every use of Redis goes through :meth:`SharedStore.with_fallback`: the operation, or, when Redis cannot be
reached, ``cluster.onStoreError``'s answer: ``local`` runs the replica's own fallback, ``refuse``
raises :class:`~conduit.errors.StoreUnavailableError` (-32000: nothing has run, retry later). After a
failure Redis is left alone for :data:`RETRY_S` (requests do not each wait for a dead server), then
tried again by the next operation, so a replica recovers by itself within a second of Redis returning.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, TypeVar

import redis
import redis.asyncio
from cryptography.fernet import Fernet
from limits.errors import StorageError

from conduit.config.schema import ClusterConfig
from conduit.errors import StoreUnavailableError

logger = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT_S: Final = 0.5
"""Connect and socket timeout of every Redis call: a hung Redis costs a request this much, once."""
RETRY_S: Final = 0.5
"""After a failure, how long Redis is not tried (the fallback or the refusal answers at once)."""
FAILURES: Final = (redis.RedisError, StorageError, OSError)
"""What a Redis that is away raises: redis-py's errors, the ``limits`` library's wrapped ones."""


def client_options() -> dict[str, Any]:
    """Options of every Redis client Conduit makes (its own and the ``limits`` library's)."""
    return {"socket_timeout": TIMEOUT_S, "socket_connect_timeout": TIMEOUT_S, "health_check_interval": 5}


class SharedStore:
    """The cluster's Redis as this replica sees it: clients, key names, encryption and availability."""

    def __init__(self, config: ClusterConfig) -> None:
        assert config.redis_url is not None and config.key is not None
        self.url = config.redis_url.get_secret_value()
        self.prefix = config.key_prefix
        self.on_error = config.on_store_error
        self.fernet = Fernet(config.key.get_secret_value().encode("ascii"))
        self._key = config.key.get_secret_value().encode("ascii")
        self.client = redis.asyncio.Redis.from_url(self.url, **client_options())
        self.sync_client = redis.Redis.from_url(self.url, **client_options())
        self._retry_at = 0.0
        self._down = False

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def derived_key(self, purpose: str) -> bytes:
        """A key for ``purpose`` (a keyed hash's), derived from ``cluster.key``: the same on every replica."""
        return hashlib.sha256(b"conduit\0" + purpose.encode() + b"\0" + self._key).digest()

    @property
    def available(self) -> bool:
        """False while Redis is left alone after a failure."""
        return time.monotonic() >= self._retry_at

    async def with_fallback(
        self, operation: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]] | None
    ) -> T:
        """``operation`` on Redis; while Redis is away, ``fallback`` (``local``) or a refusal.

        Raises:
            StoreUnavailableError: Redis is away and ``onStoreError`` is ``refuse`` (or there is no fallback).
        """
        if self.available:
            with self._watched():
                return await operation()
        if fallback is None or not self._falls_back():
            raise self._refusal()
        return await fallback()

    def with_fallback_sync(self, operation: Callable[[], T], fallback: Callable[[], T] | None) -> T:
        """:meth:`with_fallback` for the few synchronous readers (the credential store); same rules.

        Raises:
            StoreUnavailableError: as :meth:`with_fallback`.
        """
        if self.available:
            with self._watched():
                return operation()
        if fallback is None or not self._falls_back():
            raise self._refusal()
        return fallback()

    @contextlib.contextmanager
    def _watched(self) -> Iterator[None]:
        """Around one Redis operation: a failure is recorded and swallowed (the caller falls back or refuses)."""
        try:
            yield
        except FAILURES as exc:
            self._failed(exc)
        else:
            self._succeeded()

    def _falls_back(self) -> bool:
        """Whether a request goes on without Redis (``onStoreError: local``)."""
        return self.on_error == "local"

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + RETRY_S
        if not self._down:
            self._down = True
            logger.warning("the cluster's Redis is unreachable (%s): %s", type(exc).__name__, _answer(self.on_error))

    def _succeeded(self) -> None:
        if self._down:
            self._down = False
            logger.info("the cluster's Redis answers again: shared state is used")

    def report(self) -> dict[str, object]:
        """For ``/health``: whether Redis answered last time, and what happens while it does not."""
        return {"status": "unreachable" if self._down else "ok", "onStoreError": self.on_error}

    async def aclose(self) -> None:
        await self.client.aclose()
        self.sync_client.close()

    def _refusal(self) -> StoreUnavailableError:
        return StoreUnavailableError(
            "the cluster's shared state (Redis) is unreachable; nothing was run, retry shortly"
        )


def _answer(on_error: str) -> str:
    if on_error == "local":
        return "each replica goes on with its own memory until it answers"
    return "work that needs it is refused until it answers"
