"""Pools of sandboxes started ahead of demand, each used for exactly one program.

A :class:`PooledRuntime` wraps any runtime. It keeps ``warm`` sandboxes prepared at the
default memory limit; a request at that limit takes one (and a replacement starts in the
background), any other request, or one that finds the pool empty, gets a cold sandbox.
Sandboxes are never returned to the pool: fresh is guaranteed, warm is best effort.
"""

from __future__ import annotations

import logging
from typing import Protocol

from anyio.abc import TaskGroup

from conduit.errors import ConduitError
from conduit.sandbox.base import Sandbox

logger = logging.getLogger(__name__)


class PoolableSandbox(Sandbox, Protocol):
    @property
    def alive(self) -> bool:
        """False once the prepared process has died (it is then discarded, not handed out)."""
        ...


class PoolableRuntime(Protocol):
    name: str

    async def prepare(self, memory_limit_mb: int) -> PoolableSandbox: ...

    def problem(self) -> str | None:
        """Why this runtime cannot start sandboxes (missing files...), or None."""
        ...


class PooledRuntime:
    """``runtime`` with ``warm`` sandboxes kept prepared at ``memory_limit_mb``."""

    def __init__(self, runtime: PoolableRuntime, *, warm: int, memory_limit_mb: int) -> None:
        self.runtime = runtime
        self.name = runtime.name
        self.warm = warm
        self.memory_limit_mb = memory_limit_mb
        self._ready: list[PoolableSandbox] = []
        self._starting = 0
        self._tg: TaskGroup | None = None
        self.cold_starts = 0
        self.failures = 0
        self.last_error: str | None = None

    @property
    def ready(self) -> int:
        return len(self._ready)

    def start(self, tg: TaskGroup) -> None:
        """Begin filling the pool in ``tg``."""
        self._tg = tg
        self._refill()

    async def aclose(self) -> None:
        self._tg = None
        ready, self._ready = self._ready, []
        for sandbox in ready:
            await sandbox.discard()

    async def prepare(self, memory_limit_mb: int) -> Sandbox:
        if memory_limit_mb == self.memory_limit_mb:
            while self._ready:
                sandbox = self._ready.pop(0)
                self._refill()
                if sandbox.alive:
                    return sandbox
                await sandbox.discard()
        self.cold_starts += 1
        return await self.runtime.prepare(memory_limit_mb)

    def _refill(self) -> None:
        if self._tg is None:
            return
        while len(self._ready) + self._starting < self.warm:
            self._starting += 1
            self._tg.start_soon(self._prepare_one)

    async def _prepare_one(self) -> None:
        try:
            sandbox = await self.runtime.prepare(self.memory_limit_mb)
        except ConduitError as exc:
            self.failures += 1
            self.last_error = exc.message
            logger.warning("could not pre-start a %s sandbox: %s", self.name, exc.message)
            return
        finally:
            self._starting -= 1
        self.last_error = None
        if self._tg is None:
            await sandbox.discard()
        else:
            self._ready.append(sandbox)

    def problem(self) -> str | None:
        """Why sandboxes cannot be started, or None (a runtime's own check, then the last pre-start failure)."""
        return self.runtime.problem() or (self.last_error if not self._ready else None)
