"""Python sandboxes on Monty: a Rust interpreter of a subset of Python, a fresh worker process per program.

``pydantic-monty``'s pool starts ``monty`` worker processes ahead of demand and recycles each one
after a single session (``max_checkouts_per_worker=1``): no state of any kind survives a program.
The pool starts the binary Conduit names, a small script that puts it behind the same launcher as
every other sandbox (Landlock, no-new-privileges, RLIMIT_CPU, the unprivileged uid, an empty
environment); when a program is given a worker, the host moves that worker into a cgroup of its
own (memory and pids caps) before the first line is fed, and watches the cap while it runs.

A run is two feeds of one session: Conduit's prelude with the generated SDK, then the program. Tool
calls reach the host as calls of the external function ``_conduit_call``, answered in-process by
the bridge with the execution's token (the same authentication and allowlist as the socket).
Monty enforces the time and memory limits itself (``TimeoutError``, ``MemoryError``); the host
enforces them too (the deadline, the cgroup cap) and counts the output, killing the worker at
the first byte or line past its budget.

Which programs Monty may run is decided before anything runs: see :mod:`conduit.sandbox.monty.check`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import sysconfig
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.lowlevel
import pydantic_monty as pm
from anyio.abc import TaskGroup

from conduit.errors import SandboxStartError
from conduit.sandbox.base import BridgeCall, Job, RunOutcome
from conduit.sandbox.host.outcome import classify
from conduit.sandbox.host.output import OutputCollector
from conduit.sandbox.host.pool import PooledRuntime, PoolSizing
from conduit.sandbox.host.process import REAP_TIMEOUT, has_exited, private_memory_bytes, set_niceness, wait_exited
from conduit.sandbox.monty.check import MontyChecker, Verdict
from conduit.sandbox.protocol import CAPABILITIES_SOURCE, PRELUDE_CONSTANTS, new_nonce
from conduit.sandbox.protocol.records import error_record, exit_record, limit_record, value_record
from conduit.sandbox.walls import Profile, Walls
from conduit.sandbox.walls.cgroups import Cgroup, launched_leaf, sweep, watch_cap
from conduit.sandbox.walls.launch import MAX_PIDS

logger = logging.getLogger(__name__)

PRELUDE: Final = PRELUDE_CONSTANTS + (Path(__file__).parent / "monty_prelude.py").read_text() + CAPABILITIES_SOURCE
PROGRAM_FEED: Final = "<python-input-1>"
"""Monty's name for a session's second feed, the program (the first is the prelude and SDK)."""
PROGRAM: Final = "program.py"
"""The program's file name in tracebacks, as on Pyodide."""
MAX_SUSPENSIONS: Final = 10_000_000
"""Monty counts every tool call and name lookup against this per session (default 1000); the time limit bounds a run."""
BASELINE_MB: Final = 64
"""A worker's memory besides the program's heap, for its cgroup cap."""
READY_TIMEOUT: Final = 30.0
MAX_WORKERS: Final = 1024
"""The Monty pool's own cap; the sandbox pool and admission bound how many workers there really are."""
SWEEP_EVERY_S: Final = 1.0
DEADLINE_GRACE: Final = 0.25
"""How long past Monty's own time limit the pool waits for Monty's TimeoutError before killing the worker."""

"""``(token, method, params)`` -> the bridge's answer, ``{"result": ...}`` or ``{"error": {...}}``."""


def find_monty(configured: str | None) -> str:
    """The ``monty`` worker binary: configured, else the one ``pydantic-monty-runtime`` installed beside Conduit."""
    if configured:
        return configured
    beside = Path(sysconfig.get_path("scripts")) / "monty"
    if beside.is_file():
        return str(beside)
    return shutil.which("monty") or str(beside)


def _problem(binary: str) -> str | None:
    if not os.path.isfile(binary) or not os.access(binary, os.X_OK):
        return f"the monty worker binary is missing ({binary}): run `make setup` or set montyPath"
    return None


