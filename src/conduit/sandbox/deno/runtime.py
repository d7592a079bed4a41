"""TypeScript sandboxes: one fresh Deno process per program (and the Deno sandbox Pyodide reuses).

The process starts with no permissions but a network grant for exactly the bridge's
``host:port``, an empty environment (``DENO_DIR`` and ``HOME`` pointing at a directory of its
own, see :mod:`conduit.sandbox.host.homes`), no remote, npm or config loading, and ceilings on
the V8 heap and on every WebAssembly memory. Its main module is Conduit's fixed harness,
which waits for one job on stdin; so a sandbox can be started ahead of a request and used
exactly once. The host enforces the time, byte and line limits and kills the process
group in every outcome.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import anyio
from anyio.abc import TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from conduit.errors import SandboxStartError
from conduit.sandbox.base import BridgeAddress, Job, RunOutcome, job_line
from conduit.sandbox.host.homes import SandboxHomes, harvest
from conduit.sandbox.host.outcome import classify
from conduit.sandbox.host.output import OutputCollector
from conduit.sandbox.host.process import (
    SandboxProcess,
    destroy,
    kill_group,
    private_memory_bytes,
    pump,
    set_niceness,
    spawn,
)
from conduit.sandbox.host.program import typescript_module
from conduit.sandbox.protocol import FOLDER as PROTOCOL_FILES
from conduit.sandbox.protocol import new_nonce
from conduit.sandbox.walls import Profile, Walls
from conduit.sandbox.walls.cgroups import Cgroup, watch_cap

logger = logging.getLogger(__name__)

READY: Final = b"CONDUIT-READY\n"
READY_TIMEOUT: Final = 30.0
HARNESS: Final = Path(__file__).parent / "deno_harness.js"
RUN_FLAGS: Final = ("run", "--no-prompt", "--no-remote", "--no-npm", "--no-config", "--no-lock")
"""``deno run`` with nothing loaded from outside: no prompts, remote modules, npm, config or lock file."""
GC_STORM_FLAGS: Final = "--ineffective-gc-size-threshold=0.8"
"""V8 gives up on a heap that garbage collection no longer frees (four full collections in a row that
leave it past this share of ``--max-heap-size`` while the program gets under 40 % of the time) instead of
collecting on: by default it waits until the heap is 95 % full, and a heap of millions of small objects
then took seconds of back-to-back collections to end. Measured by ``bench/limit_ends.py``."""
WASM_PAGE: Final = 64 * 1024
SEED_TIMEOUT: Final = 30.0
MAX_SEEDS: Final = 4
"""Distinct V8 flag sets (memory limits) whose harness caches are kept to seed new sandbox homes."""
SEED_JOB: Final = {
    "nonce": "seed",
    "token": "seed",
    "bridge": {"host": "127.0.0.1", "port": 9},
    "program": "export default (async () => 0)();\n",
    "maxResultBytes": 1024,
    "sdk": "export function createTools(call) { return { tools: {}, discoverMCPTools: () => call('x', {}) }; }\n",
}
"""The fixed job Conduit runs once per flag set to fill Deno's caches for its own harness (no tools, no output)."""


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


@dataclass
class DenoProcess:
    """A started Deno sandbox process and what goes with it: its cgroup and its private home."""

    process: SandboxProcess
    cgroup: Cgroup | None
    home: Path
    homes: SandboxHomes

    async def destroy(self) -> bool:
        """Kill and reap the process, remove its home, release its cgroup; whether the kernel killed it
        at its memory cap."""
        await destroy(self.process)
        self.homes.remove(self.home)
        if self.cgroup is None:
            return False
        killed = self.cgroup.oom_killed()
        self.cgroup.release()
        return killed


