"""What Conduit is compared with, measured in the same run: bare runtimes, bare MCP, the machine itself.

Also the process-tree accounting the bench reports beside them (RSS and CPU time of a process and
everything below it).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import anyio

from conduit.sandbox.deno.runtime import RUN_FLAGS, find_deno
from conduit.sandbox.pyodide.runtime import default_pyodide_dir

ROOT: Final = Path(__file__).resolve().parents[1]
TOOLBOX: Final = ROOT / "tests" / "servers" / "toolbox.py"
CLOCK_TICK: Final = os.sysconf("SC_CLK_TCK")


def _deno_env(home: str) -> dict[str, str]:
    return {"DENO_DIR": home, "HOME": home, "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"}


def bare_deno(runs: int) -> list[float]:
    """``deno run`` of a trivial program from stdin, start to exit."""
    argv = [find_deno(None), *RUN_FLAGS, "-"]
    with tempfile.TemporaryDirectory() as home:
        samples = []
        for index in range(runs + 1):
            started = time.perf_counter()
            subprocess.run(argv, input=b"const x = 1 + 1;", env=_deno_env(home), check=True, capture_output=True)
            if index:
                samples.append((time.perf_counter() - started) * 1000)
    return samples


def bare_deno_rate(seconds: float = 3.0, workers: int = 2) -> float:
    """What the machine can spawn: bare ``deno run`` processes per second with ``workers`` at a time."""
    argv = [find_deno(None), *RUN_FLAGS, "-"]
    with tempfile.TemporaryDirectory() as home:
        deadline = time.perf_counter() + seconds

        def loop() -> int:
            done = 0
            while time.perf_counter() < deadline:
                subprocess.run(argv, input=b"const x = 1 + 1;", env=_deno_env(home), check=True, capture_output=True)
                done += 1
            return done

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            total = sum(pool.map(lambda _: loop(), range(workers)))
        return total / (time.perf_counter() - started)


def cold_pyodide(runs: int) -> list[float]:
    """A fresh Deno process that loads Pyodide and runs ``1 + 1``: what every Python run would cost unpooled."""
    pyodide_dir = default_pyodide_dir()
    script = (
        f'const {{ loadPyodide }} = await import("file://{pyodide_dir}/pyodide.mjs");\n'
        f'const py = await loadPyodide({{ indexURL: "{pyodide_dir}/" }});\n'
        'py.runPython("1 + 1");\n'
    )
    argv = [find_deno(None), *RUN_FLAGS, f"--allow-read={pyodide_dir}", "-"]
    with tempfile.TemporaryDirectory() as home:
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(argv, input=script.encode(), env=_deno_env(home), check=True, capture_output=True)
            samples.append((time.perf_counter() - started) * 1000)
    return samples


MINI_RACER_FLOOR: Final = """
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


async def direct_mcp(runs: int, gap_s: float) -> tuple[list[float], list[float], list[float]]:
    """Straight to the toolbox upstream with the official MCP client over stdio: ``tools/call`` (modern
    protocol, as a client talks to Conduit) back to back and ``gap_s`` apart, and ``ping`` (a
    handshake-era session: the modern protocol has no ping). The floors a call through Conduit is
    compared with; the spaced one shows what waking idle processes costs on this machine."""
    from mcp import Client, StdioServerParameters

    server = StdioServerParameters(command=sys.executable, args=[str(TOOLBOX)], env=dict(os.environ))
    calls, spaced, pings = [], [], []
    async with Client(server, mode="auto") as client:
        for index in range(runs + 3):
            started = time.perf_counter()
            await client.call_tool("add", {"a": 1, "b": 2})
            if index >= 3:
                calls.append((time.perf_counter() - started) * 1000)
        for _ in range(runs):
            await anyio.sleep(gap_s)
            started = time.perf_counter()
            await client.call_tool("add", {"a": 1, "b": 2})
            spaced.append((time.perf_counter() - started) * 1000)
    async with Client(server, mode="legacy") as client:
        for index in range(runs + 3):
            started = time.perf_counter()
            await client.send_ping()
            if index >= 3:
                pings.append((time.perf_counter() - started) * 1000)
    return calls, spaced, pings


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    return children


def tree_pids(root: int) -> list[int]:
    children, pids, stack = _children(), [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(children.get(pid, []))
    return pids


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

    return rss(root), sum(rss(pid) for pid in tree_pids(root))


def tree_cpu_ms(root: int) -> float:
    """CPU time (user + system) of process ``root`` and every process below it, live or reaped, in ms.

    A reaped child's time is in its parent's ``cutime``/``cstime``; a live one is counted itself, so
    sandboxes that ran and were reaped between two readings are counted in the difference.
    """
    total = 0
    for pid in tree_pids(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total * 1000 / CLOCK_TICK