class MontyWorkers:
    """Starts Monty workers, each checked out for one program: a :class:`~conduit.sandbox.host.pool.Launcher`.

    ``pydantic-monty``'s pool starts a worker when a session is checked out and none is idle, and
    never starts one ahead; a :class:`MontySandbox` is such a checked-out session, so a
    :class:`~conduit.sandbox.host.pool.PooledRuntime` of them keeps workers ready ahead of demand.
    """

    name = "monty"

    def __init__(
        self, *, binary: str, walls: Walls, work_dir: Path, call: BridgeCall, timeout_ms: int, checkers: int = 2
    ) -> None:
        self._binary = binary
        self._walls = walls
        self._work_dir = work_dir
        self.call = call
        self._timeout_s = timeout_ms / 1000
        self._checkers = checkers
        self._pool: pm.AsyncMonty | None = None
        self.checker: MontyChecker | None = None
        self._ready = anyio.Event()
        self._closed = anyio.Event()
        self._failure: str | None = None
        self.reaper: TaskGroup | None = None
        """Where used workers' sessions are ended, off the path of the answer (set when the runtime starts)."""

    def problem(self) -> str | None:
        return self._failure or _problem(self._binary)

    def uid_probe(self, home: Path) -> tuple[list[str], dict[str, str]]:
        """The worker binary running a line of Python: exits 0 when it starts as the sandbox uid."""
        return [self._binary, "-c", "1"], {}

    async def serve(self) -> None:
        """Keep the worker pools open until :meth:`close`."""
        problem = _problem(self._binary)
        if problem:
            self._failure = problem
            self._ready.set()
            return
        wrapper = self._write_wrapper()
        try:
            async with (
                pm.AsyncMonty(
                    binary_path=wrapper,
                    min_processes=0,
                    max_processes=MAX_WORKERS,
                    max_checkouts_per_worker=1,
                    feed_duration_limit_grace=DEADLINE_GRACE,
                ) as pool,
                pm.AsyncMonty(
                    binary_path=wrapper, min_processes=0, max_processes=self._checkers + 1, max_checkouts_per_worker=1
                ) as checker_pool,
            ):
                self._pool = pool
                self.checker = MontyChecker(checker_pool, self._checkers, self.reaper)
                self._ready.set()
                try:
                    await self._closed.wait()
                finally:
                    self._pool = None
                    with anyio.CancelScope(shield=True):
                        await self.checker.aclose()
        except (OSError, pm.MontyError) as exc:
            self._failure = f"Monty workers cannot start: {exc}"
            logger.error("%s", self._failure)
        finally:
            self._pool = None
            self._ready.set()

    def close(self) -> None:
        self._closed.set()

    def _write_wrapper(self) -> str:
        """The executable the pool starts: the worker binary behind every available wall.

        The launcher makes the worker's own cgroup leaves and joins them (``cgroup_by_launcher``), so the
        worker is born in them (moving a running process into a cgroup costs the kernel ~10 ms); the host
        caps them when it checks the worker out (:meth:`cgroup_of`). The pool starts an executable by
        path, with arguments of its own: with the native launcher that is a copy of it that reads its
        options from ``monty-worker.args``; with the Python launcher, a shell script.
        """
        profile = Profile(read_only=(self._binary,), baseline_mb=BASELINE_MB)
        argv, _ = self._walls.launch([self._binary], profile, 0, "monty", env={}, cgroup_by_launcher=True)
        if argv == [self._binary]:
            return self._binary
        wrapper = self._work_dir / "monty-worker"
        native = self._walls.native
        if native is not None and argv[0] == native and not any("\n" in item for item in argv):
            (self._work_dir / "monty-worker.args").write_text("".join(f"{item}\n" for item in argv[1:]))
            _place_executable(wrapper, lambda staged: _link_or_copy(native, staged))
        else:
            _place_executable(wrapper, lambda staged: staged.write_text(f'#!/bin/sh\nexec {shlex.join(argv)} "$@"\n'))
        return str(wrapper)

    def cgroup_of(self, pid: int, memory_bytes: int) -> Cgroup | None:
        """Worker ``pid``'s cgroup, capped for a program (None: no cgroups for sandboxes here).

        Raises:
            SandboxStartError: the caps could not be set.
        """
        if not self._walls.cgroups.available:
            return None
        try:
            return Cgroup(self._walls.cgroups, memory_bytes, MAX_PIDS, name=launched_leaf(pid))
        except OSError as exc:
            raise SandboxStartError(f"cannot cap the Monty worker's cgroup: {exc}") from exc

    async def sweep(self) -> None:
        """Remove the cgroups of workers that are gone, off the path of any program, until :meth:`close`."""
        if not self._walls.cgroups.available:
            return
        while not self._closed.is_set():
            with anyio.move_on_after(SWEEP_EVERY_S):
                await self._closed.wait()
            sweep()

    async def wait_ready(self) -> pm.AsyncMonty:
        with anyio.fail_after(READY_TIMEOUT):
            await self._ready.wait()
        if self._pool is None:
            raise SandboxStartError(self.problem() or "the Monty runtime is closed")
        return self._pool

    async def prepare(self, memory_limit_mb: int, *, niceness: int = 0) -> MontySandbox:
        """A fresh worker checked out for one program of at most ``memory_limit_mb``, capped already.

        Monty's own time limit is the configured ceiling (a session's limits are fixed when it is checked
        out, before the program's are known); the host enforces the program's own deadline.
        """
        pool = await self.wait_ready()
        session = pool.checkout(
            script_name=PROGRAM,
            limits={
                "max_memory": memory_limit_mb << 20,
                "max_feed_duration_secs": self._timeout_s,
                "max_total_sleep_secs": self._timeout_s,
                "max_suspensions": MAX_SUSPENSIONS,
            },
            os_policy={"sleep_system_max": self._timeout_s},
            print_flush_interval=0,
        )
        stack = AsyncExitStack()
        try:
            with anyio.fail_after(READY_TIMEOUT):
                await stack.enter_async_context(session)
            pid = session.worker_pid
            if pid is None:
                raise SandboxStartError("the Monty worker has no process")
            cgroup = self.cgroup_of(pid, (memory_limit_mb + BASELINE_MB) << 20)
        except (pm.MontyError, OSError, TimeoutError, RuntimeError) as exc:  # RuntimeError: a spawn that failed
            await stack.aclose()
            raise SandboxStartError(f"cannot start a Monty worker: {exc}") from exc
        except BaseException:
            await stack.aclose()
            raise
        if niceness:
            set_niceness(pid, niceness)
        return MontySandbox(self, session, stack, pid, cgroup)


