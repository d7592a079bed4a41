"""Conduit as a user gets it: a separate ``conduit serve`` process driven through the official MCP client.

Over stdio or Streamable HTTP: latency with the pools full (requests spaced) and back to back (the next
request sent as soon as the answer arrives), throughput at 1, 4 and 8 in flight, an open-loop mixed load
at a fixed arrival rate, CPU time per execution of the whole process tree, and its RSS.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import httpx2
import yaml
from floors import TOOLBOX, _children, tree_cpu_ms
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

CONDUIT: Final = str(Path(sys.executable).parent / "conduit")
TOKEN: Final = "bench-token-0123456789abcdef"
TOOLS: Final = {
    "typescript": "conduit__mcp_execute_typescript",
    "python": "conduit__mcp_execute_python",
    "monty": "conduit__mcp_execute_python",
    "pyodide": "conduit__mcp_execute_python",
    "isolate": "conduit__mcp_execute_isolate",
}
ENGINES: Final = {"monty": "monty", "pyodide": "pyodide"}
"""Bench runtimes that are one Python engine asked for by name; ``python`` is ``engine: auto``."""
PYTHON_FAMILY: Final = ("python", "monty", "pyodide")
TRIVIAL: Final = {"typescript": "return 1 + 1;", "isolate": "return 1 + 1;", "python": "1 + 1"}
ONE_CALL: Final = {
    "typescript": "return (await tools.toolbox.add({a: 1, b: 2})).structuredContent.sum;",
    "isolate": "return (await tools.toolbox.add({a: 1, b: 2})).structuredContent.sum;",
    "python": "(await tools.toolbox.add(a=1, b=2))['structuredContent']['sum']",
}
_TEN_JS: Final = (
    "let s = 0;\nfor (let i = 0; i < 10; i++)\n"
    "  s += (await tools.toolbox.add({a: i, b: 1})).structuredContent.sum;\nreturn s;"
)
TEN_CALLS: Final = {
    "typescript": _TEN_JS,
    "isolate": _TEN_JS,
    "python": "sum([(await tools.toolbox.add(a=i, b=1))['structuredContent']['sum'] for i in range(10)])",
}
for _programs in (TRIVIAL, ONE_CALL, TEN_CALLS):
    _programs.update(dict.fromkeys(ENGINES, _programs["python"]))
ORCHESTRATION: Final = dict.fromkeys(
    PYTHON_FAMILY,
    "rows = []\nfor a, b in [(1, 2), (3, 4), (5, 6)]:\n"
    "    r = await tools.toolbox.add(a=a, b=b)\n"
    "    rows.append({'pair': [a, b], 'sum': r['structuredContent']['sum']})\n"
    "label = f\"{len(rows)} sums\"\nsum(row['sum'] for row in rows)",
)
"""The issue-15 program: a loop of three tool calls, dicts and an f-string."""
EXPECTED: Final = {"trivial": 2, "one": 3, "ten": 55, "orchestration": 21}
QUIET_CPU_MS_PER_S: Final = 50.0
"""A server tree using less than 5 % of a core has finished starting."""
SETTLE_TIMEOUT_S: Final = 120.0


@dataclass
class Served:
    """A running Conduit server and an MCP client connected to it."""

    client: Client
    pid: int


def config_file(directory: Path, stateless: bool = False, extra: Mapping[str, Any] | None = None) -> Path:
    path = directory / "bench.yaml"
    document = {
        "upstreams": [{"id": "toolbox", "command": sys.executable, "args": [str(TOOLBOX)]}],
        "opsPort": 0,
        "rateLimit": "",
        "http": {"stateless": stateless},
        **(extra or {}),
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _server_pid() -> int:
    for pid in _children().get(os.getpid(), []):
        try:
            if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise RuntimeError("no conduit serve process found")


@asynccontextmanager
async def served(transport: str, mode: str = "auto", extra: Mapping[str, Any] | None = None) -> AsyncIterator[Served]:
    """``conduit serve`` over ``transport`` (``stdio``, ``http``, or ``http-stateless``: without MCP sessions,
    as replicas behind a balancer serve) with the toolbox upstream (and ``extra`` config keys)."""
    with tempfile.TemporaryDirectory() as directory:
        config = config_file(Path(directory), stateless=transport == "http-stateless", extra=extra)
        env = {**os.environ, "IPC_BEARER_TOKEN": TOKEN}
        log = Path(directory) / "conduit.log"
        if transport == "stdio":
            # The server's log (the default level: info) goes to a file, as the HTTP server's does.
            command = f'exec "{CONDUIT}" serve --stdio --config "{config}" 2>>"{log}"'
            server = StdioServerParameters(command="/bin/sh", args=["-c", command], env=env)
            async with Client(server, mode=mode) as client:
                pid = _server_pid()
                await settled(pid)
                yield Served(client, pid)
            return
        with log.open("wb") as sink:
            process = await anyio.open_process(
                [CONDUIT, "serve", "--config", str(config), "--port", "0"], stdout=sink, stderr=sink, env=env
            )
        try:
            url = await _announced(log, "Conduit listening on ")
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=120) as http,
                Client(streamable_http_client(url, http_client=http), mode=mode) as client,
            ):
                await settled(process.pid)
                yield Served(client, process.pid)
        finally:
            process.terminate()
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
            await process.aclose()


async def settled(pid: int, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Wait until the server's process tree is quiet: pools filled, Python's snapshot made. Measuring
    before would time start-up work competing with the requests for the two cores."""
    with anyio.move_on_after(timeout_s):
        previous = tree_cpu_ms(pid)
        while True:
            await anyio.sleep(1.0)
            current = tree_cpu_ms(pid)
            if current - previous < QUIET_CPU_MS_PER_S:
                return
            previous = current
    print(f"bench: the server still busy after {timeout_s:.0f} s; measuring anyway", file=sys.stderr)


