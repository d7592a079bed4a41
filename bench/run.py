"""Latency benchmark: Conduit's runtimes beside the bare floors they are built on, measured in one run.

Usage: ``make bench`` (or ``.venv/bin/python bench/run.py [--runs N]``). Prints one table:
median, p95 and max per scenario, and the ratio of each median to its floor: a bare
``deno run`` of a trivial program for TypeScript, a cold Pyodide load for Python, a bare
mini-racer context for isolates. Runs are timed with a warm sandbox available (the time pools
spend refilling between runs is not counted; the cold floor shows what it costs).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from conduit.config.schema import Config
from conduit.core.gateway import Gateway
from conduit.sandbox.deno import RUN_FLAGS, find_deno
from conduit.sandbox.pool import PooledRuntime
from conduit.sandbox.pyodide import default_pyodide_dir

ROOT = Path(__file__).resolve().parents[1]
TOOLBOX = ROOT / "tests" / "servers" / "toolbox.py"

PY_PROGRAMS = {
    "trivial": "1 + 1",
    "1 tool call": "(await tools.toolbox.add(a=1, b=2))['structuredContent']['sum']",
    "10 sequential calls": "sum([(await tools.toolbox.add(a=i, b=1))['structuredContent']['sum'] for i in range(10)])",
    "10 parallel calls": "import asyncio\nlen(await asyncio.gather(*(tools.toolbox.add(a=i, b=1) for i in range(10))))",
}

PROGRAMS = {
    "trivial": "return 1 + 1;",
    "1 tool call": "return (await tools.toolbox.add({a: 1, b: 2})).structuredContent.sum;",
    "10 sequential calls": "let s = 0; for (let i = 0; i < 10; i++) "
    "s += (await tools.toolbox.add({a: i, b: 1})).structuredContent.sum; return s;",
    "10 parallel calls": "const r = await Promise.all(Array.from({length: 10}, (_, i) => "
    "tools.toolbox.add({a: i, b: 1}))); return r.length;",
}


def summarize(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95, ordered[-1]


async def measure(runs: int, action: Callable[[], Awaitable[float]]) -> list[float]:
    """``runs`` samples of ``action``, which returns the milliseconds it measured itself."""
    await action()  # warm-up
    return [await action() for _ in range(runs)]


def bare_deno(runs: int) -> list[float]:
    deno = find_deno(None)
    with tempfile.TemporaryDirectory() as home:
        env = {"DENO_DIR": home, "HOME": home, "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"}
        argv = [deno, *RUN_FLAGS, "-"]
        samples = []
        for index in range(runs + 1):
            started = time.perf_counter()
            subprocess.run(argv, input=b"const x = 1 + 1;", env=env, check=True, capture_output=True)
            if index:
                samples.append((time.perf_counter() - started) * 1000)
    return samples


def cold_pyodide(runs: int) -> list[float]:
    """A fresh Deno process that loads Pyodide and runs ``1 + 1``: what every Python run would cost unpooled."""
    deno = find_deno(None)
    pyodide_dir = default_pyodide_dir()
    script = (
        f'const {{ loadPyodide }} = await import("file://{pyodide_dir}/pyodide.mjs");\n'
        f'const py = await loadPyodide({{ indexURL: "{pyodide_dir}/" }});\n'
        'py.runPython("1 + 1");\n'
    )
    with tempfile.TemporaryDirectory() as home:
        env = {"DENO_DIR": home, "HOME": home, "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"}
        argv = [deno, *RUN_FLAGS, f"--allow-read={pyodide_dir}", "-"]
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(argv, input=script.encode(), env=env, check=True, capture_output=True)
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def bare_mini_racer(runs: int) -> list[float]:
    from py_mini_racer import MiniRacer

    MiniRacer().eval("1")
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        racer = MiniRacer()
        racer.eval("1 + 1")
        racer.close()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def wait_for_pools(gateway: Gateway) -> None:
    """Time warm runs on a quiet machine: wait until every pool is full again (refills are not timed)."""
    pools = [pool for pool in gateway.runtimes.values() if isinstance(pool, PooledRuntime)]
    with anyio.fail_after(120):
        while True:
            if all(pool.ready >= pool.warm for pool in pools):
                return
            await anyio.sleep(0.05)


async def main(runs: int) -> None:
    config = Config.model_validate(
        {"upstreams": [{"id": "toolbox", "command": sys.executable, "args": [str(TOOLBOX)]}]}
    )
    py_runs = max(5, runs // 5)
    floors = {
        "typescript": ("bare deno run", bare_deno(runs)),
        "python": ("cold Pyodide load in Deno", cold_pyodide(max(3, py_runs // 2))),
        "isolate": ("bare mini-racer context", bare_mini_racer(runs)),
    }
    rows: list[tuple[str, list[float], str | None]] = []
    token = "bench-token-0123456789"
    async with Gateway.open(config, master_token=token, base_dir=ROOT, host_env=dict(os.environ)) as gw:
        for language in ("typescript", "python", "isolate"):
            floor_name, floor_samples = floors[language]
            rows.append((f"{floor_name} (floor)", floor_samples, None))
            programs = PY_PROGRAMS if language == "python" else PROGRAMS
            for name, code in programs.items():

                async def run(code: str = code, language: str = language, name: str = name) -> object:
                    await wait_for_pools(gw)
                    started = time.perf_counter()
                    outcome = await gw.execute(language, code)
                    if outcome.error is not None:
                        raise RuntimeError(f"{language} {name}: {outcome.error}")
                    return (time.perf_counter() - started) * 1000

                count = py_runs if language == "python" else runs
                rows.append((f"{language}: {name}", await measure(count, run), floor_name))
    floor_medians = {f"{name} (floor)": statistics.median(samples) for name, samples in floors.values()}
    print(
        f"# Conduit latency, {runs} runs per scenario ({py_runs} for Python; {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()})\n"
    )
    print(f"| {'scenario':<38} | {'median ms':>9} | {'p95 ms':>8} | {'max ms':>8} | {'x floor':>7} |")
    print(f"|{'-' * 40}|{'-' * 10}:|{'-' * 9}:|{'-' * 9}:|{'-' * 8}:|")
    for name, samples, floor in rows:
        median, p95, worst = summarize(samples)
        ratio = f"{median / floor_medians[f'{floor} (floor)']:.2f}" if floor else "1.00"
        print(f"| {name:<38} | {median:>9.2f} | {p95:>8.2f} | {worst:>8.2f} | {ratio:>7} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50, help="measured runs per scenario (default 50)")
    anyio.run(main, parser.parse_args().runs)