class DenoLauncher:
    """Starts TypeScript sandboxes that may reach only the bridge."""

    name = "typescript"

    def __init__(
        self,
        *,
        deno_path: str,
        bridge: BridgeAddress,
        work_dir: Path,
        walls: Walls | None = None,
        reaper: TaskGroup | None = None,
    ) -> None:
        self.deno_path = deno_path
        self.bridge = bridge
        self.walls = walls
        self.work_dir = work_dir
        self.homes = SandboxHomes(work_dir)
        """One private home per sandbox: nothing a program stores outlives it."""
        self.own_home = work_dir / "deno-own"
        """``DENO_DIR`` and ``HOME`` of Conduit's own Deno runs (probes, the Pyodide snapshot): never a program's."""
        self.reaper = reaper
        """Where finished sandboxes are reaped in the background (without one, before a run returns)."""
        self.own_home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._seeds: dict[str, Mapping[str, bytes] | None] = {}
        self._seed_lock = anyio.Lock()

    def argv(self, memory_limit_mb: int) -> list[str]:
        return [*self.sandbox_flags(memory_limit_mb, memory_limit_mb), str(HARNESS)]

    def sandbox_flags(self, heap_mb: int, wasm_mb: int, *grants: str) -> list[str]:
        """Deno, ``run`` and the flags every sandbox gets: the bridge address, ceilings on the V8 heap and on
        each WebAssembly memory, and ``grants``."""
        return [
            self.deno_path,
            *RUN_FLAGS,
            "--cached-only",
            *grants,
            f"--allow-net={self.bridge.host}:{self.bridge.port}",
            f"--v8-flags=--max-heap-size={heap_mb},--wasm-max-mem-pages={(wasm_mb << 20) // WASM_PAGE},"
            + GC_STORM_FLAGS,
        ]

    def problem(self) -> str | None:
        """Why Deno sandboxes cannot start, or None."""
        if not os.access(self.deno_path, os.X_OK):
            return f"Deno is not executable at {self.deno_path}: run `make setup`"
        return None

    @staticmethod
    def env(home: Path) -> dict[str, str]:
        """The whole environment of a Deno process whose private directory is ``home``."""
        return {"DENO_DIR": str(home), "HOME": str(home), "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"}

    def profile(self, *read_only: str, baseline_mb: int = 128) -> Profile:
        """What a Deno sandbox may touch on disk: Deno, its harness and the protocol's JavaScript side,
        ``read_only`` (and its home, read-write)."""
        return Profile((self.deno_path, str(HARNESS.parent), str(PROTOCOL_FILES), *read_only), (), baseline_mb)

    def uid_probe(self, home: Path) -> tuple[list[str], dict[str, str]]:
        """``deno eval 0``: exits 0 when Deno works as the sandbox uid (see ``Walls.probe_uid``)."""
        return [self.deno_path, "eval", "0"], self.env(home)

    async def spawn(
        self, argv: list[str], profile: Profile, memory_limit_mb: int, kind: str = "typescript", niceness: int = 0
    ) -> DenoProcess:
        """Spawn a Deno sandbox process in a fresh private home, behind the walls (if any), at ``niceness``."""
        seed = await self._seed(argv)
        walls = self.walls
        home = self.homes.make(walls.uid_for(kind) if walls is not None else None, seed)
        env = self.env(home)
        cgroup = None
        if walls is not None:
            profile = replace(profile, read_write=(*profile.read_write, str(home)))
            argv, cgroup = walls.launch(argv, profile, memory_limit_mb, kind, env, niceness)
        try:
            process = await spawn(argv, env=env, cwd=str(home))
        except BaseException:
            self.homes.remove(home)
            if cgroup is not None:
                await cgroup.remove()
            raise
        if niceness and walls is None:
            set_niceness(process.pid, niceness)  # the launcher does it before exec when there is one
        return DenoProcess(process, cgroup, home, self.homes)

    async def _seed(self, argv: list[str]) -> Mapping[str, bytes] | None:
        """Seed new homes with Deno's caches of the harness, made once per set of V8 flags.

        V8 refuses a code cache made under other flags, so each memory limit has its own seed; a
        Conduit-owned run of the TypeScript harness on :data:`SEED_JOB` makes it. Without a seed (it
        could not be made, or there are too many limits) a home starts empty, which costs time only.
        """
        flags = next((arg for arg in argv if arg.startswith("--v8-flags=")), "")
        if flags not in self._seeds and len(self._seeds) < MAX_SEEDS:
            async with self._seed_lock:
                if flags not in self._seeds:
                    self._seeds[flags] = await self._make_seed(flags)
        return self._seeds.get(flags)

    async def _make_seed(self, flags: str) -> dict[str, bytes] | None:
        home = self.homes.make()
        argv = [self.deno_path, *RUN_FLAGS, "--cached-only", flags, str(HARNESS)]
        try:
            with anyio.fail_after(SEED_TIMEOUT):
                done = await anyio.run_process(
                    argv, input=json.dumps(SEED_JOB).encode() + b"\n", env=self.env(home), cwd=str(home), check=False
                )
            if done.returncode != 0:
                logger.info("sandbox homes start empty: the seed run exited with %d", done.returncode)
                return None
            return await anyio.to_thread.run_sync(harvest, home)
        except (OSError, TimeoutError) as exc:
            logger.info("sandbox homes start empty: the seed run failed (%s)", exc)
            return None
        finally:
            self.homes.remove(home)

    async def prepare(self, memory_limit_mb: int, *, niceness: int = 0) -> DenoSandbox:
        argv = self.argv(memory_limit_mb)
        started = await self.spawn(argv, self.profile(), memory_limit_mb, niceness=niceness)
        head = await wait_until_ready(started, READY_TIMEOUT, "TypeScript sandbox")
        return DenoSandbox(started, self.bridge, typescript_module, stdout_head=head, reaper=self.reaper)


