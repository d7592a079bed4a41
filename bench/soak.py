"""A soak: thousands of mixed executions through MCP stdio, some of them hostile, 8 in flight.

Usage: ``make soak`` (or ``.venv/bin/python bench/soak.py [--count N] [--in-flight K]``).

Every answer is checked against what that execution must return (each program computes from its own
number, so an answer delivered to the wrong request is caught too). Before and after, once the pools
have shrunk back, it reads the server's open file descriptors, the processes in its tree and its RSS.
Exits 1 when an answer was wrong, the server kept descriptors or processes, or its RSS grew by 10 % or more.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import anyio
import served as through
from floors import tree_pids, tree_rss_mb
from mcp import Client
from mcp.shared.exceptions import MCPError
from report import summarize, table

from conduit.errors import MEMORY_LIMIT, OUTPUT_LIMIT, PROGRAM_ERROR, TIMEOUT

RSS_GROWTH_LIMIT: Final = 0.10
SETTLE_TIMEOUT_S: Final = 300.0
BASELINE_QUIET_S: Final = 45.0
"""Pools shrink one step every 5 s, from 30 s after the last request that found one empty: the warm-up's
growth is gone once nothing has changed for this long."""


@dataclass(frozen=True)
class Case:
    """One kind of execution: its runtime, its program for the number ``n``, and what it must answer."""

    name: str
    runtime: str
    weight: float
    program: Callable[[int], str]
    expect: Callable[[int, dict[str, Any]], bool]
    arguments: dict[str, Any] | None = None


def value(expected: Callable[[int], Any]) -> Callable[[int, dict[str, Any]], bool]:
    return lambda n, payload: payload.get("error") is None and payload.get("result") == expected(n)


def failure(code: int, text: str | None = None) -> Callable[[int, dict[str, Any]], bool]:
    def check(n: int, payload: dict[str, Any]) -> bool:
        error = payload.get("error") or {}
        return error.get("code") == code and (text is None or text.format(n=n) in str(error.get("message")))

    return check


_JS_CALL = "return (await tools.toolbox.add({{a: {n}, b: 1}})).structuredContent.sum;"
_JS_BOMB = "const keep = []; for (;;) keep.push(new Array(1 << 20).fill({n}));"
_JS_FLOOD = "for (;;) console.log('{n}'.repeat(500));"
_JS_SCOPE = "return [Object.keys(tools.toolbox).sort(), typeof tools.toolbox.echo, {n}];"

CASES: Final = [
    Case("typescript: tool call", "typescript", 20, lambda n: _JS_CALL.format(n=n), value(lambda n: n + 1)),
    Case("typescript: compute", "typescript", 10, lambda n: f"return {n} * 2;", value(lambda n: 2 * n)),
    Case(
        "typescript: logs",
        "typescript",
        5,
        lambda n: f"console.log('line-{n}'); return {n};",
        lambda n, p: p.get("result") == n and f"line-{n}" in p.get("stdout", ""),
    ),
    Case("isolate: tool call", "isolate", 20, lambda n: _JS_CALL.format(n=n), value(lambda n: n + 1)),
    Case("isolate: compute", "isolate", 15, lambda n: f"return {n} * 2;", value(lambda n: 2 * n)),
    Case(
        "python: tool call",
        "python",
        6,
        lambda n: f"(await tools.toolbox.add(a={n}, b=1))['structuredContent']['sum']",
        value(lambda n: n + 1),
    ),
    Case("python: compute", "python", 5, lambda n: f"{n} * 2", value(lambda n: 2 * n)),
    Case(
        "python: orchestration",
        "python",
        4,
        lambda n: (
            f"rows = []\nfor b in (1, 2, 3):\n    r = await tools.toolbox.add(a={n}, b=b)\n"
            "    rows.append({'b': b, 'sum': r['structuredContent']['sum']})\n"
            "label = f'{len(rows)} rows'\nsum(row['sum'] for row in rows)"
        ),
        value(lambda n: 3 * n + 6),
    ),
    Case(
        "python: full CPython (pyodide)",
        "python",
        1,
        lambda n: f"import statistics\nstatistics.median([{n}, {n}, {n} + 1])",
        value(lambda n: n),
    ),
    # Hostile: each must fail the way its limit or wall says, and leave nothing behind.
    Case(
        "hostile: spin (typescript)",
        "typescript",
        2,
        lambda n: "while (true) {}",
        failure(TIMEOUT),
        {"limits": {"timeoutMs": 300}},
    ),
    Case(
        "hostile: spin (isolate)",
        "isolate",
        2,
        lambda n: "for (;;) {}",
        failure(TIMEOUT),
        {"limits": {"timeoutMs": 300}},
    ),
    Case("hostile: memory (typescript)", "typescript", 2, lambda n: _JS_BOMB.format(n=n), failure(MEMORY_LIMIT)),
    Case("hostile: memory (isolate)", "isolate", 2, lambda n: _JS_BOMB.format(n=n), failure(MEMORY_LIMIT)),
    Case("hostile: memory (python)", "python", 1, lambda n: "x = bytearray(1 << 30)", failure(MEMORY_LIMIT)),
    Case(
        "hostile: memory (monty)",
        "python",
        1,
        lambda n: "x = []\nwhile True:\n    x.append('a' * 100000)",
        failure(MEMORY_LIMIT),
    ),
    Case(
        "hostile: spin (monty)",
        "python",
        1,
        lambda n: "while True:\n    pass",
        failure(TIMEOUT),
        {"limits": {"timeoutMs": 300}},
    ),
    Case(
        "hostile: output flood (monty)",
        "python",
        1,
        lambda n: f"while True:\n    print('{n}' * 500)",
        failure(OUTPUT_LIMIT),
        {"limits": {"maxOutputBytes": 20_000}},
    ),
    Case(
        "hostile: output flood (isolate)",
        "isolate",
        2,
        lambda n: _JS_FLOOD.format(n=n),
        failure(OUTPUT_LIMIT),
        {"limits": {"maxOutputBytes": 20_000}},
    ),
    Case(
        "hostile: read /etc/passwd (typescript)",
        "typescript",
        2,
        lambda n: "return Deno.readTextFileSync('/etc/passwd');",
        failure(PROGRAM_ERROR),
    ),
    Case(
        "hostile: forbidden tool (isolate)",
        "isolate",
        2,
        lambda n: _JS_SCOPE.format(n=n),
        value(lambda n: [["add"], "undefined", n]),
        {"allowedTools": ["toolbox.add"]},
    ),
    Case(
        "hostile: throws (typescript)",
        "typescript",
        2,
        lambda n: f"throw new Error('boom-{n}');",
        failure(PROGRAM_ERROR, "boom-{n}"),
    ),
    Case("hostile: syntax error (isolate)", "isolate", 2, lambda n: f"return {n} +;", failure(PROGRAM_ERROR)),
]


@dataclass
class Footprint:
    """What the server holds when idle."""

    fds: int
    processes: int
    rss_mb: float
    tree_rss_mb: float

    @classmethod
    def of(cls, pid: int) -> Footprint:
        own, tree = tree_rss_mb(pid)
        return cls(len(os.listdir(f"/proc/{pid}/fd")), len(tree_pids(pid)), own, tree)


async def settled_footprint(pid: int, floor: Footprint | None, quiet_s: float) -> Footprint:
    """The footprint once the tree has not changed for ``quiet_s`` (and, given ``floor``, is down to it)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last, since = Footprint.of(pid), time.monotonic()
    while time.monotonic() < deadline:
        await anyio.sleep(0.5)
        now = Footprint.of(pid)
        if (now.fds, now.processes) != (last.fds, last.processes):
            last, since = now, time.monotonic()
            continue
        back = floor is None or (now.fds <= floor.fds and now.processes <= floor.processes)
        if back and time.monotonic() - since >= quiet_s:
            return now
    return Footprint.of(pid)


