"""Pools of single-use sandboxes: sized by demand between min and max, within a memory ceiling,
started at a lower CPU priority, and the Pyodide snapshot Python sandboxes boot from."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from conduit.config.schema import Limits
from conduit.core.gateway import Gateway
from conduit.sandbox.base import Job
from conduit.sandbox.deno.runtime import DenoLauncher
from conduit.sandbox.host import pool as pool_module
from conduit.sandbox.host.pool import PooledRuntime, PoolSizing
from conduit.sandbox.pyodide.runtime import PyodideLauncher, default_pyodide_dir
from conduit.sandbox.pyodide.snapshot import PyodideSnapshot
from conduit.sdk.python import generate_python_sdk
from conduit.sdk.typescript import generate_deno_sdk
from support import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.deno]

LIMITS = Limits(timeout_ms=10_000, memory_limit_mb=128, max_output_bytes=100_000, max_log_entries=1000)


def deno_of(gateway: Gateway) -> DenoLauncher:
    pool = gateway.runtimes["typescript"]
    assert isinstance(pool, PooledRuntime) and isinstance(pool.launcher, DenoLauncher)
    return pool.launcher


@pytest.fixture
async def fast_sizing(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    monkeypatch.setattr(pool_module, "SHRINK_AFTER_S", 0.6)
    monkeypatch.setattr(pool_module, "CHECK_EVERY_S", 0.1)
    yield


@asynccontextmanager
async def running_pool(
    runtime: DenoLauncher, *, min: int, max: int, max_starting: int, max_idle_memory_mb: int = 4096
) -> AsyncIterator[PooledRuntime]:
    """A pool of ``runtime``'s sandboxes (at 128 MiB) filling in the background; closed afterwards."""
    sizing = PoolSizing(min=min, max=max, max_idle_memory_mb=max_idle_memory_mb, max_starting=max_starting)
    pool = PooledRuntime(runtime, sizing=sizing, memory_limit_mb=128)
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        try:
            yield pool
        finally:
            await pool.aclose()
            tg.cancel_scope.cancel()


def niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


async def test_a_pool_grows_under_demand_up_to_max_then_shrinks_back_to_min(
    gateway: Gateway, fast_sizing: None
) -> None:
    sdk = generate_deno_sdk([])
    async with running_pool(deno_of(gateway), min=1, max=3, max_starting=4) as pool:
        await wait_until(lambda: pool.idle == 1)
        assert pool.target == 1

        async def one(index: int) -> None:
            sandbox = await pool.prepare(128)
            outcome = await sandbox.run(Job(f"return {index};", sdk, "t", LIMITS))
            assert outcome.result == index

        async with anyio.create_task_group() as burst:
            for index in range(6):
                burst.start_soon(one, index)
        assert pool.target == 3  # each miss raised it by one, capped at max
        await wait_until(lambda: pool.idle == 3)
        assert pool.cold_starts == 0  # every request was served by the pool (or waited for a start)
        await wait_until(lambda: pool.target == 1 and pool.idle == 1)  # demand gone: surplus discarded


async def test_ready_sandboxes_wait_at_a_lower_priority_and_run_at_normal_priority(gateway: Gateway) -> None:
    async with running_pool(deno_of(gateway), min=1, max=1, max_starting=1) as pool:
        await wait_until(lambda: pool.idle == 1)
        waiting = pool._ready[0].sandbox
        assert niceness(waiting.pid) == 10
        sandbox = await pool.prepare(128)
        assert sandbox is waiting
        if os.geteuid() == 0:  # lowering niceness needs privilege
            assert niceness(waiting.pid) == 0
        await sandbox.discard()


async def test_the_newest_ready_sandbox_is_handed_out_first_and_the_oldest_kept_for_bursts(
    gateway: Gateway,
) -> None:
    async with running_pool(deno_of(gateway), min=2, max=2, max_starting=1) as pool:
        await wait_until(lambda: pool.idle == 2)
        oldest, newest = (entry.sandbox for entry in pool._ready)
        first = await pool.prepare(128)
        assert first is newest
        second = await pool.prepare(128)
        assert second is oldest
        for sandbox in (first, second):
            await sandbox.discard()


async def test_the_idle_memory_ceiling_holds_even_below_min(gateway: Gateway) -> None:
    async with running_pool(deno_of(gateway), min=3, max=3, max_starting=3, max_idle_memory_mb=1) as pool:
        await wait_until(lambda: pool.idle >= 1 and pool.starting == 0)
        await anyio.sleep(0.3)
        # With no estimate yet, up to max_starting may start at once; once one has been measured
        # (a Deno sandbox holds far more than 1 MiB) no more start.
        held = pool.idle_memory_bytes
        assert held > 1 << 20
        idle = pool.idle
        sandbox = await pool.prepare(128)
        await sandbox.discard()
        await anyio.sleep(0.5)
        assert pool.idle == idle - 1  # nothing replaced it: the ceiling is already exceeded
        assert pool.full


