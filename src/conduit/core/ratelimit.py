"""Rate limits per client of the HTTP front end, on work only (executions and proxied tool calls).

Listing tools, initialising, pinging and the disclosure tools are never counted, and stdio
(one trusted local client) is never limited, so a normal interactive session is never
throttled. Built on the ``limits`` library's moving-window limiter, in memory.
"""

from __future__ import annotations

import time

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class RateLimiter:
    """``spec`` like ``"120/minute;2000/hour"`` (empty: no limit)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._items: list[RateLimitItem] = parse_many(spec) if spec.strip() else []
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def admit(self, key: str) -> float | None:
        """Count one unit of work for ``key``; None when admitted, else seconds until it would be."""
        for item in self._items:
            if not self._limiter.hit(item, key):
                stats = self._limiter.get_window_stats(item, key)
                return max(0.0, stats.reset_time - time.time())
        return None