async def execute(client: Client, case: Case, n: int) -> tuple[bool, float, str]:
    arguments = {"code": case.program(n), **(case.arguments or {})}
    started = time.perf_counter()
    try:
        result = await client.call_tool(through.TOOLS[case.runtime], arguments)
    except MCPError as exc:
        return False, (time.perf_counter() - started) * 1000, f"JSON-RPC error {exc}"
    elapsed = (time.perf_counter() - started) * 1000
    payload = result.structured_content or {}
    return case.expect(n, payload), elapsed, str(payload)[:300]


async def soak(count: int, in_flight: int, seed: int) -> int:
    rng = random.Random(seed)
    plan = rng.choices(CASES, weights=[case.weight for case in CASES], k=count)
    latencies: dict[str, list[float]] = {case.name: [] for case in CASES}
    wrong: Counter[str] = Counter()
    examples: dict[str, str] = {}
    async with through.served("stdio") as server:
        for case in CASES:  # every path once, so what they load is in the baseline
            correct, _, seen = await execute(server.client, case, 1)
            if not correct:
                print(f"warm-up: {case.name} answered wrongly: {seen}", file=sys.stderr)
        before = await settled_footprint(server.pid, None, BASELINE_QUIET_S)
        peak = before.tree_rss_mb
        queue = iter(enumerate(plan))

        async def worker() -> None:
            nonlocal peak
            for n, case in queue:
                correct, elapsed, seen = await execute(server.client, case, 1000 + n)
                latencies[case.name].append(elapsed)
                if not correct:
                    wrong[case.name] += 1
                    examples.setdefault(case.name, seen)
                if n % 200 == 0:
                    peak = max(peak, tree_rss_mb(server.pid)[1])

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(in_flight):
                tg.start_soon(worker)
        took = time.perf_counter() - started
        after = await settled_footprint(server.pid, before, 5.0)
    rows = [
        [case.name, len(latencies[case.name]), len(latencies[case.name]) - wrong[case.name], *summarize(values)]
        for case in CASES
        if (values := latencies[case.name])
    ]
    growth = after.rss_mb / before.rss_mb - 1
    checks = {
        "every answer correct": not wrong,
        "descriptors back to idle": after.fds <= before.fds,
        "processes back to idle": after.processes <= before.processes,
        f"server RSS growth < {RSS_GROWTH_LIMIT:.0%}": growth < RSS_GROWTH_LIMIT,
    }
    print(f"# Conduit soak: {count} executions through MCP stdio, {in_flight} in flight, seed {seed}\n")
    print(f"{count / took:.1f} executions/s over {took:.0f} s; whole tree peak RSS {peak:.0f} MiB.\n")
    print(table(["case", "runs", "correct", "p50 ms", "p95 ms", "max ms"], rows))
    print("\n## The server idle, before and after (pools shrunk back)\n")
    print(
        table(
            ["", "descriptors", "processes", "server RSS MiB", "tree RSS MiB"],
            [
                ["before", before.fds, before.processes, before.rss_mb, before.tree_rss_mb],
                ["after", after.fds, after.processes, after.rss_mb, after.tree_rss_mb],
            ],
        )
    )
    print(f"\nServer RSS growth: {growth:+.1%}.\n")
    for name, passed in checks.items():
        print(f"- {'pass' if passed else 'FAIL'}: {name}")
    for name, seen in examples.items():
        print(f"  wrong answer from {name} (first of {wrong[name]}): {seen}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000, help="executions (default 10000)")
    parser.add_argument("--in-flight", type=int, default=8, help="executions outstanding at once (default 8)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the mix (default 7)")
    args = parser.parse_args()
    if args.count < 1 or args.in_flight < 1:
        parser.error("--count and --in-flight must be at least 1")
    started = time.perf_counter()
    status = anyio.run(soak, args.count, args.in_flight, args.seed)
    print(f"\nThe soak took {time.perf_counter() - started:.0f} s.")
    sys.exit(status)