class MontyRuntime(PooledRuntime):
    """Monty workers kept ready ahead of demand (a :class:`PooledRuntime`), and the checker ``auto`` asks."""

    def __init__(self, workers: MontyWorkers, *, sizing: PoolSizing, memory_limit_mb: int) -> None:
        super().__init__(workers, sizing=sizing, memory_limit_mb=memory_limit_mb)
        self.workers = workers

    def start(self, tg: TaskGroup) -> None:
        self.workers.reaper = tg
        tg.start_soon(self.workers.serve)
        tg.start_soon(self.workers.sweep)
        super().start(tg)

    async def aclose(self) -> None:
        self.workers.reaper = None
        await super().aclose()
        self.workers.close()

    def problem(self) -> str | None:
        return self.workers.problem()

    async def check(self, program: str, sdk: str) -> Verdict:
        """Whether ``program`` is within what Monty runs (decided without running it)."""
        await self.workers.wait_ready()
        assert self.workers.checker is not None
        return await self.workers.checker.check(program, sdk)


class MontySandbox:
    """One checked-out worker: runs one program, then the worker is killed and the pool starts no other in it."""

    def __init__(
        self,
        workers: MontyWorkers,
        session: pm.AsyncMontySession,
        stack: AsyncExitStack,
        pid: int,
        cgroup: Cgroup | None,
    ) -> None:
        self._workers = workers
        self._session = session
        self._stack = stack
        self._pid = pid
        self._cgroup = cgroup
        self._used = False
        self._gone = False

    @property
    def alive(self) -> bool:
        """Whether the worker can still take a program: running, not a zombie waiting to be reaped."""
        return not self._gone and not has_exited(self._pid)

    def memory_bytes(self) -> int:
        return private_memory_bytes(self._pid)

    def set_priority(self, niceness: int) -> None:
        set_niceness(self._pid, niceness)

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self._pid, signal.SIGKILL)

    async def discard(self) -> None:
        self._used = True
        await self._end()

    async def _end(self) -> bool:
        """Kill the worker, give its session back and release its cgroup; whether the kernel killed it at its cap."""
        if self._gone:
            return False
        self._gone = True
        self._kill()
        with anyio.CancelScope(shield=True):
            # The session reaps its worker when it is given back only if the worker has exited by then;
            # one still dying (a SIGKILL is not instant under load) is left to the client library's
            # orphan queue, a zombie until its next worker spawn.
            await wait_exited(self._pid)
            with contextlib.suppress(Exception):
                await self._stack.aclose()
        if self._cgroup is None:
            return False
        oom = self._cgroup.oom_killed()
        self._cgroup.release()
        return oom

    async def run(self, job: Job) -> RunOutcome:
        """Run ``job`` here; if this worker turns out to have died before the program started (its prelude
        never ran), run it once on a fresh worker instead: nothing of the program had run."""
        if self._used:
            raise SandboxStartError("a sandbox runs exactly one program")
        self._used = True
        outcome = await self._run(job)
        if outcome is not None:
            return outcome
        logger.warning("a Monty worker was dead before its program started; running the program on a fresh one")
        fresh = await self._workers.prepare(job.limits.memory_limit_mb)
        fresh._used = True
        outcome = await fresh._run(job, retry=False)
        assert outcome is not None  # without a retry, every run has an outcome
        return outcome

    async def _run(self, job: Job, *, retry: bool = True) -> RunOutcome | None:
        """The outcome; None when the worker died while the prelude was fed (the program never started) and
        ``retry`` lets the caller run it elsewhere.

        The answer comes at the program's time limit whatever the worker is doing: the worker is killed
        then, and its turn ends and its session is given back in the background (the reaper), never on the
        path of the answer or while the run holds its concurrency slot.
        """
        limits = job.limits
        collector = OutputCollector.for_limits(limits, new_nonce(), job.on_output)
        timeout_s = limits.timeout_ms / 1000
        capped = timed_out = False
        record: dict[str, Any] | None = None
        crash: str | None = None
        program_started = False
        answered = False

        def at_cap() -> None:
            nonlocal capped
            capped = True
            self._kill()

        def printed(stream: str, text: str) -> None:
            if answered:  # the worker's last words after the answer: nobody reads them
                return
            data = text.encode("utf-8", "surrogateescape")
            collector.feed_stdout(data) if stream == "stdout" else collector.feed_stderr(data)
            if collector.tripped:
                self._kill()

        async def call(method: str, params: Any) -> dict[str, Any]:
            return await self._workers.call(job.token, method, params)

        lookup = {"_conduit_call": call}
        session = self._session
        finished = anyio.Event()
        turn = anyio.CancelScope(shield=True)

        async def feeds() -> None:
            nonlocal record, crash, program_started
            # Shielded: a run that ends early kills the worker and lets the turn end with it, so the client
            # library still owns the worker and reaps it (a turn dropped while its worker is still alive
            # leaves it a zombie until the library next spawns one).
            try:
                with turn:
                    try:
                        await session.feed_run(PRELUDE + job.sdk, external_lookup=lookup, print_callback=printed)
                        program_started = True
                        value = await session.feed_run(job.program, external_lookup=lookup, print_callback=printed)
                        record = value_record(value, limits.max_output_bytes)
                    except pm.MontyRuntimeError as exc:
                        record = _failure_record(exc, printed, time.perf_counter() - started >= timeout_s)
                    except pm.MontySyntaxError as exc:
                        printed("stderr", _syntax_error(exc))
                        record = error_record("SyntaxError", str(exc))
                    except pm.MontyCrashedError as exc:
                        crash = f"the Monty worker died: {exc}"
                    except pm.MontyError as exc:
                        crash = f"the Monty worker failed: {exc}"
            except Exception:  # in the reaper's task group: never let it take the server down
                logger.exception("a Monty run failed")
                crash = "the Monty worker failed"
            finally:
                finished.set()

        reaper = self._workers.reaper
        started = time.perf_counter()
        try:
            with anyio.move_on_after(timeout_s) as deadline:
                async with anyio.create_task_group() as tg:
                    if self._cgroup is not None:
                        tg.start_soon(watch_cap, self._cgroup, at_cap)
                    (reaper or tg).start_soon(feeds)
                    await finished.wait()
                    tg.cancel_scope.cancel()
            timed_out = deadline.cancelled_caught
        finally:
            answered = True
            self._kill()
            capped = capped or (self._cgroup is not None and self._cgroup.oom_killed())
            if not finished.is_set():  # the worker is dying: its turn ends within the reap bound
                turn.deadline = anyio.current_time() + REAP_TIMEOUT
            if reaper is not None:  # the outcome is complete: the turn's and the session's end are not waited for
                reaper.start_soon(self._end_after, finished)
            else:
                await self._end_after(finished)
        if retry and crash is not None and not program_started and not timed_out and not capped:
            return None
        killed = timed_out or capped or collector.tripped or crash is not None
        return classify(
            collector,
            record,
            exit_code=None if killed else 0 if record is not None and record.get("status") == "ok" else 1,
            timed_out=timed_out,
            timeout_ms=limits.timeout_ms,
            duration_ms=(time.perf_counter() - started) * 1000,
            crash=crash,
            memory_killed=capped,
        )

    async def _end_after(self, turn_ended: anyio.Event) -> None:
        """End the session once its turn has ended (the shielded turn ends within the reap bound)."""
        with anyio.CancelScope(shield=True):
            await turn_ended.wait()
        await self._end()


