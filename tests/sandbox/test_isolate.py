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
from conduit.sandbox.isolate import IsolateRuntime, IsolateSandbox
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
    source = (Path(__file__).parents[2] / "src/conduit/sandbox/isolate_worker.py").read_text()
    assert "from conduit" not in source and "import conduit" not in source
