"""Rate limits on work only (executions and proxied tool calls), per principal or per client address; and on
programs' tool calls, per caller and upstream.

Listing tools, initialising, pinging and the disclosure tools are never counted. A principal is
counted under its own id (with its ``rateLimit``, else the server's), wherever its requests come
from; the master token's HTTP requests are counted per client address (behind a load balancer,
``http.trustedProxies`` makes that the real client's); the stdio client (one trusted local caller)
is never limited unless it acts as a principal. A program's tool calls are counted apart, per caller
and upstream (``toolCallRateLimit``), so one caller's loop cannot flood an upstream others share.
Built on the ``limits`` library's moving-window
limiter: in this process's memory, or with ``cluster.redisUrl`` in Redis, exact across replicas (one
Lua script per hit). While Redis is away, ``cluster.onStoreError`` decides: count in memory, or refuse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from conduit.cluster.store import FAILURES, SharedStore, client_options
from conduit.security.callers import Caller


@dataclass(frozen=True)
class Refusal:
    """Work refused: whose limit, which one, and when to retry."""

    who: str
    spec: str
    retry_after: float

    @property
    def message(self) -> str:
        return f"rate limit {self.spec} exceeded for {self.who}; retry in {self.retry_after:.1f} s"


class RateLimiter:
    """The limits of one server: ``spec`` like ``"120/minute;2000/hour"`` (empty: none) for addresses
    and principals without their own; counted in ``shared`` when there is one."""

    def __init__(self, spec: str, shared: SharedStore | None = None, tool_call_spec: str = "") -> None:
        self.spec = spec
        self.tool_call_spec = tool_call_spec
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._shared: tuple[SharedStore, MovingWindowRateLimiter] | None = None
        """The cluster's Redis, and the limiter counting there."""
        if shared is not None:
            storage = RedisStorage(
                shared.url,
                implementation="redispy",
                key_prefix=shared.key("limits"),
                wrap_exceptions=True,
                **client_options(),
            )
            self._shared = (shared, MovingWindowRateLimiter(storage))
        self._items: dict[str, list[RateLimitItem]] = {}

    async def admit(self, caller: Caller, address: str | None) -> Refusal | None:
        """Count one unit of work; None when admitted.

        Raises:
            StoreUnavailableError: Redis is away and ``cluster.onStoreError`` is ``refuse``.
        """
        if caller.is_principal:
            spec, key, who = caller.rate_limit or self.spec, f"principal:{caller.id}", f"principal {caller.id}"
        elif address is not None:
            spec, key, who = self.spec, f"address:{address}", address
        else:
            return None
        return await self._count(spec, key, who)

    async def admit_tool_call(self, caller: Caller, upstream: str) -> Refusal | None:
        """Count one tool call of a ``caller``'s program to ``upstream``; None when admitted.

        Raises:
            StoreUnavailableError: Redis is away and ``cluster.onStoreError`` is ``refuse``.
        """
        if caller.kind == "local":
            return None
        spec = caller.tool_call_rate_limit or self.tool_call_spec
        return await self._count(spec, f"calls:{caller.id}:{upstream}", f"{caller.id}'s calls to {upstream}")

    async def _count(self, spec: str, key: str, who: str) -> Refusal | None:
        for item in self._parsed(spec):
            if not await self._hit(item, key):
                return Refusal(who, spec, await self._retry_after(item, key))
        return None

    async def _hit(self, item: RateLimitItem, key: str) -> bool:
        if self._shared is None:
            return await self._local.hit(item, key)
        shared, redis = self._shared
        return await shared.with_fallback(lambda: redis.hit(item, key), lambda: self._local.hit(item, key))

    async def _retry_after(self, item: RateLimitItem, key: str) -> float:
        limiter = self._local
        if self._shared is not None and self._shared[0].available:
            limiter = self._shared[1]
        try:
            stats = await limiter.get_window_stats(item, key)
        except FAILURES:  # the refusal stands; only its hint is lost
            return 1.0
        return max(0.0, stats.reset_time - time.time())

    def _parsed(self, spec: str) -> list[RateLimitItem]:
        items = self._items.get(spec)
        if items is None:
            items = self._items[spec] = parse_many(spec) if spec.strip() else []
        return items
