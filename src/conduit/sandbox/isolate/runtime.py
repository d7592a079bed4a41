"""JavaScript sandboxes: a fresh V8 isolate per program, hosted in supervised worker processes.

The server never touches an isolate itself (see :mod:`conduit.sandbox.isolate.isolate_worker`). It
keeps workers started and idle (``min`` always, up to ``max`` after a burst, within a memory
ceiling); a program gets one worker, which creates a fresh isolate for it, and the worker
returns to the idle set only if the run ended cleanly. A worker that trips a limit, misses
the host deadline or dies is killed and replaced.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from conduit.errors import SandboxStartError
from conduit.sandbox.base import BridgeAddress, Job, RunOutcome, RuntimeStatus, job_line
from conduit.sandbox.host.outcome import classify
from conduit.sandbox.host.output import OutputCollector
from conduit.sandbox.host.pool import CHECK_EVERY_S, Demand, PoolSizing
from conduit.sandbox.host.process import SandboxProcess, destroy, kill_group, private_memory_bytes, pump, spawn
from conduit.sandbox.host.program import isolate_body
from conduit.sandbox.isolate.isolate_worker import program_script
from conduit.sandbox.protocol import new_nonce
from conduit.sandbox.walls import Walls, python_profile
from conduit.sandbox.walls.cgroups import Cgroup

logger = logging.getLogger(__name__)

READY_TIMEOUT: Final = 30.0
DEADLINE_GRACE: Final = 0.5
"""Extra time the host gives a worker beyond the program's timeout before killing it."""
WORKER_ENV: Final = {"LANG": "C.UTF-8"}
WORKER_BASELINE_MB: Final = 128
"""A worker's memory besides its isolates' heaps (Python, mini-racer, V8's own), for its cgroup cap."""
MAX_MESSAGE: Final = 64 * 1024 * 1024
DEFAULT_SIZING: Final = PoolSizing(min=1, max=8, max_idle_memory_mb=512, max_starting=2)


def isolate_script(code: str) -> str:
    """``code`` as the worker runs it (its body, in the runner's script): where its error positions point."""
    return program_script(isolate_body(code))


@dataclass
class Worker:
    process: SandboxProcess
    reader: BufferedByteReceiveStream
    jobs: int = 0
    stderr_tail: list[str] = field(default_factory=list)
    cgroup: Cgroup | None = None
    memory: int = 0
    """Private resident memory, measured when the worker last went idle."""

    @property
    def pid(self) -> int:
        return self.process.pid

    async def receive(self) -> dict[str, Any]:
        line = await self.reader.receive_until(b"\n", MAX_MESSAGE)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("worker sent a non-object message")
        return message


