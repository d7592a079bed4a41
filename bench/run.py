"""Latency benchmark: Conduit's runtimes beside the bare floors they are built on, measured in one run.

Usage: ``make bench`` (or ``.venv/bin/python bench/run.py [--runs N]``). Prints a latency table
(median, p95 and max per scenario, and the ratio of each median to its floor: a bare
``deno run`` of a trivial program for TypeScript, a cold Pyodide load for Python, a bare
mini-racer context for isolates), then throughput at 1, 4 and 8 executions in flight beside
what the machine can spawn (bare ``deno run`` with two workers), then RSS of Conduit's own process
and of its whole process tree, idle and at peak under load. Latency runs are timed with a warm
sandbox available (the time pools spend refilling between runs is not counted; the cold floor
shows what it costs).
"""

from __future__ import annotations

import argparse
import json
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
from conduit.core.assembly import open_gateway
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


MINI_RACER_FLOOR = """
import json, sys, time
from py_mini_racer import MiniRacer
MiniRacer().eval("1")
samples = []
for _ in range(int(sys.argv[1])):
    started = time.perf_counter()
    racer = MiniRacer()
    racer.eval("1 + 1")
    racer.close()
    samples.append((time.perf_counter() - started) * 1000)
print(json.dumps(samples))
"""


def bare_mini_racer(runs: int) -> list[float]:
    """A fresh mini-racer context evaluating ``1 + 1``, in a child process: V8 loaded into the bench's own
    process would be counted as Conduit's memory."""
    done = subprocess.run(
        [sys.executable, "-c", MINI_RACER_FLOOR, str(runs)], capture_output=True, text=True, check=True
    )
    return [float(sample) for sample in json.loads(done.stdout)]


async def direct_mcp_call(runs: int) -> list[float]:
    """One ``tools/call`` straight to the toolbox upstream with the official MCP client, over stdio: the
    floor a tool call through Conduit is compared with."""
    from mcp import Client, StdioServerParameters

    server = StdioServerParameters(command=sys.executable, args=[str(TOOLBOX)], env=dict(os.environ))
    async with Client(server, mode="auto") as client:
        samples = []
        for index in range(runs + 1):
            started = time.perf_counter()
            await client.call_tool("add", {"a": 1, "b": 2})
            if index:
                samples.append((time.perf_counter() - started) * 1000)
    return samples


async def wait_for_pools(gateway: Gateway) -> None:
    """Time warm runs on a quiet machine: wait until every pool is full again (refills are not timed)."""
    pools = [pool for pool in gateway.runtimes.values() if isinstance(pool, PooledRuntime)]
    with anyio.fail_after(120):
        while True:
            if all(pool.full for pool in pools):
                return
            await anyio.sleep(0.05)


def bare_deno_rate(seconds: float = 3.0, workers: int = 2) -> float:
    """What the machine can spawn: bare ``deno run`` processes per second with ``workers`` at a time."""
    import concurrent.futures

    deno = find_deno(None)
    with tempfile.TemporaryDirectory() as home:
        env = {"DENO_DIR": home, "HOME": home, "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"}
        argv = [deno, *RUN_FLAGS, "-"]
        deadline = time.perf_counter() + seconds

        def loop() -> int:
            done = 0
            while time.perf_counter() < deadline:
                subprocess.run(argv, input=b"const x = 1 + 1;", env=env, check=True, capture_output=True)
                done += 1
            return done

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            total = sum(pool.map(lambda _: loop(), range(workers)))
        return total / (time.perf_counter() - started)


def tree_rss_mb(root: int) -> tuple[float, float]:
    """RSS of process ``root`` alone and of its whole process tree, in MiB."""

    def rss(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += rss(pid)
        stack.extend(children.get(pid, []))
    return rss(root), total


async def throughput(gateway: Gateway, language: str, in_flight: int, count: int) -> tuple[float, float]:
    """Executions per second with ``in_flight`` at a time, sustained (after ``2 * in_flight`` untimed
    executions have grown the pools to the demand), and the peak process-tree RSS meanwhile."""
    code = "1 + 1" if language == "python" else "return 1 + 1;"
    async with anyio.create_task_group() as ramp:
        for _ in range(2 * in_flight):
            ramp.start_soon(gateway.execute, language, code)
    await wait_for_pools(gateway)
    remaining = count
    peak = 0.0

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            outcome = await gateway.execute(language, code)
            if outcome.error is not None:
                raise RuntimeError(f"{language}: {outcome.error}")

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, tree_rss_mb(os.getpid())[1])
            await anyio.sleep(0.1)

    started = time.perf_counter()
    async with anyio.create_task_group() as sampler:
        sampler.start_soon(sample)
        async with anyio.create_task_group() as workers:
            for _ in range(in_flight):
                workers.start_soon(worker)
        sampler.cancel_scope.cancel()
    return count / (time.perf_counter() - started), peak


