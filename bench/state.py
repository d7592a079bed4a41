"""What work that outlives a run costs, as a client sees it through MCP (Streamable HTTP), on SQLite and on
PostgreSQL: a workspace write + read from each runtime beside a plain upstream tool call from the same
runtime, the workspace tools called directly over MCP beside a proxied upstream call, and a skill called
from a program beside running the skill's code directly and a bare ``deno run`` (a skill call costs one
sandbox start more).

Every figure is a median and p95 in ms over ``--runs`` rounds, what is compared measured in turn within each
round (executions spaced so that the pools are full), with the floors measured in the same rounds: the
trivial program of each runtime, and an MCP ping. PostgreSQL is Debian's (started here on a
free loopback port; skipped, saying so, when it is not installed).

Usage: ``.venv/bin/python bench/state.py [--runs N] [--stores sqlite,postgresql]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import floors
import served as through
from report import summarize, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

KEY = "x4Zb0pW0Yq2bHnKkF9a3cJ8m5vS7tR1uE6iO2lD4gQw="
RUNTIMES = ("typescript", "isolate", "monty", "pyodide")
UPSTREAM_CALL = {
    "typescript": "return (await tools.toolbox.add({a: 1, b: 2})).structuredContent.sum;",
    "isolate": "return (await tools.toolbox.add({a: 1, b: 2})).structuredContent.sum;",
    "monty": "(await tools.toolbox.add(a=1, b=2))['structuredContent']['sum']",
}
UPSTREAM_CALL["pyodide"] = UPSTREAM_CALL["monty"]
WRITE_READ = {
    "typescript": "await tools.workspace.write({path: 'b/x.txt', text: 'abc'});\n"
    "return (await tools.workspace.read({path: 'b/x.txt'})).text.length;",
    "monty": "await tools.workspace.write(path='b/x.txt', text='abc')\n"
    "len((await tools.workspace.read(path='b/x.txt'))['text'])",
}
WRITE_READ["isolate"] = WRITE_READ["typescript"]
WRITE_READ["pyodide"] = WRITE_READ["monty"]
SKILL_CODE = "return 1 + 2;"
GAP_S = 0.2
"""Between executions: the pools refill, so no sandbox start is inside a measure (pyodide's: 1.5 s)."""
SKILL_CALL = "return await tools.skills.three({});"


@contextmanager
def store(kind: str) -> Iterator[dict[str, Any] | None]:
    """The config keys of a state store of ``kind``: a SQLite file, or a database on a PostgreSQL server
    started for the bench (None when PostgreSQL is not installed)."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield {"state": {"url": f"sqlite:///{directory}/bench-state.db"}}
        return
    from postgres_server import binaries, postgres_server

    if binaries() is None:
        print("PostgreSQL is not installed (Debian's 'postgresql'): its rows are left out", file=sys.stderr)
        yield None
        return
    with postgres_server() as server:
        yield {"state": {"url": server.create_database()}, "auth": {"credentialStore": {"key": KEY}}}


async def measure(kind: str, extra: dict[str, Any], runs: int) -> list[list[object]]:
    rows: list[list[object]] = []

    def row(label: str, samples: list[float], floor: list[float] | None = None) -> None:
        median, p95, _ = summarize(samples)
        over = median - summarize(floor)[0] if floor is not None else None
        rows.append([f"{kind}: {label}", median, p95, over])

    async with through.served("http", mode="legacy", extra=extra) as server:  # legacy: the modern protocol has no ping
        client = server.client
        await through.call(client, "workspace__write", {"path": "direct/x.txt", "text": "abc"})
        direct = await through.interleaved(
            {
                "ping": client.send_ping,
                "proxied": lambda: through.call(client, "toolbox__add", {"a": 1, "b": 2}),
                "write": lambda: through.call(client, "workspace__write", {"path": "direct/x.txt", "text": "abc"}),
                "read": lambda: through.call(client, "workspace__read", {"path": "direct/x.txt"}),
            },
            runs,
        )
        row("MCP ping (floor)", direct["ping"])
        row("proxied upstream call (direct MCP)", direct["proxied"], direct["ping"])
        row("workspace__write (direct MCP)", direct["write"], direct["ping"])
        row("workspace__read (direct MCP)", direct["read"], direct["ping"])
        saved = await client.call_tool(
            "conduit__mcp_save_skill",
            {"name": "three", "description": "Three.", "language": "typescript", "code": SKILL_CODE},
        )
        assert not saved.is_error, saved
        skill = await through.interleaved(
            {
                "direct": lambda: through.execute(client, "typescript", SKILL_CODE, 3),
                "skill": lambda: through.execute(client, "typescript", SKILL_CALL, 3),
            },
            runs,
            GAP_S,
        )
        row("typescript: the skill's code run directly", skill["direct"])
        row("typescript: a program calling the skill", skill["skill"], skill["direct"])
        row("a bare `deno run` (a TypeScript sandbox's start)", floors.bare_deno(runs))
        for runtime in RUNTIMES:
            count, gap = (max(5, runs // 5), 1.5) if runtime == "pyodide" else (runs, GAP_S)
            programs = {"trivial": (through.TRIVIAL[runtime], 2), "one": (UPSTREAM_CALL[runtime], 3)}
            programs["both"] = (WRITE_READ[runtime], 3)
            samples = await through.interleaved(
                {
                    name: lambda r=runtime, code=code, value=value: through.execute(client, r, code, value)
                    for name, (code, value) in programs.items()
                },
                count,
                gap,
            )
            row(f"{runtime} trivial program (floor)", samples["trivial"])
            row(f"{runtime} 1 upstream call", samples["one"], samples["trivial"])
            row(f"{runtime} workspace write + read (2 calls)", samples["both"], samples["trivial"])
    return rows


async def main(runs: int, stores: list[str]) -> None:
    print(f"# Workspace and skills through MCP (Streamable HTTP), {runs} runs each, back to back")
    print("Columns: median and p95 in ms; 'over floor' is the median less the floor named above it.\n")
    rows: list[list[object]] = []
    started = time.perf_counter()
    with ExitStack() as stack:
        for kind in stores:
            extra = stack.enter_context(store(kind))
            if extra is not None:
                rows.extend(await measure(kind, extra, runs))
    print(table(["measure", "median", "p95", "over floor"], rows, first_width=52))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--stores", default="sqlite,postgresql")
    arguments = parser.parse_args()
    anyio.run(main, arguments.runs, arguments.stores.split(","))