async def test_a_lower_memory_limit_gets_a_sandbox_of_its_own(gateway: Gateway) -> None:
    async with running_pool(deno_of(gateway), min=1, max=1, max_starting=1) as pool:
        await wait_until(lambda: pool.idle == 1)
        sandbox = await pool.prepare(64)
        assert pool.cold_starts == 1 and pool.idle == 1
        await sandbox.discard()


async def test_a_pool_that_cannot_start_sandboxes_reports_why_and_does_not_spin(
    gateway: Gateway, tmp_path: Path
) -> None:
    broken = DenoLauncher(deno_path=str(tmp_path / "no-deno"), bridge=deno_of(gateway).bridge, work_dir=tmp_path)
    async with running_pool(broken, min=2, max=2, max_starting=2) as pool:
        await anyio.sleep(0.5)
        assert pool.failures <= 4  # one attempt per slot, then a pause before retrying
        assert pool.status().problem is not None
        with pytest.raises(Exception, match="cannot start"):
            await pool.prepare(128)


# -- the Pyodide snapshot -------------------------------------------------------------------------------


@pytest.fixture
def place(gateway: Gateway) -> Iterator[Path]:
    """A directory sandboxes can reach (inside the gateway's work directory, which is 0711)."""
    path = Path(tempfile.mkdtemp(dir=deno_of(gateway).work_dir))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pyodide_copy(place: Path) -> Path:
    """A private copy of Pyodide's files, so snapshots made here do not touch the shared one."""
    target = place / "pyodide"
    shutil.copytree(default_pyodide_dir(), target, ignore=shutil.ignore_patterns(".conduit-snapshots"))
    return target


async def run_python(gateway: Gateway, pyodide_dir: Path, snapshot: PyodideSnapshot) -> str:
    runtime = PyodideLauncher(deno=deno_of(gateway), pyodide_dir=pyodide_dir, snapshot=snapshot)
    sandbox = await runtime.prepare(128)
    outcome = await sandbox.run(Job("import sys\nsys.version.split()[0]", generate_python_sdk([]), "t", LIMITS))
    assert outcome.error is None, outcome
    return str(outcome.result)


async def test_python_sandboxes_boot_from_a_snapshot_kept_beside_pyodide(
    gateway: Gateway, pyodide_copy: Path, place: Path
) -> None:
    snapshot = PyodideSnapshot.for_runtime(deno_of(gateway), pyodide_copy, place / "work")
    assert (await run_python(gateway, pyodide_copy, snapshot)).startswith("3.")
    path = snapshot.ready
    assert path is not None and path.parent == pyodide_copy / ".conduit-snapshots"
    assert path.stat().st_size > 1 << 20 and path.stat().st_mode & 0o777 == 0o644
    made = path.stat().st_mtime_ns
    again = PyodideSnapshot.for_runtime(deno_of(gateway), pyodide_copy, place / "work")
    assert await again.path() == path and path.stat().st_mtime_ns == made  # found, not made again


async def test_a_damaged_snapshot_is_made_again(gateway: Gateway, pyodide_copy: Path, place: Path) -> None:
    first = PyodideSnapshot.for_runtime(deno_of(gateway), pyodide_copy, place / "work")
    path = await first.path()
    assert path is not None
    with path.open("r+b") as handle:  # flip bytes in the middle: the size is right, the content is not
        handle.seek(path.stat().st_size // 2)
        handle.write(b"\xff" * 64)
    second = PyodideSnapshot.for_runtime(deno_of(gateway), pyodide_copy, place / "work")
    assert (await run_python(gateway, pyodide_copy, second)).startswith("3.")
    assert second.ready == path and second.failed is None


async def test_a_snapshot_goes_to_the_work_directory_when_pyodide_is_not_writable(
    gateway: Gateway, pyodide_copy: Path, place: Path
) -> None:
    (pyodide_copy / ".conduit-snapshots").write_text("not a directory")
    snapshot = PyodideSnapshot.for_runtime(deno_of(gateway), pyodide_copy, place / "work")
    assert (await run_python(gateway, pyodide_copy, snapshot)).startswith("3.")
    assert snapshot.ready is not None and snapshot.ready.parent == place / "work" / "pyodide-snapshots"