class IsolateRuntime:
    """Starts and supervises isolate workers; hands out one per program: a :class:`Runtime`.

    Its own pool rather than a :class:`~conduit.sandbox.host.pool.PooledRuntime`: a worker is not used once
    and discarded like a Deno sandbox, it goes back to the idle set after every clean run (each program
    still gets a fresh isolate), so its pool is the set of idle workers.
    """

    name = "isolate"

    def __init__(
        self,
        *,
        bridge: BridgeAddress,
        work_dir: Path,
        sizing: PoolSizing = DEFAULT_SIZING,
        walls: Walls | None = None,
        memory_limit_mb: int = 256,
    ) -> None:
        self._bridge = bridge
        self._walls = walls
        self._memory_cap_mb = memory_limit_mb
        self._cwd = work_dir
        self.sizing = sizing
        self._idle: list[Worker] = []
        self._starting = 0
        self._busy = 0
        self._fresh_memory = 0
        """Private memory of the last worker started, the estimate for the next one."""
        self.demand = Demand(sizing)
        self._tg: TaskGroup | None = None
        self.cold_starts = 0
        """Requests that found no worker idle, busy or starting, and started one themselves."""
        self.last_error: str | None = None

    @property
    def target(self) -> int:
        """Idle workers wanted (see :class:`~conduit.sandbox.host.pool.Demand`)."""
        return self.demand.target

    def uid_probe(self, home: Path) -> tuple[list[str], dict[str, str]]:
        """Importing the worker: exits 0 when its Python and mini-racer load as the sandbox uid."""
        return [sys.executable, "-I", "-c", "import conduit.sandbox.isolate.isolate_worker"], dict(WORKER_ENV)

    def argv(self) -> list[str]:
        argv = [sys.executable, "-I", "-m", "conduit.sandbox.isolate.isolate_worker"]
        walls = self._walls
        if walls is not None and walls.uid is not None and walls.late_uid("isolate"):
            argv += ["--uid", str(walls.uid)]  # its Python cannot start as that uid: it drops after loading
        return argv

    def start(self, tg: TaskGroup) -> None:
        """Begin keeping ``sizing.min`` workers ready (more while demand needs them), in ``tg``."""
        self._tg = tg
        self._refill()
        tg.start_soon(self._keep_sized)

    async def aclose(self) -> None:
        self._tg = None
        self.demand.signal()
        idle, self._idle = self._idle, []
        for worker in idle:
            await _destroy(worker)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def idle_memory_bytes(self) -> int:
        return sum(worker.memory for worker in self._idle)

    async def prepare(self, memory_limit_mb: int) -> IsolateSandbox:
        """An idle worker; when none is, wait for the first that is released or started.

        A busy worker is usually free again within milliseconds, while starting one (Python, mini-racer,
        V8) takes most of a second: so a request that finds none idle raises the target (a worker starts
        in the background) and takes whichever comes first. With no worker busy or starting, it starts one.
        """
        if not self._idle:
            self.demand.missed()
            self._refill()
            while not self._idle and (self._busy or self._starting) and self._tg is not None:
                await self.demand.changed()
        if self._idle:
            worker = self._idle.pop()
        else:
            self.cold_starts += 1
            worker = await self._spawn()
        self._busy += 1
        self._refill()
        return IsolateSandbox(self, worker, self._bridge)

    def release(self, worker: Worker, reusable: bool) -> None:
        """Take a worker back: idle again after a clean run, otherwise killed at once (and reaped later)."""
        self._busy -= 1
        if reusable and worker.process.returncode is None and self._keeps(worker):
            self._idle.append(worker)
        else:
            kill_group(worker.process)
            if self._tg is not None:
                self._tg.start_soon(_destroy, worker)
        self.demand.signal()
        self._refill()

    def _keeps(self, worker: Worker) -> bool:
        """Whether an idle worker fits: fewer than ``max`` idle and within the memory ceiling."""
        if len(self._idle) >= self.sizing.max:
            return False
        worker.memory = private_memory_bytes(worker.pid)
        return self.idle_memory_bytes + worker.memory <= self.sizing.max_idle_memory_mb << 20

    def _refill(self) -> None:
        """Start workers towards ``target`` idle ones, never beyond ``max`` workers in all (busy ones
        included) nor the idle memory ceiling: a worker started past either would be killed when the
        next run releases one, and a start costs a few hundred ms of CPU."""
        if self._tg is None:
            return
        while (
            len(self._idle) + self._starting < self.target
            and len(self._idle) + self._starting + self._busy < self.sizing.max
            and self._starting < self.sizing.max_starting
            and self.idle_memory_bytes + (self._starting + 1) * self._fresh_memory
            <= self.sizing.max_idle_memory_mb << 20
        ):
            self._starting += 1
            self._tg.start_soon(self._spawn_idle)

    async def _spawn_idle(self) -> None:
        try:
            worker = await self._spawn()
        except SandboxStartError as exc:
            self.last_error = exc.message
            logger.warning("could not start an isolate worker: %s", exc.message)
            return
        finally:
            self._starting -= 1
            self.demand.signal()
        self.last_error = None
        if self._tg is None:
            await _destroy(worker)
            return
        worker.memory = self._fresh_memory = private_memory_bytes(worker.pid)
        self._idle.append(worker)
        self.demand.signal()

    async def _keep_sized(self) -> None:
        """Back to ``min`` idle workers, one step at a time, once no request has found none for a while."""
        while self._tg is not None:
            await anyio.sleep(CHECK_EVERY_S)
            if self.demand.step_down():
                while len(self._idle) > max(self.target, 0):
                    await _destroy(self._idle.pop(0))

    def status(self) -> RuntimeStatus:
        """Why isolate workers cannot start (the last failure, while none is idle), and the idle workers."""
        return RuntimeStatus(self.last_error if not self._idle else None, len(self._idle), self.idle_memory_bytes)

    async def _spawn(self) -> Worker:
        argv, cgroup = self.argv(), None
        if self._walls is not None:
            profile = python_profile([], WORKER_BASELINE_MB)
            argv, cgroup = self._walls.launch(argv, profile, self._memory_cap_mb, "isolate", WORKER_ENV)
        try:
            process = await spawn(argv, env=WORKER_ENV, cwd=str(self._cwd))
        except BaseException:
            if cgroup is not None:
                await cgroup.remove()
            raise
        assert process.stdout is not None
        worker = Worker(process, BufferedByteReceiveStream(process.stdout), cgroup=cgroup)
        if self._tg is not None:
            self._tg.start_soon(pump, process.stderr, lambda chunk: _keep_tail(worker, chunk))
        try:
            with anyio.fail_after(READY_TIMEOUT):
                ready = await worker.receive()
        except (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead, ValueError) as exc:
            await _destroy(worker)
            tail = " | ".join(worker.stderr_tail[-2:])
            raise SandboxStartError(f"isolate worker did not start: {exc or type(exc).__name__} {tail}") from exc
        except BaseException:
            await _destroy(worker)  # cancelled while starting: leave nothing behind
            raise
        if ready.get("type") != "ready":
            await destroy(process)
            raise SandboxStartError("isolate worker did not start: unexpected greeting")
        return worker


