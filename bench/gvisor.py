"""What gVisor costs and takes away: each runtime's latency in an in-process gateway, here and inside
``runsc --rootless do`` (Debian's ``runsc``), with ``conduit doctor``'s walls in each.

Usage: ``.venv/bin/python bench/gvisor.py [--runs N]`` (~2 min). Prints a table beside the walls each
side reports; docs/DEPLOY.md keeps the latest.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
from inprocess import measure
from report import summarize, table

RUNTIMES = ("typescript", "isolate", "monty", "pyodide")
HERE = Path(__file__).resolve()
CONDUIT = Path(sys.executable).parent / "conduit"


def walls(prefix: list[str]) -> dict[str, str]:
    """``conduit doctor``'s isolation lines: wall -> ok/off."""
    answer = subprocess.run([*prefix, str(CONDUIT), "doctor"], capture_output=True, text=True, timeout=300, check=False)
    found = {}
    for line in answer.stdout.splitlines():
        state, _, rest = line.partition(" ")
        if rest.strip().startswith("isolation "):
            found[rest.strip().split()[1].rstrip(":")] = state
    return found


def inside(runs: int) -> None:
    latencies, _, _ = anyio.run(measure, RUNTIMES, runs)
    print(json.dumps({name: summarize(samples) for name, samples in latencies.items()}))


def main(runs: int) -> None:
    runsc = shutil.which("runsc")
    if runsc is None:
        sys.exit("runsc (Debian's gVisor package) is not installed")
    prefix = [runsc, "--rootless", "--network=none", "do"]
    sides: dict[str, dict[str, tuple[float, float, float]]] = {}
    for side, command in (("host", []), ("gVisor", prefix)):
        answer = subprocess.run(
            [*command, sys.executable, str(HERE), "--inside", "--runs", str(runs)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if answer.returncode != 0:
            sys.exit(f"{side}: {answer.stderr[-2000:]}")
        sides[side] = json.loads(answer.stdout.strip().splitlines()[-1])
    rows = [
        [name, f"{sides['host'][name][0]:.2f}", f"{sides['gVisor'][name][0]:.2f}", f"{sides['gVisor'][name][1]:.2f}"]
        for name in sides["host"]
    ]
    print(f"# In-process latency, ms: median on the host, median and p95 inside gVisor ({runs} runs)\n")
    print(table(["runtime: program", "host p50", "gVisor p50", "gVisor p95"], rows))
    here, there = walls([]), walls(prefix)
    print("\n# Walls (conduit doctor)\n")
    print(table(["wall", "host", "gVisor"], [[wall, here[wall], there.get(wall, "?")] for wall in here]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    inside(args.runs) if args.inside else main(args.runs)