def _place_executable(path: Path, write: Callable[[Path], object]) -> None:
    """Make the executable ``path`` by writing a staged file and renaming it into place.

    Other threads fork sandboxes all the while; a child forked while a file is open for writing holds
    that descriptor until it execs, and executing the file then fails with ETXTBSY ("Text file busy").
    A hard link opens nothing for writing; a copy is written under another name first.
    """
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    staged.unlink(missing_ok=True)
    write(staged)
    staged.chmod(0o755)
    os.replace(staged, path)


def _link_or_copy(source: str, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copyfile(source, target)


def _failure_record(exc: pm.MontyRuntimeError, printed: Callable[[str, str], None], overdue: bool) -> dict[str, Any]:
    """The record for a program that raised, with a traceback of its own frames on stderr.

    Monty's time limit raises ``TimeoutError`` inside the program; one raised once the run is
    ``overdue`` (its wall time at the limit) is the limit's, not the program's own.
    """
    error = exc.exception()
    if isinstance(error, SystemExit):
        return exit_record(error.code)
    printed("stderr", _traceback(exc, error))
    if isinstance(error, MemoryError):
        return limit_record("memory")
    if isinstance(error, TimeoutError) and overdue:
        return limit_record("timeout")
    return error_record(type(error).__name__, str(error))


def _traceback(exc: pm.MontyRuntimeError, error: BaseException) -> str:
    frames = [frame for frame in exc.traceback() if frame.filename == PROGRAM_FEED]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    for frame in frames:
        lines.append(f'  File "{PROGRAM}", line {frame.line}, in {frame.function_name or "<module>"}\n')
        if frame.source_line:
            lines.append(f"    {frame.source_line.strip()}\n")
    message = str(error)
    lines.append(f"{type(error).__name__}: {message}\n" if message else f"{type(error).__name__}\n")
    return "".join(lines)


def _syntax_error(exc: pm.MontySyntaxError) -> str:
    return exc.display("traceback").replace(PROGRAM_FEED, PROGRAM) + "\n"
