"""TypeScript sandboxes: one fresh Deno process per program (and the Deno sandbox Pyodide reuses).

The process starts with no permissions but a network grant for exactly the bridge's
``host:port``, an empty environment (private ``DENO_DIR`` and ``HOME`` only), no remote,
npm or config loading, and a V8 heap ceiling. Its main module is Conduit's fixed harness,
which waits for one job on stdin; so a sandbox can be started ahead of a request and used
exactly once. The host enforces the time, byte and line limits and kills the process
group in every outcome.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import anyio
from anyio.abc import Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from conduit.errors import SandboxStartError
from conduit.sandbox.base import BridgeAddress, Job, RunOutcome, job_line
from conduit.sandbox.cgroups import Cgroup
from conduit.sandbox.outcome import classify
from conduit.sandbox.output import OutputCollector
from conduit.sandbox.process import destroy, kill_group, private_memory_bytes, pump, set_niceness, spawn
from conduit.sandbox.program import wrap_program
from conduit.sandbox.walls import Profile, Walls

logger = logging.getLogger(__name__)

READY: Final = b"CONDUIT-READY\n"
READY_TIMEOUT: Final = 30.0
HARNESS: Final = Path(__file__).parent / "harness" / "deno_harness.js"
RUN_FLAGS: Final = ("run", "--no-prompt", "--no-remote", "--no-npm", "--no-config", "--no-lock")
"""``deno run`` with nothing loaded from outside: no prompts, remote modules, npm, config or lock file."""


def find_deno(configured: str | None) -> str:
    """The Deno executable: the configured one, else the binary of PyPI's ``deno`` package.

    Raises:
        SandboxStartError: none can be found.
    """
    if configured:
        return configured
    try:
        import deno
    except ImportError as exc:
        raise SandboxStartError("Deno is not installed: run `make setup` (PyPI package 'deno')") from exc
    return str(deno.find_deno_bin())


class DenoRuntime:
    """Starts TypeScript sandboxes that may reach only the bridge."""

    name = "typescript"

    def __init__(self, *, deno_path: str, bridge: BridgeAddress, work_dir: Path, walls: Walls | None = None) -> None:
        self.deno_path = deno_path
        self.bridge = bridge
        self.walls = walls
        self.home = work_dir / "deno-home"
        self._deno_dir = work_dir / "deno-dir"
        self.reaper: TaskGroup | None = None
        """Task group that reaps finished sandboxes in the background (set by the gateway)."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._deno_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def argv(self, memory_limit_mb: int) -> list[str]:
        return [*self.sandbox_flags(memory_limit_mb), str(HARNESS)]

    def sandbox_flags(self, heap_mb: int, *grants: str) -> list[str]:
        """Deno, ``run`` and the flags every sandbox gets: the bridge address, a heap cap, and ``grants``."""
        return [
            self.deno_path,
            *RUN_FLAGS,
            "--cached-only",
            *grants,
            f"--allow-net={self.bridge.host}:{self.bridge.port}",
            f"--v8-flags=--max-heap-size={heap_mb}",
        ]

    def problem(self) -> str | None:
        """Why Deno sandboxes cannot start, or None."""
        if not os.access(self.deno_path, os.X_OK):
            return f"Deno is not executable at {self.deno_path}: run `make setup`"
        return None

    def env(self) -> dict[str, str]:
        return {
            "DENO_DIR": str(self._deno_dir),
            "HOME": str(self.home),
            "DENO_NO_UPDATE_CHECK": "1",
            "NO_COLOR": "1",
        }

    @property
    def private_dirs(self) -> list[str]:
        """The directories only its sandboxes use (given to the sandbox uid when there is one)."""
        return [str(self.home), str(self._deno_dir)]

    def profile(self, *read_only: str, baseline_mb: int = 128) -> Profile:
        """What a Deno sandbox may touch on disk: Deno, the harnesses, ``read_only``; its private dirs read-write."""
        return Profile((self.deno_path, str(HARNESS.parent), *read_only), tuple(self.private_dirs), baseline_mb)

    async def start(
        self, argv: list[str], profile: Profile, memory_limit_mb: int, kind: str = "typescript", niceness: int = 0
    ) -> tuple[Process, Cgroup | None]:
        """Spawn a Deno sandbox process behind the walls (if any), with its cgroup, at ``niceness``."""
        cgroup = None
        if self.walls is not None:
            argv, cgroup = self.walls.launch(argv, profile, memory_limit_mb, kind, self.env(), niceness)
        try:
            process = await spawn(argv, env=self.env(), cwd=str(self.home))
        except BaseException:
            if cgroup is not None:
                await cgroup.remove()
            raise
        if niceness and self.walls is None:
            set_niceness(process.pid, niceness)  # the launcher does it before exec when there is one
        return process, cgroup

    async def prepare(self, memory_limit_mb: int, *, niceness: int = 0) -> DenoSandbox:
        argv = self.argv(memory_limit_mb)
        process, cgroup = await self.start(argv, self.profile(), memory_limit_mb, niceness=niceness)
        head = await wait_until_ready(process, cgroup, READY_TIMEOUT, "TypeScript sandbox")
        return DenoSandbox(process, self.bridge, wrap_program, stdout_head=head, cgroup=cgroup, reaper=self.reaper)


