"""How fast a run that breaks a limit is answered, as a client sees it, on a quiet machine and with both cores busy.

Usage: ``.venv/bin/python bench/limit_ends.py [--runs N] [--transport http|stdio]``.

Through a ``conduit serve`` process and the official MCP client: memory bombs of every kind (large arrays,
typed arrays, strings, millions of small objects; the default 256 MiB cap) until the answer (-32009), and
runs that wait on something past a 2 s time limit (sleeps, a slow tool call, a spin) until the answer
(-32008, shown as the time past the limit). Each bomb prints the time now and then: the delay from its
last print to the answer is how long the run took to end once at (or one step from) its cap. Each is
measured idle and again with one CPU-bound process per core running beside the server. The floors,
measured in the same run: listing tools and trivial runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Final

import anyio
import served as through
from mcp import Client
from report import summarize, table

JS_BOMB: Final = (
    "const held = []; let i = 0;\nwhile (true) {{ {body}; if (++i % {every} === 0) console.log(Date.now()); }}"
)
PY_BOMB: Final = (
    "import time\nheld = []\ni = 0\nwhile True:\n    {body}\n    i += 1\n"
    "    if i % {every} == 0:\n        print(time.time())"
)
JS_SMALL_OBJECTS: Final = JS_BOMB.format(
    body="held.push({text: 'x'.repeat(64) + Math.random(), n: [1, 2, 3]})", every=20_000
)
BOMBS: Final = {
    "ts: arrays of 1M numbers": ("typescript", JS_BOMB.format(body="held.push(new Array(1 << 20).fill(i))", every=1)),
    "ts: 16 MiB typed arrays": (
        "typescript",
        JS_BOMB.format(body="held.push(new Uint8Array(16 << 20).fill(1))", every=1),
    ),
    "ts: small objects": ("typescript", JS_SMALL_OBJECTS),
    "js isolate: 1 MiB strings": ("isolate", JS_BOMB.format(body="held.push('x'.repeat(1 << 20) + i)", every=25)),
    "js isolate: small objects": ("isolate", JS_SMALL_OBJECTS),
    "monty: 16 MiB strings": ("monty", PY_BOMB.format(body="held.append('x' * (16 << 20) + str(i))", every=1)),
    "monty: small objects": (
        "monty",
        PY_BOMB.format(body="held.append({'t': 'x' * 64 + str(i), 'n': [1, 2, 3]})", every=20_000),
    ),
}
"""Each prints the time now and then, so the answer's delay after the program's last sign of life (the
memory cap reached, or within one step of it) is measured beside the whole run's."""
WAITS: Final = {
    "monty: asyncio.sleep": ("monty", "import asyncio\nawait asyncio.sleep(10**6)"),
    "monty: time.sleep": ("monty", "import time\ntime.sleep(10**6)"),
    "monty: slow tool call": ("monty", "import asyncio\nawait asyncio.sleep(0)\nawait tools.toolbox.sleep(seconds=60)"),
    "monty: spin": ("monty", "while True:\n    pass"),
    "ts: spin": ("typescript", "while (true) {}"),
    "ts: slow tool call": ("typescript", "await tools.toolbox.sleep({seconds: 60});"),
    "js isolate: spin": ("isolate", "while (true) {}"),
}
TIME_LIMIT_MS: Final = 2000


async def answer(
    client: Client, runtime: str, code: str, limits: dict[str, int], code_expected: int
) -> tuple[float, float]:
    """The run's answer time, and the time from its last printed timestamp to the answer (ms)."""
    arguments = {
        "code": code,
        "limits": limits,
        **({"engine": through.ENGINES[runtime]} if runtime in through.ENGINES else {}),
    }
    started = time.perf_counter()
    result = await client.call_tool(through.TOOLS[runtime], arguments)
    answered_at, took = time.time(), (time.perf_counter() - started) * 1000
    payload = result.structured_content or {}
    error = payload.get("error") or {}
    if not result.is_error or error.get("code") != code_expected:
        raise RuntimeError(f"{runtime}: expected {code_expected}, got {str(payload)[-500:]}")
    stamps = [float(line) for line in payload.get("stdout", "").split() if line.replace(".", "", 1).isdigit()]
    last = stamps[-1] / (1000 if stamps and stamps[-1] > 1e11 else 1) if stamps else None  # JS ms, Python s
    return took, (answered_at - last) * 1000 if last is not None else float("nan")


class Load:
    """One CPU-bound process per core, for as long as the context lasts."""

    def __enter__(self) -> None:
        spin = [sys.executable, "-c", "while True: pass"]
        self.processes = [subprocess.Popen(spin) for _ in range(os.cpu_count() or 2)]

    def __exit__(self, *_: object) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


async def measure(client: Client, runs: int) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, action in (
        ("floor: tools/list", client.list_tools),
        ("floor: trivial typescript run", lambda: through.execute(client, "typescript", "return 1 + 1;", 2)),
        ("floor: trivial monty run", lambda: through.execute(client, "monty", "1 + 1", 2)),
    ):
        taken = []
        for _ in range(runs * 2):
            started = time.perf_counter()
            await action()
            taken.append((time.perf_counter() - started) * 1000)
        rows.append([name, *summarize(taken)])
    for name, (runtime, code) in BOMBS.items():
        taken = [await answer(client, runtime, code, {"timeoutMs": 20_000}, -32009) for _ in range(runs)]
        rows.append([f"memory bomb, {name}", *summarize([whole for whole, _ in taken])])
        rows.append(["  of which after its last sign of life", *summarize([after for _, after in taken])])
    for name, (runtime, code) in WAITS.items():
        taken = [
            (await answer(client, runtime, code, {"timeoutMs": TIME_LIMIT_MS}, -32008))[0] - TIME_LIMIT_MS
            for _ in range(runs)
        ]
        rows.append([f"past the 2 s limit, {name}", *summarize(taken)])
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--transport", default="http", choices=["http", "stdio"])
    args = parser.parse_args()
    async with through.served(args.transport) as server:
        quiet = await measure(server.client, args.runs)
        with Load():
            busy = await measure(server.client, args.runs)
    headers = ["ms (answer; time-limit rows: past the limit)", "median", "p95", "max"]
    print(f"## Limits through MCP ({args.transport}), {args.runs} runs each, {os.cpu_count()} cores\n")
    print("### Quiet\n\n" + table(headers, quiet, first_width=48))
    print(
        f"\n### Both cores busy ({os.cpu_count()} CPU-bound processes beside the server)\n\n"
        + table(headers, busy, first_width=48)
    )


if __name__ == "__main__":
    anyio.run(main)
