"""A burst of 50 concurrent executions with the default pool sizes: all complete, none is
dropped, and the pools are full again within seconds."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator

import anyio
import pytest

from conduit.assembly import open_gateway
from conduit.config.schema import Config
from conduit.core.gateway import Gateway
from conduit.sandbox.host.pool import PooledRuntime
from conduit.sandbox.isolate.runtime import IsolateRuntime
from support import MASTER, TOOLBOX, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.deno]

PROGRAMS = {
    "typescript": "return (await tools.toolbox.add({a: {i}, b: 1})).structuredContent.sum;",
    "isolate": "return (await tools.toolbox.add({a: {i}, b: 1})).structuredContent.sum;",
    "python": "(await tools.toolbox.add(a={i}, b=1))['structuredContent']['sum']",
}
MIX = ["typescript"] * 30 + ["isolate"] * 12 + ["python"] * 8


@pytest.fixture
async def default_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    config = Config.model_validate({"upstreams": [{"id": "toolbox", "command": sys.executable, "args": [TOOLBOX]}]})
    base = tmp_path_factory.mktemp("burst")
    async with open_gateway(config, master_token=MASTER, base_dir=base, host_env=dict(os.environ)) as gw:
        yield gw


def pools_full(gateway: Gateway) -> bool:
    for runtime in gateway.runtimes.values():
        if isinstance(runtime, PooledRuntime) and runtime.idle < runtime.sizing.min:
            return False
        if isinstance(runtime, IsolateRuntime) and runtime.idle < runtime.sizing.min:
            return False
    return True


async def test_a_burst_of_50_executions_all_complete_and_the_pools_refill(default_gateway: Gateway) -> None:
    gateway = default_gateway
    await wait_until(lambda: pools_full(gateway))
    results: dict[int, object] = {}
    most_waiting = 0

    async def one(index: int, language: str) -> None:
        outcome = await gateway.execute(language, PROGRAMS[language].replace("{i}", str(index)))
        assert outcome.error is None, (language, outcome)
        results[index] = outcome.result

    async def watch_queue() -> None:
        nonlocal most_waiting
        while True:
            most_waiting = max(most_waiting, gateway.admission.waiting)
            await anyio.sleep(0.01)

    started = time.perf_counter()
    with anyio.fail_after(120):
        async with anyio.create_task_group() as watcher:
            watcher.start_soon(watch_queue)
            async with anyio.create_task_group() as burst:
                for index, language in enumerate(MIX):
                    burst.start_soon(one, index, language)
            watcher.cancel_scope.cancel()
    burst_seconds = time.perf_counter() - started
    assert results == {index: index + 1 for index in range(50)}  # every one ran, with its own answer
    assert most_waiting > 0  # more than maxConcurrent (10) arrived at once: the rest queued, none refused
    assert gateway.admission.waiting == 0 and gateway.admission.running == 0

    after = time.perf_counter()
    await wait_until(lambda: pools_full(gateway))  # within 15 s, or it fails
    refill_seconds = time.perf_counter() - after
    print(f"burst of 50: {burst_seconds:.1f} s; pools full again {refill_seconds:.2f} s after")
