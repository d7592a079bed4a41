"""Conduit's benchmark: what a client gets through MCP, beside the floors measured in the same run.

Usage: ``make bench`` (or ``.venv/bin/python bench/run.py [--runs N] [--runtimes ...] [--transports ...]``).

Prints, for each transport (stdio, Streamable HTTP), once the server has settled (pools filled): latency
of each runtime spaced (the pools full) and back to back (the next request as soon as the answer
arrives), the cost of a tool call from a program (spaced runs, so no sandbox start is inside the
difference) beside a direct MCP call to the same upstream, throughput at 1, 4 and 8 in flight, an
open-loop mixed load at 60 % of the measured capacity, CPU time per execution of the server's whole
process tree, and RSS; then the same executions in-process (the gateway called directly, no
transport), and the floors: an MCP ping, a direct MCP call, a bare ``deno run``, a bare mini-racer
context, a cold Pyodide load.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

import anyio
import floors
import inprocess
import served as through
from report import latency_rows, summarize, table

GAP_S = {"typescript": 0.3, "isolate": 0.3, "python": 0.3, "monty": 0.3, "pyodide": 1.5}
"""Between spaced requests: long enough for the runtime's pool to refill."""
MIX = {"isolate": 0.45, "typescript": 0.45, "python": 0.10}
"""The open-loop load: what share of arrivals goes to each runtime."""
LOAD_SHARE = 0.6


