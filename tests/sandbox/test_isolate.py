"""The isolate runtime's supervision: workers are reused when clean, replaced when not."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from conduit.config.schema import Limits
from conduit.core.gateway import Gateway
from conduit.errors import INTERNAL_ERROR, TIMEOUT
from conduit.sandbox.base import Job
from conduit.sandbox.host import pool as pool_module
from conduit.sandbox.host.pool import PoolSizing
from conduit.sandbox.isolate import runtime as isolate_module
from conduit.sandbox.isolate.runtime import IsolateRuntime, IsolateSandbox
from conduit.sdk.typescript import generate_javascript_sdk
from support import process_alive, wait_until

pytestmark = pytest.mark.anyio

LIMITS = Limits(timeout_ms=5000, memory_limit_mb=64, max_output_bytes=100_000, max_log_entries=1000)
SHORT = Limits(timeout_ms=500, memory_limit_mb=64, max_output_bytes=1000, max_log_entries=10)
SDK = generate_javascript_sdk([])


def runtime_of(gateway: Gateway) -> IsolateRuntime:
    runtime = gateway.runtimes["isolate"]
    assert isinstance(runtime, IsolateRuntime)
    return runtime


async def prepare(gateway: Gateway) -> IsolateSandbox:
    return await runtime_of(gateway).prepare(LIMITS.memory_limit_mb)


async def test_a_clean_run_returns_the_worker_with_a_fresh_context_next_time(gateway: Gateway) -> None:
    first = await prepare(gateway)
    outcome = await first.run(Job("globalThis.kept = 1; return 'one';", SDK, "t", LIMITS))
    assert outcome.result == "one"
    second = await prepare(gateway)
    assert second.pid == first.pid
    outcome = await second.run(Job("return typeof kept;", SDK, "t", LIMITS))
    assert outcome.result == "undefined"


async def test_a_worker_killed_mid_run_is_reported_and_replaced(gateway: Gateway) -> None:
    sandbox = await prepare(gateway)
    outcomes = []

    async def run() -> None:
        outcomes.append(await sandbox.run(Job("await new Promise((r) => setTimeout(r, 5000));", SDK, "t", LIMITS)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.sleep(0.3)
        os.kill(sandbox.pid, signal.SIGKILL)
    assert outcomes[0].error is not None and outcomes[0].error.code == INTERNAL_ERROR
    outcome = await gateway.execute("isolate", "return 'after the crash';")
    assert outcome.result == "after the crash"


async def test_a_worker_that_misses_its_deadline_is_killed(gateway: Gateway) -> None:
    sandbox = await prepare(gateway)
    outcome = await sandbox.run(
        Job(
            "await null; while (true) {}",
            SDK,
            "t",
            SHORT,
        )
    )
    assert outcome.error is not None and outcome.error.code == TIMEOUT
    await wait_until(lambda: not process_alive(sandbox.pid))


async def test_workers_get_an_empty_environment(gateway: Gateway) -> None:
    sandbox = await prepare(gateway)
    try:
        environ = await anyio.Path(f"/proc/{sandbox.pid}/environ").read_bytes()
        names = sorted(entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry)
        assert names == ["LANG"]
    finally:
        await sandbox.discard()


async def test_a_warm_worker_is_kept_ready(gateway: Gateway) -> None:
    runtime = runtime_of(gateway)
    await gateway.execute("isolate", "return 1;")
    await wait_until(lambda: runtime.idle >= 1)


def test_worker_module_has_no_conduit_server_imports() -> None:
    source = (Path(__file__).parents[2] / "src/conduit/sandbox/isolate/isolate_worker.py").read_text()
    assert "from conduit" not in source and "import conduit" not in source


def small_runtime(gateway: Gateway) -> IsolateRuntime:
    """An isolate runtime of one to three workers on the gateway's bridge."""
    address = gateway.bridge.address
    assert address is not None
    sizing = PoolSizing(min=1, max=3, max_idle_memory_mb=4096, max_starting=2)
    return IsolateRuntime(
        bridge=address, work_dir=Path(gateway.runtimes["typescript"].launcher.work_dir), sizing=sizing
    )


async def test_a_burst_grows_the_idle_workers_waits_for_busy_ones_and_shrinks_back(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(pool_module, "SHRINK_AFTER_S", 0.6)  # the sizing rule is the pools' Demand
    monkeypatch.setattr(isolate_module, "CHECK_EVERY_S", 0.1)
    runtime = small_runtime(gateway)
    async with anyio.create_task_group() as tg:
        runtime.start(tg)
        await wait_until(lambda: runtime.idle == 1)

        async def one(index: int) -> None:
            sandbox = await runtime.prepare(64)
            code = f"await new Promise((resolve) => setTimeout(resolve, 30)); return {index};"
            outcome = await sandbox.run(Job(code, SDK, "t", LIMITS))
            assert outcome.result == index, outcome

        async with anyio.create_task_group() as burst:
            for index in range(8):
                burst.start_soon(one, index)
        assert runtime.target == 3  # each request that found none idle raised it, up to max
        assert runtime.cold_starts == 0  # they waited for a released or a started worker instead
        await wait_until(lambda: runtime.idle == 3)
        await wait_until(lambda: runtime.target == 1 and runtime.idle == 1)  # demand gone: back to min
        await runtime.aclose()
        tg.cancel_scope.cancel()


async def test_workers_grown_to_max_serve_steady_traffic_without_starting_more(
    gateway: Gateway, tmp_path: Path
) -> None:
    # max bounds every worker, busy ones included: one started past it would be killed when the next
    # run released a worker, then replaced, a few hundred ms of CPU per run for nothing.
    runtime = small_runtime(gateway)
    async with anyio.create_task_group() as tg:
        runtime.start(tg)

        async def one(pids: set[int]) -> None:
            sandbox = await runtime.prepare(64)
            pids.add(sandbox.pid)
            outcome = await sandbox.run(Job("await new Promise((r) => setTimeout(r, 20)); return 1;", SDK, "t", LIMITS))
            assert outcome.result == 1, outcome

        async with anyio.create_task_group() as burst:
            for _ in range(6):
                burst.start_soon(one, set())
        await wait_until(lambda: runtime.idle == 3)
        grown = {worker.pid for worker in runtime._idle}  # type: ignore[attr-defined]
        steady: set[int] = set()
        deadline = anyio.current_time() + 1.5  # several worker start times
        while anyio.current_time() < deadline:
            await one(steady)
        assert runtime.target == 3 and runtime.idle == 3
        workers = {worker.pid for worker in runtime._idle}  # type: ignore[attr-defined]
        # The same three workers before and after, and only they served: none started, none killed.
        assert steady <= grown and workers == grown, "a worker was started (and one killed) during steady traffic"
        await runtime.aclose()
        tg.cancel_scope.cancel()