async def _destroy(worker: Worker) -> None:
    """Kill and reap a worker, then remove its cgroup."""
    await destroy(worker.process)
    if worker.cgroup is not None:
        with anyio.CancelScope(shield=True):
            await worker.cgroup.remove()


def _keep_tail(worker: Worker, chunk: bytes) -> None:
    worker.stderr_tail = (worker.stderr_tail + chunk.decode("utf-8", "replace").splitlines())[-20:]


class IsolateSandbox:
    """One program's claim on a worker."""

    def __init__(self, runtime: IsolateRuntime, worker: Worker, bridge: BridgeAddress) -> None:
        self._runtime = runtime
        self._worker = worker
        self._bridge = bridge
        self._used = False

    @property
    def pid(self) -> int:
        return self._worker.pid

    async def run(self, job: Job) -> RunOutcome:
        if self._used:
            raise SandboxStartError("a sandbox runs exactly one program")
        self._used = True
        limits = job.limits
        collector = OutputCollector.for_limits(limits, new_nonce(), job.on_output)
        payload = {
            "token": job.token,
            "bridge": {"host": self._bridge.host, "port": self._bridge.port},
            "program": isolate_body(job.program),
            "maxResultBytes": limits.max_output_bytes,
            "limits": limits.model_dump(by_alias=True),
        }
        worker = self._worker
        worker.jobs += 1
        record: dict[str, Any] | None = None
        crash: str | None = None
        memory_killed = False
        started = time.perf_counter()
        reusable = False
        try:
            with anyio.move_on_after(limits.timeout_ms / 1000 + DEADLINE_GRACE) as deadline:
                try:
                    record = await self._exchange(worker, job_line(payload, job.sdk), collector)
                    reusable = record is not None and record.get("status") != "limit" and not collector.tripped
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, ValueError, OSError):
                    crash = "the isolate worker crashed"
                    with anyio.move_on_after(1):
                        await worker.process.wait()  # the kernel's OOM counter is final once the worker is gone
                    memory_killed = worker.cgroup is not None and worker.cgroup.oom_killed()
                    logger.warning("isolate worker %d died: %s", worker.pid, " | ".join(worker.stderr_tail[-3:]))
        finally:
            self._runtime.release(worker, reusable)  # cancelled, tripped or timed out: the worker is killed
        exit_code = 0 if record is not None and record.get("status") == "ok" else None
        if record is not None and record.get("status") == "error":
            exit_code = 1
        return classify(
            collector,
            record,
            exit_code=exit_code,
            timed_out=deadline.cancelled_caught,
            timeout_ms=limits.timeout_ms,
            duration_ms=(time.perf_counter() - started) * 1000,
            crash=crash,
            memory_killed=memory_killed,
        )

    @staticmethod
    async def _exchange(worker: Worker, payload: bytes, collector: OutputCollector) -> dict[str, Any] | None:
        """Send the job; feed output to ``collector`` until the outcome record arrives or a limit trips."""
        assert worker.process.stdin is not None
        await worker.process.stdin.send(payload)
        while not collector.tripped:
            message = await worker.receive()
            if message.get("type") == "output":
                data = str(message.get("data", "")).encode()
                if message.get("stream") == "stderr":
                    collector.feed_stderr(data)
                else:
                    collector.feed_stdout(data)
            elif message.get("type") == "done":
                record = message.get("record")
                return record if isinstance(record, dict) else {}
        return None

    async def discard(self) -> None:
        self._used = True
        self._runtime.release(self._worker, reusable=True)
