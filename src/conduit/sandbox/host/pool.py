"""Pools of sandboxes started ahead of demand, each used for exactly one program.

A :class:`PooledRuntime` wraps a :class:`Launcher`, which makes single-use sandboxes (Deno, Pyodide). It
keeps sandboxes prepared at the default memory limit and hands each out once; sandboxes are
never returned, so fresh is guaranteed and warm is best effort.

Sizing follows demand between ``min`` and ``max``: a request that finds the pool empty raises
the target by one, and after :data:`SHRINK_AFTER_S` without such a miss the target falls back
one step at a time, discarding the surplus. Sandboxes start in the background, at most
``max_starting`` at once, at a lower CPU priority than running programs (raised back when one
is handed out), and never beyond ``max_idle_memory_mb`` of memory held by idle sandboxes.

The newest ready sandbox is handed out first. A sandbox that has waited runs its first program
slower (measured for Pyodide: ~15 ms right after it got ready, 25-65 ms after waiting a second,
with the same V8 flags and priority; its memory has gone cold in the caches), so the freshest serve
steady traffic and older ones absorb bursts; shrinking discards the oldest.

A request at another memory limit gets a cold sandbox. A request that finds the pool empty
while sandboxes are starting waits for the next one to be ready (the same wait a cold start
would cost, without starting an extra process); with nothing starting it starts a cold one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import anyio
from anyio.abc import TaskGroup

from conduit.errors import ConduitError
from conduit.sandbox.base import RuntimeStatus, Sandbox

logger = logging.getLogger(__name__)

SHRINK_AFTER_S: Final = 30.0
"""A pool grown by demand keeps its size this long after the last request that found it empty."""
CHECK_EVERY_S: Final = 5.0
RETRY_AFTER_S: Final = 1.0
"""Pause after a failed start before the pool tries again (a broken runtime must not spin)."""


class PoolableSandbox(Sandbox, Protocol):
    @property
    def alive(self) -> bool:
        """False once the prepared process has died (it is then discarded, not handed out)."""
        ...

    def memory_bytes(self) -> int:
        """Memory the idle sandbox holds (private resident pages), 0 when unknown."""
        ...

    def set_priority(self, niceness: int) -> None:
        """Best effort: run at ``niceness`` from now on."""
        ...


class Launcher(Protocol):
    """Starts single-use sandboxes one at a time (Deno, Pyodide, Monty's workers): what a pool keeps ready."""

    name: str

    async def prepare(self, memory_limit_mb: int, *, niceness: int = 0) -> PoolableSandbox: ...

    def problem(self) -> str | None:
        """Why this launcher cannot start sandboxes (missing files...), or None."""
        ...

    def uid_probe(self, home: Path) -> tuple[list[str], dict[str, str]]: ...


@dataclass(frozen=True)
class PoolSizing:
    min: int
    """Sandboxes kept ready at all times (within the memory ceiling)."""
    max: int
    """Sandboxes ready or starting at most, when demand is high."""
    max_idle_memory_mb: int
    """Ceiling on memory held by the ready sandboxes together."""
    max_starting: int
    """Sandboxes starting in the background at once."""
    background_niceness: int = 10
    """CPU niceness of sandboxes while they start and wait (0 again when handed out)."""


@dataclass
class _Ready:
    sandbox: PoolableSandbox
    memory: int


class Demand:
    """How many idle sandboxes (or workers) a pool wants, and a wake-up for whoever waits on the pool.

    ``min``, raised by one by each request that finds none idle (up to ``max``), lowered one step at a
    time once :data:`SHRINK_AFTER_S` have passed without such a miss. The one sizing rule of both pools
    (:class:`PooledRuntime`, and the isolate runtime's workers).
    """

    def __init__(self, sizing: PoolSizing) -> None:
        self.sizing = sizing
        self.target = min(sizing.min, sizing.max)
        self._last_miss = -math.inf
        self._changed = anyio.Event()

    def missed(self) -> None:
        """A request found nothing idle."""
        self._last_miss = time.monotonic()
        self.target = min(self.sizing.max, self.target + 1)

    def step_down(self) -> bool:
        """Lower the target by one if demand has been gone long enough; whether it did."""
        if self.target > self.sizing.min and time.monotonic() - self._last_miss > SHRINK_AFTER_S:
            self.target -= 1
            return True
        return False

    def signal(self) -> None:
        """Something changed (a sandbox got ready or was released, a start ended): wake the waiters."""
        self._changed.set()
        self._changed = anyio.Event()

    async def changed(self) -> None:
        await self._changed.wait()


class PooledRuntime:
    """``launcher``'s sandboxes kept prepared at ``memory_limit_mb``, sized by ``sizing``: a :class:`Runtime`."""

    def __init__(self, launcher: Launcher, *, sizing: PoolSizing, memory_limit_mb: int) -> None:
        self.launcher = launcher
        self.name = launcher.name
        self.sizing = sizing
        self.memory_limit_mb = memory_limit_mb
        self.demand = Demand(sizing)
        self._ready: list[_Ready] = []
        self._starting = 0
        self._estimate = 0
        """Memory of the last sandbox that got ready: what one more is expected to hold."""
        self._retry_at = -math.inf
        self._tg: TaskGroup | None = None
        self.cold_starts = 0
        self.failures = 0
        self.last_error: str | None = None

    @property
    def target(self) -> int:
        """Sandboxes wanted ready (see :class:`Demand`)."""
        return self.demand.target

    @property
    def idle(self) -> int:
        """Sandboxes ready for a program."""
        return len(self._ready)

    @property
    def starting(self) -> int:
        return self._starting

    @property
    def idle_memory_bytes(self) -> int:
        return sum(entry.memory for entry in self._ready)

    @property
    def full(self) -> bool:
        """Whether every sandbox the pool wants is ready (or the memory ceiling stops it adding one)."""
        return len(self._ready) >= self.target or (self._starting == 0 and not self._room_for_one())

    def start(self, tg: TaskGroup) -> None:
        """Begin filling the pool in ``tg``, and keep it sized."""
        self._tg = tg
        self._refill()
        tg.start_soon(self._keep_sized)

    async def aclose(self) -> None:
        self._tg = None
        ready, self._ready = self._ready, []
        for entry in ready:
            await entry.sandbox.discard()
        self.demand.signal()

    async def prepare(self, memory_limit_mb: int) -> Sandbox:
        if memory_limit_mb == self.memory_limit_mb and self.sizing.max > 0:
            sandbox = await self._take()
            if sandbox is not None:
                return sandbox
        self.cold_starts += 1
        return await self.launcher.prepare(memory_limit_mb)

    async def _take(self) -> PoolableSandbox | None:
        """A ready sandbox, waiting for one that is starting if need be; None when none is coming."""
        missed = False
        while True:
            while self._ready:
                sandbox = self._ready.pop().sandbox  # the newest: see the module docstring
                if sandbox.alive:
                    sandbox.set_priority(0)
                    self._refill()
                    return sandbox
                await sandbox.discard()
            if not missed:
                missed = True
                self.demand.missed()
                self._refill()
            if self._starting == 0 or self._tg is None:
                return None
            await self.demand.changed()

    def _room_for_one(self) -> bool:
        held = self.idle_memory_bytes + (self._starting + 1) * self._estimate
        return held <= self.sizing.max_idle_memory_mb << 20

    def _refill(self) -> None:
        if self._tg is None or time.monotonic() < self._retry_at:
            return
        while (
            len(self._ready) + self._starting < self.target
            and self._starting < self.sizing.max_starting
            and self._room_for_one()
        ):
            self._starting += 1
            self._tg.start_soon(self._prepare_one)

    async def _prepare_one(self) -> None:
        try:
            sandbox = await self.launcher.prepare(self.memory_limit_mb, niceness=self.sizing.background_niceness)
        except ConduitError as exc:
            self.failures += 1
            self.last_error = exc.message
            self._retry_at = time.monotonic() + RETRY_AFTER_S
            logger.warning("could not pre-start a %s sandbox: %s", self.name, exc.message)
            return
        finally:
            self._starting -= 1
            self.demand.signal()
        self.last_error = None
        if self._tg is None:
            await sandbox.discard()
            return
        memory = sandbox.memory_bytes()
        self._estimate = memory
        self._ready.append(_Ready(sandbox, memory))
        self.demand.signal()
        self._refill()

    async def _keep_sized(self) -> None:
        """Shrink a pool grown by demand once the demand is gone; retry starts after failures."""
        while self._tg is not None:
            await anyio.sleep(CHECK_EVERY_S)
            if self.demand.step_down():
                while len(self._ready) > max(self.target, 0):
                    await self._ready.pop(0).sandbox.discard()
            self._refill()

    def uid_probe(self, home: Path) -> tuple[list[str], dict[str, str]]:
        return self.launcher.uid_probe(home)

    def status(self) -> RuntimeStatus:
        """Why sandboxes cannot be started (a runtime's own check, then the last pre-start failure), and the pool."""
        problem = self.launcher.problem() or (self.last_error if not self._ready else None)
        return RuntimeStatus(problem, len(self._ready), self.idle_memory_bytes)
