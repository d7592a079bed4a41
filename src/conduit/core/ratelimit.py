"""Rate limits on work only (executions and proxied tool calls), per principal or per client address.

Listing tools, initialising, pinging and the disclosure tools are never counted. A principal is
counted under its own id (with its ``rateLimit``, else the server's), wherever its requests come
from; the master token's HTTP requests are counted per client address; the stdio client (one
trusted local caller) is never limited unless it acts as a principal. Built on the ``limits``
library's moving-window limiter, in memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

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
    and principals without their own."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._items: dict[str, list[RateLimitItem]] = {}

    def admit(self, caller: Caller, address: str | None) -> Refusal | None:
        """Count one unit of work; None when admitted."""
        if caller.is_principal:
            spec, key, who = caller.rate_limit or self.spec, f"principal:{caller.id}", f"principal {caller.id}"
        elif address is not None:
            spec, key, who = self.spec, f"address:{address}", address
        else:
            return None
        for item in self._parsed(spec):
            if not self._limiter.hit(item, key):
                stats = self._limiter.get_window_stats(item, key)
                return Refusal(who, spec, max(0.0, stats.reset_time - time.time()))
        return None

    def _parsed(self, spec: str) -> list[RateLimitItem]:
        items = self._items.get(spec)
        if items is None:
            items = self._items[spec] = parse_many(spec) if spec.strip() else []
        return items
