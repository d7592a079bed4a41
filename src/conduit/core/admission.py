"""Admission control: at most ``max_running`` executions at once, at most ``max_queue`` waiting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from conduit.errors import BusyError


class Admission:
    """A concurrency cap with a bounded queue; past the queue, callers are refused at once."""

    def __init__(self, max_running: int, max_queue: int) -> None:
        self.max_running = max_running
        self.max_queue = max_queue
        self._slots = anyio.Semaphore(max_running)
        self.waiting = 0

    @property
    def running(self) -> int:
        return self.max_running - self._slots.value

    @property
    def full(self) -> bool:
        """Whether a new execution would be refused now: every slot taken and the queue full."""
        return self._slots.value == 0 and self.waiting >= self.max_queue

    @asynccontextmanager
    async def slot(self, who: str = "server busy:") -> AsyncIterator[None]:
        """Hold one execution slot for the ``with`` block (``who`` starts the busy message).

        Raises:
            BusyError: every slot is taken and the queue is full.
        """
        if self.full:
            raise BusyError(f"{who} {self.max_running} executions running and {self.waiting} queued; retry later")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()