async def _announced(log: Path, prefix: str) -> str:
    with anyio.fail_after(60):
        while True:
            for line in (await anyio.Path(log).read_text(errors="replace")).splitlines():
                if line.startswith(prefix):
                    return line.removeprefix(prefix).strip()
            await anyio.sleep(0.05)


async def call(client: Client, name: str, arguments: Mapping[str, Any]) -> Any:
    """One tool call; raises unless it succeeded."""
    result = await client.call_tool(name, dict(arguments))
    if result.is_error:
        raise RuntimeError(f"{name} failed: {result.structured_content or result.content}")
    return result.structured_content


async def execute(client: Client, runtime: str, code: str, expected: int | None = None) -> None:
    arguments = {"code": code, **({"engine": ENGINES[runtime]} if runtime in ENGINES else {})}
    payload = await call(client, TOOLS[runtime], arguments)
    if expected is not None and payload.get("result") != expected:
        raise RuntimeError(f"{runtime}: expected {expected}, got {payload}")


async def interleaved(
    actions: dict[str, Callable[[], Awaitable[Any]]], runs: int, gap_s: float = 0.0
) -> dict[str, list[float]]:
    """``runs`` timed rounds of every action in turn (after two untimed rounds): what is compared is measured
    under the same conditions, whatever the machine does meanwhile."""
    timed: dict[str, list[float]] = {name: [] for name in actions}
    for round_ in range(runs + 2):
        for name, action in actions.items():
            if gap_s:
                await anyio.sleep(gap_s)
            started = time.perf_counter()
            await action()
            if round_ >= 2:
                timed[name].append((time.perf_counter() - started) * 1000)
    return timed


async def samples(action: Callable[[], Awaitable[None]], runs: int, gap_s: float) -> list[float]:
    """``runs`` timed calls of ``action`` (after two untimed ones), ``gap_s`` apart (0: back to back)."""
    for _ in range(2):
        await action()
    timed = []
    for _ in range(runs):
        if gap_s:
            await anyio.sleep(gap_s)
        started = time.perf_counter()
        await action()
        timed.append((time.perf_counter() - started) * 1000)
    return timed


async def throughput(client: Client, runtime: str, in_flight: int, count: int, program: str = "trivial") -> float:
    """Executions of ``program`` ("trivial" or "one": one tool call) per second with ``in_flight``
    outstanding, after a ramp of ``2 * in_flight``."""
    code = (TRIVIAL if program == "trivial" else ONE_CALL)[runtime]
    async with anyio.create_task_group() as ramp:
        for _ in range(2 * in_flight):
            ramp.start_soon(execute, client, runtime, code)
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await execute(client, runtime, code, EXPECTED[program])

    started = time.perf_counter()
    async with anyio.create_task_group() as workers:
        for _ in range(in_flight):
            workers.start_soon(worker)
    return count / (time.perf_counter() - started)


async def cpu_per_execution(server: Served, runtime: str, count: int) -> float:
    """CPU ms of the whole server tree per trivial execution, back to back (pool refills included)."""
    for _ in range(3):
        await execute(server.client, runtime, TRIVIAL[runtime])
    await anyio.sleep(1.5)  # pools refilled: their starts are not part of the next reading
    before = tree_cpu_ms(server.pid)
    for _ in range(count):
        await execute(server.client, runtime, TRIVIAL[runtime])
    await anyio.sleep(1.5)  # the replacements of the sandboxes used are part of their cost
    return (tree_cpu_ms(server.pid) - before) / count


async def open_loop(
    client: Client, mix: Mapping[str, float], rate: float, seconds: float, seed: int = 7
) -> dict[str, list[float]]:
    """Requests arriving at ``rate`` per second for ``seconds`` (Poisson), each a runtime drawn from ``mix``;
    latency of each, by runtime. Arrivals do not wait for answers (an agent fleet does not)."""
    rng = random.Random(seed)
    runtimes, weights = list(mix), list(mix.values())
    latencies: dict[str, list[float]] = {runtime: [] for runtime in runtimes}

    async def one(runtime: str) -> None:
        started = time.perf_counter()
        await execute(client, runtime, ONE_CALL[runtime], EXPECTED["one"])
        latencies[runtime].append((time.perf_counter() - started) * 1000)

    deadline = time.perf_counter() + seconds
    async with anyio.create_task_group() as tg:
        while time.perf_counter() < deadline:
            tg.start_soon(one, rng.choices(runtimes, weights)[0])
            await anyio.sleep(rng.expovariate(rate))
    return latencies