async def transport_section(transport: str, runtimes: tuple[str, ...], runs: int, floor: dict[str, float]) -> str:
    out: list[str] = []
    async with through.served(transport) as server:
        client = server.client
        named: list[tuple[str, list[float], float | None]] = []
        proxied = await through.samples(lambda: through.call(client, "toolbox__add", {"a": 1, "b": 2}), runs, 0)
        named.append(("proxied upstream tool call", proxied, floor["direct call"]))
        medians: dict[str, float] = {}
        for runtime in runtimes:
            count = max(5, runs // 5) if runtime == "pyodide" else runs
            base = floor["deno"] if runtime == "typescript" else floor["mini-racer"] if runtime == "isolate" else None
            scenarios = [
                ("trivial, spaced", through.TRIVIAL, "trivial", GAP_S[runtime]),
                ("1 tool call, spaced", through.ONE_CALL, "one", GAP_S[runtime]),
                ("10 tool calls, spaced", through.TEN_CALLS, "ten", GAP_S[runtime]),
                ("trivial, back to back", through.TRIVIAL, "trivial", 0.0),
                ("1 tool call, back to back", through.ONE_CALL, "one", 0.0),
                ("10 tool calls, back to back", through.TEN_CALLS, "ten", 0.0),
            ]
            if runtime in through.PYTHON_FAMILY:
                scenarios.append(("orchestration (3 calls), back to back", through.ORCHESTRATION, "orchestration", 0))
            for label, programs, expected, gap in scenarios:

                async def action(runtime: str = runtime, code: str = programs[runtime], value: str = expected) -> None:
                    await through.execute(client, runtime, code, through.EXPECTED[value])

                taken = await through.samples(action, count, gap)
                medians[f"{runtime} {label}"] = statistics.median(taken)
                named.append((f"{runtime}: {label}", taken, base))
        out.append(f"## Latency through MCP {transport}, ms (x floor: a bare deno run / mini-racer context)\n")
        out.append(table(["scenario", "median", "p95", "max", "x floor"], latency_rows(named)))
        rows = []
        for runtime in runtimes:
            # Spaced: with the pools full, no sandbox start (Python's ~0.5 s) is inside the difference.
            trivial = medians[f"{runtime} trivial, spaced"]
            one = medians[f"{runtime} 1 tool call, spaced"] - trivial
            each = (medians[f"{runtime} 10 tool calls, spaced"] - trivial) / 10
            rows.append([runtime, one, each, each - floor["direct call"]])
        out.append(
            f"\n## Tool calls from programs ({transport}, spaced): what one adds, ms "
            f"(a direct MCP call: {floor['direct call']:.2f})\n"
        )
        out.append(table(["runtime", "1 call - trivial", "10 calls / 10", "minus direct"], rows))
        rates: dict[str, list[float]] = {}
        counts = {"typescript": 60, "isolate": 300, "python": 300, "monty": 300, "pyodide": 12}
        peak = 0.0
        idle_rss = floors.tree_rss_mb(server.pid)
        for runtime in runtimes:
            for in_flight, program in ((1, "trivial"), (4, "trivial"), (8, "trivial"), (8, "one")):
                rates.setdefault(runtime, []).append(
                    await through.throughput(client, runtime, in_flight, counts[runtime], program)
                )
                peak = max(peak, floors.tree_rss_mb(server.pid)[1])
        out.append(f"\n## Throughput through MCP {transport}, executions per second\n")
        out.append(
            table(
                ["runtime", "trivial, 1 in flight", "4 in flight", "8 in flight", "1 tool call, 8 in flight"],
                [[r, *v] for r, v in rates.items()],
            )
        )
        mix = {runtime: share for runtime, share in MIX.items() if runtime in runtimes}
        total = sum(mix.values())
        capacity = 1 / sum(share / total / rates[runtime][3] for runtime, share in mix.items())
        rate = LOAD_SHARE * capacity
        seconds = 20.0
        latencies = await through.open_loop(client, {r: s / total for r, s in mix.items()}, rate, seconds)
        peak = max(peak, floors.tree_rss_mb(server.pid)[1])
        rows = [[runtime, len(values), *summarize(values)] for runtime, values in latencies.items() if values]
        out.append(
            f"\n## Open-loop mixed load ({transport}): {rate:.1f} arrivals/s for {seconds:.0f} s "
            f"({LOAD_SHARE:.0%} of a capacity of {capacity:.1f}/s; one tool call each), ms\n"
        )
        out.append(table(["runtime", "answered", "p50", "p95", "max"], rows))
        cpu = {
            runtime: await through.cpu_per_execution(server, runtime, 6 if runtime == "pyodide" else 40)
            for runtime in runtimes
        }
        out.append(
            f"\n## CPU per trivial execution ({transport}): ms of the whole process tree, back to back, "
            "the sandboxes' replacements included\n"
        )
        out.append(table(["runtime", "CPU ms"], [[runtime, value] for runtime, value in cpu.items()]))
        out.append(
            f"\nRSS ({transport}): server process idle {idle_rss[0]:.0f} MiB, whole tree idle {idle_rss[1]:.0f} MiB, "
            f"peak under load {peak:.0f} MiB."
        )
    return "\n".join(out)


async def main(runs: int, runtimes: tuple[str, ...], transports: tuple[str, ...]) -> None:
    started = time.perf_counter()
    direct_calls, spaced_calls, pings = await floors.direct_mcp(runs, GAP_S["isolate"])
    floor_samples: dict[str, list[float]] = {
        "MCP ping (direct, handshake-era session)": pings,
        "MCP tools/call (direct to the upstream)": direct_calls,
        f"MCP tools/call (direct), {GAP_S['isolate']} s apart": spaced_calls,
    }
    if "typescript" in runtimes:
        floor_samples["bare deno run"] = floors.bare_deno(runs)
    if "isolate" in runtimes:
        floor_samples["bare mini-racer context"] = floors.bare_mini_racer(runs)
    if "pyodide" in runtimes:
        floor_samples["cold Pyodide load in Deno"] = floors.cold_pyodide(3)
    median = {name: statistics.median(values) for name, values in floor_samples.items()}
    floor = {
        "direct call": median["MCP tools/call (direct to the upstream)"],
        "deno": median.get("bare deno run", 0.0),
        "mini-racer": median.get("bare mini-racer context", 0.0),
    }
    sections = [await transport_section(transport, runtimes, runs, floor) for transport in transports]
    latencies, pooled, own = await inprocess.measure(runtimes, runs)
    spawn_rate = floors.bare_deno_rate() if "typescript" in runtimes else None
    print(
        f"# Conduit bench: {runs} runs per scenario ({max(5, runs // 5)} for Pyodide); {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}\n"
    )
    print("## Floors, measured in the same run, ms\n")
    print(
        table(["floor", "median", "p95", "max"], [[name, *summarize(values)] for name, values in floor_samples.items()])
    )
    if spawn_rate is not None:
        print(f"\nThe machine spawns {spawn_rate:.1f} bare `deno run` processes per second, two at a time.")
    for section in sections:
        print(f"\n{section}")
    in_rows: list[list[Any]] = [[name, *summarize(values)] for name, values in latencies.items()]
    print("\n## In-process (the gateway called directly, pools full before each run), ms\n")
    print(table(["scenario", "median", "p95", "max"], in_rows))
    print(
        f"\nBench process RSS with the gateway idle: {own:.0f} MiB. Held by idle pooled sandboxes: "
        + ", ".join(f"{name} {held:.0f} MiB" for name, held in pooled.items())
        + f".\n\nThe whole bench took {time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40, help="measured runs per scenario (default 40)")
    parser.add_argument(
        "--runtimes",
        default="typescript,python,monty,pyodide,isolate",
        help="comma-separated; python is engine auto, monty and pyodide ask for the engine (default: all)",
    )
    parser.add_argument(
        "--transports",
        default="stdio,http",
        help="comma-separated: stdio, http, http-stateless (sessionless, as in cluster mode) (default: stdio,http)",
    )
    args = parser.parse_args()
    chosen_runtimes = tuple(name for name in args.runtimes.split(",") if name)
    chosen_transports = tuple(name for name in args.transports.split(",") if name)
    for chosen, known, flag in (
        (chosen_runtimes, GAP_S, "--runtimes"),
        (chosen_transports, ("stdio", "http", "http-stateless"), "--transports"),
    ):
        unknown = [name for name in chosen if name not in known]
        if unknown or not chosen:
            parser.error(f"{flag}: choose from {', '.join(known)} (got {', '.join(unknown) or 'nothing'})")
    anyio.run(main, args.runs, chosen_runtimes, chosen_transports)