async def discard_process(process: Process, cgroup: Cgroup | None) -> bool:
    """Destroy a sandbox process and release its cgroup; whether the kernel killed it at its memory cap."""
    await destroy(process)
    if cgroup is None:
        return False
    killed = cgroup.oom_killed()
    cgroup.release()
    return killed


async def wait_until_ready(process: Process, cgroup: Cgroup | None, within_s: float, what: str) -> bytes:
    """Wait for a harness's ready line; returns the stdout bytes read after it.

    Raises:
        SandboxStartError: the harness died or did not get ready in time (the process is destroyed).
    """
    assert process.stdout is not None
    reader = BufferedByteReceiveStream(process.stdout)
    try:
        with anyio.fail_after(within_s):
            line = await reader.receive_until(b"\n", 4096)
        if line != READY.rstrip(b"\n"):
            raise anyio.IncompleteRead
    except BaseException as exc:
        if not isinstance(exc, (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound)):
            await discard_process(process, cgroup)  # cancelled while loading: leave nothing behind
            raise
        detail = ""
        if process.stderr is not None:
            with anyio.move_on_after(1):
                detail = (await process.stderr.receive(4096)).decode(errors="replace").strip().splitlines()[-1]
        await discard_process(process, cgroup)
        raise SandboxStartError(f"{what} did not start: {detail or type(exc).__name__}") from exc
    return bytes(reader.buffer)


class DenoSandbox:
    """A started Deno harness waiting for its one job (TypeScript, or Python on Pyodide)."""

    def __init__(
        self,
        process: Process,
        bridge: BridgeAddress,
        transform: Callable[[str], str],
        stdout_head: bytes = b"",
        cgroup: Cgroup | None = None,
        reaper: TaskGroup | None = None,
    ) -> None:
        self._process = process
        self._reaper = reaper
        """Where a finished sandbox is reaped in the background (else it is reaped before the run returns)."""
        self._cgroup = cgroup
        self._bridge = bridge
        self._transform = transform
        self._stdout_head = stdout_head
        """stdout bytes already read while waiting for the harness to be ready."""
        self._used = False

    @property
    def alive(self) -> bool:
        return self._process.returncode is None

    @property
    def pid(self) -> int:
        return self._process.pid

    def memory_bytes(self) -> int:
        return private_memory_bytes(self._process.pid)

    def set_priority(self, niceness: int) -> None:
        set_niceness(self._process.pid, niceness)

    async def run(self, job: Job) -> RunOutcome:
        if self._used:
            raise SandboxStartError("a sandbox runs exactly one program")
        self._used = True
        nonce = secrets.token_hex(16)
        limits = job.limits
        collector = OutputCollector.for_limits(limits, nonce, job.on_output)
        payload = {
            "nonce": nonce,
            "token": job.token,
            "bridge": {"host": self._bridge.host, "port": self._bridge.port},
            "program": self._transform(job.program),
            "maxResultBytes": limits.max_output_bytes,
        }
        process = self._process
        started = time.perf_counter()

        finished = anyio.Event()

        def guarded(feed: Callable[[bytes], None]) -> Callable[[bytes], None]:
            def sink(chunk: bytes) -> None:
                feed(chunk)
                if collector.tripped:
                    kill_group(process)
                elif collector.complete:
                    finished.set()

            return sink

        async def exited() -> None:
            await process.wait()
            finished.set()

        timed_out = complete = False
        if self._stdout_head:
            collector.feed_stdout(self._stdout_head)
        try:
            with anyio.move_on_after(limits.timeout_ms / 1000) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pump, process.stdout, guarded(collector.feed_stdout))
                    tg.start_soon(pump, process.stderr, guarded(collector.feed_stderr))
                    tg.start_soon(exited)
                    assert process.stdin is not None
                    try:
                        await process.stdin.send(job_line(payload, job.sdk))
                        await process.stdin.aclose()
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass  # the process died before reading its job: its exit status tells why
                    await finished.wait()
                    complete = collector.complete
                    if complete:  # everything is here: the process's own exit (~ms for Pyodide) is not waited for
                        tg.cancel_scope.cancel()
            timed_out = scope.cancelled_caught
        finally:
            memory_killed = await self._discard(wait=not complete)
        collector.finish()
        record = collector.record()
        exit_code = process.returncode
        if complete and record is not None and isinstance(record.get("exitCode"), int):
            exit_code = record["exitCode"]
        return classify(
            collector,
            record,
            exit_code=exit_code,
            timed_out=timed_out,
            timeout_ms=limits.timeout_ms,
            duration_ms=(time.perf_counter() - started) * 1000,
            memory_killed=memory_killed,
        )

    async def discard(self) -> None:
        self._used = True
        await self._discard()

    async def _discard(self, wait: bool = True) -> bool:
        """Kill the process; reap it and release its cgroup now, or (``wait=False``, with a reaper) later.

        Returns whether the kernel killed it at its memory cap (always False when not waited for).
        """
        cgroup, self._cgroup = self._cgroup, None
        if not wait and self._reaper is not None:
            kill_group(self._process)
            self._reaper.start_soon(discard_process, self._process, cgroup)
            return False
        return await discard_process(self._process, cgroup)
