"""Conduit in the bench's own process: the gateway called directly, with the pools full before each run.

What a sandbox costs without any transport, to set beside what a client sees through MCP (:mod:`served`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Final

import anyio
from floors import ROOT, TOOLBOX, tree_rss_mb
from served import ENGINES, PYTHON_FAMILY

from conduit.assembly import open_gateway
from conduit.config.schema import Config
from conduit.core.gateway import Gateway
from conduit.sandbox.host.pool import PooledRuntime

PROGRAMS: Final = {
    "trivial": {"typescript": "return 1 + 1;", "isolate": "return 1 + 1;", "python": "1 + 1"},
    "1 tool call": {
        "typescript": "return (await tools.toolbox.add({a: 1, b: 2})).structuredContent.sum;",
        "isolate": "return (await tools.toolbox.add({a: 1, b: 2})).structuredContent.sum;",
        "python": "(await tools.toolbox.add(a=1, b=2))['structuredContent']['sum']",
    },
}
for _programs in PROGRAMS.values():
    _programs.update(dict.fromkeys(ENGINES, _programs["python"]))


async def wait_for_pools(gateway: Gateway) -> None:
    """Until every pool is full again (refills are not timed)."""
    pools = [pool for pool in gateway.runtimes.values() if isinstance(pool, PooledRuntime)]
    with anyio.fail_after(120):
        while True:
            if all(pool.full for pool in pools):
                return
            await anyio.sleep(0.05)


async def measure(runtimes: tuple[str, ...], runs: int) -> tuple[dict[str, list[float]], dict[str, float], float]:
    """Latency per ``runtime: program`` with the pools full; memory held by idle pooled sandboxes (MiB);
    the bench process's own RSS with the gateway idle (MiB)."""
    config = Config.model_validate(
        {"upstreams": [{"id": "toolbox", "command": sys.executable, "args": [str(TOOLBOX)]}]}
    )
    latencies: dict[str, list[float]] = {}
    async with open_gateway(
        config, master_token="bench-token-0123456789", base_dir=ROOT, host_env=dict(os.environ)
    ) as gw:
        for runtime in runtimes:
            count = max(5, runs // 5) if runtime == "pyodide" else runs
            language = "python" if runtime in PYTHON_FAMILY else runtime
            engine = ENGINES.get(runtime) if language == "python" else None
            for name, programs in PROGRAMS.items():
                samples = []
                for index in range(count + 1):
                    await wait_for_pools(gw)
                    started = time.perf_counter()
                    outcome = await gw.execute(language, programs[runtime], engine=engine)
                    if outcome.error is not None:
                        raise RuntimeError(f"{runtime} {name}: {outcome.error}")
                    if index:
                        samples.append((time.perf_counter() - started) * 1000)
                latencies[f"{runtime}: {name}"] = samples
        await wait_for_pools(gw)
        await anyio.sleep(1)
        pooled = {name: runtime.status().pooled_memory_bytes / 2**20 for name, runtime in gw.runtimes.items()}
        own = tree_rss_mb(os.getpid())[0]
    return latencies, pooled, own