async def wait_until_ready(started: DenoProcess, within_s: float, what: str) -> bytes:
    """Wait for a harness's ready line; returns the stdout bytes read after it.

    Raises:
        SandboxStartError: the harness died or did not get ready in time (the process is destroyed).
    """
    process = started.process
    assert process.stdout is not None
    reader = BufferedByteReceiveStream(process.stdout)
    try:
        with anyio.fail_after(within_s):
            line = await reader.receive_until(b"\n", 4096)
        if line != READY.rstrip(b"\n"):
            raise anyio.IncompleteRead
    except BaseException as exc:
        if not isinstance(exc, (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound)):
            await started.destroy()  # cancelled while loading: leave nothing behind
            raise
        detail = ""
        if process.stderr is not None:
            with anyio.move_on_after(1):
                detail = (await process.stderr.receive(4096)).decode(errors="replace").strip().splitlines()[-1]
        await started.destroy()
        raise SandboxStartError(f"{what} did not start: {detail or type(exc).__name__}") from exc
    return bytes(reader.buffer)


class DenoSandbox:
    """A started Deno harness waiting for its one job (TypeScript, or Python on Pyodide)."""

    def __init__(
        self,
        started: DenoProcess,
        bridge: BridgeAddress,
        transform: Callable[[str], str],
        stdout_head: bytes = b"",
        reaper: TaskGroup | None = None,
    ) -> None:
        self._started = started
        self._process = started.process
        self._reaper = reaper
        """Where a finished sandbox is reaped in the background (else it is reaped before the run returns)."""
        self._bridge = bridge
        self._transform = transform
        self._stdout_head = stdout_head
        """stdout bytes already read while waiting for the harness to be ready."""
        self._used = False
        self._gone = False

    @property
    def alive(self) -> bool:
        return self._process.returncode is None

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def home(self) -> Path:
        """The sandbox's private directory (removed with it)."""
        return self._started.home

    def memory_bytes(self) -> int:
        return private_memory_bytes(self._process.pid)

    def set_priority(self, niceness: int) -> None:
        set_niceness(self._process.pid, niceness)

    async def run(self, job: Job) -> RunOutcome:
        if self._used:
            raise SandboxStartError("a sandbox runs exactly one program")
        self._used = True
        nonce = new_nonce()
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

        capped = False
        watching = anyio.CancelScope()

        def at_cap() -> None:
            nonlocal capped
            capped = True
            kill_group(process)

        async def watch(cgroup: Cgroup) -> None:
            with watching:
                await watch_cap(cgroup, at_cap)

        timed_out = complete = False
        cgroup = self._started.cgroup
        if self._stdout_head:
            collector.feed_stdout(self._stdout_head)
        try:
            with anyio.move_on_after(limits.timeout_ms / 1000) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pump, process.stdout, guarded(collector.feed_stdout))
                    tg.start_soon(pump, process.stderr, guarded(collector.feed_stderr))
                    tg.start_soon(exited)
                    if cgroup is not None:
                        tg.start_soon(watch, cgroup)
                    assert process.stdin is not None
                    try:
                        await process.stdin.send(job_line(payload, job.sdk))
                        await process.stdin.aclose()
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass  # the process died before reading its job: its exit status tells why
                    await finished.wait()
                    watching.cancel()  # the output pumps still run to the end of the output
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
            memory_killed=memory_killed or capped,
        )

    async def discard(self) -> None:
        self._used = True
        await self._discard()

    async def _discard(self, wait: bool = True) -> bool:
        """Kill the process; reap it and release its cgroup now, or (``wait=False``, with a reaper) later.

        Returns whether the kernel killed it at its memory cap (always False when not waited for).
        """
        if self._gone:
            return False
        self._gone = True
        if not wait and self._reaper is not None:
            kill_group(self._process)
            self._reaper.start_soon(self._started.destroy)
            return False
        return await self._started.destroy()