async def burst(gateway: Gateway, languages: tuple[str, ...], size: int = 50) -> tuple[float, float]:
    """``size`` trivial executions at once, spread over ``languages``: seconds until all are done, then
    seconds until every pool is full again."""
    await wait_for_pools(gateway)
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(size):
            language = languages[index % len(languages)]
            tg.start_soon(gateway.execute, language, "1 + 1" if language == "python" else "return 1 + 1;")
    done = time.perf_counter()
    await wait_for_pools(gateway)
    return done - started, time.perf_counter() - done


async def main(runs: int, languages: tuple[str, ...]) -> None:
    config = Config.model_validate(
        {"upstreams": [{"id": "toolbox", "command": sys.executable, "args": [str(TOOLBOX)]}]}
    )
    py_runs = max(5, runs // 5)
    floor_makers = {
        "typescript": ("bare deno run", lambda: bare_deno(runs)),
        "python": ("cold Pyodide load in Deno", lambda: cold_pyodide(max(3, py_runs // 2))),
        "isolate": ("bare mini-racer context", lambda: bare_mini_racer(runs)),
    }
    floors = {language: (name, make()) for language, (name, make) in floor_makers.items() if language in languages}
    rows: list[tuple[str, list[float], str | None]] = []
    call_floor = await direct_mcp_call(runs)
    token = "bench-token-0123456789"
    async with open_gateway(config, master_token=token, base_dir=ROOT, host_env=dict(os.environ)) as gw:
        for language in languages:
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
        await wait_for_pools(gw)
        await anyio.sleep(1)
        own_idle, tree_idle = tree_rss_mb(os.getpid())
        pooled = {name: runtime.status().pooled_memory_bytes / 2**20 for name, runtime in gw.runtimes.items()}
        rates: dict[str, list[float]] = {}
        peak_rss = 0.0
        counts = {"typescript": 60, "python": 24, "isolate": 200}
        for language in languages:
            for in_flight in (1, 4, 8):
                rate, peak = await throughput(gw, language, in_flight, counts[language])
                rates.setdefault(language, []).append(rate)
                peak_rss = max(peak_rss, peak)
        burst_seconds, refill_seconds = await burst(gw, languages)
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
    medians = {name: statistics.median(samples) for name, samples, _ in rows}
    floor_call = statistics.median(call_floor)
    print(f"\n# Tool calls: what one call adds, beside a direct MCP call to the same upstream ({floor_call:.2f} ms)\n")
    print(f"| {'runtime':<38} | {'1 call - trivial':>16} | {'10 sequential / 10':>18} | {'minus direct':>12} |")
    print(f"|{'-' * 40}|{'-' * 17}:|{'-' * 19}:|{'-' * 13}:|")
    for language in languages:
        trivial = medians[f"{language}: trivial"]
        one = medians[f"{language}: 1 tool call"] - trivial
        each = (medians[f"{language}: 10 sequential calls"] - trivial) / 10
        print(f"| {language:<38} | {one:>16.2f} | {each:>18.2f} | {each - floor_call:>12.2f} |")
    spawn_rate = bare_deno_rate()
    print("\n# Throughput, executions per second (trivial program; sustained, after a ramp of 2x in-flight runs)\n")
    print(f"| {'runtime':<38} | {'1 in flight':>11} | {'4 in flight':>11} | {'8 in flight':>11} |")
    print(f"|{'-' * 40}|{'-' * 12}:|{'-' * 12}:|{'-' * 12}:|")
    for language, values in rates.items():
        print(f"| {language:<38} | " + " | ".join(f"{value:>11.1f}" for value in values) + " |")
    name = "bare deno run, 2 workers (floor)"
    print(f"| {name:<38} | {'':>11} | {'':>11} | {spawn_rate:>11.1f} |")
    if "typescript" in rates:
        share = rates["typescript"][2] / spawn_rate * 100
        print(f"\nTypeScript at 8 in flight: {share:.0f} % of what the machine can spawn.")
    print(
        f"\nA burst of 50 executions at once ({', '.join(languages)} in turn; at most 10 run, the rest queue): "
        f"all done in {burst_seconds:.1f} s; every pool full again {refill_seconds:.1f} s later."
    )
    print(
        f"\n# Memory (RSS)\n\nConduit's own process, idle: {own_idle:.0f} MiB; whole process tree (pools, isolate "
        f"workers, upstreams) idle: {tree_idle:.0f} MiB; peak under load: {peak_rss:.0f} MiB.\n"
        "Held by idle pooled sandboxes (private resident memory): "
        + ", ".join(f"{name} {held:.0f} MiB" for name, held in pooled.items())
        + "."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50, help="measured runs per scenario (default 50)")
    parser.add_argument(
        "--runtimes", default="typescript,python,isolate", help="comma-separated runtimes to measure (default: all)"
    )
    args = parser.parse_args()
    anyio.run(main, args.runs, tuple(name for name in args.runtimes.split(",") if name))
