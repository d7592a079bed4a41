"""``conduit doctor``: is everything Conduit needs installed and usable?"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import anyio

from conduit.cli.common import add_command, add_config_option, load
from conduit.config.loader import LoadedConfig
from conduit.config.schema import Config
from conduit.errors import ConduitError, SandboxStartError
from conduit.sandbox.walls import Walls

ENABLE_HINTS: Final = {
    "process-group": "",
    "cgroup-memory": "Run Conduit as root, or in a cgroup delegated to it (systemd: Delegate=yes).",
    "cgroup-pids": "Run Conduit as root, or in a cgroup delegated to it (systemd: Delegate=yes).",
    "landlock": "Needs Linux 5.13+ with landlock in the kernel's lsm= list.",
    "no-new-privs": "Needs Linux.",
    "rlimit-cpu": "Needs Linux.",
    "unprivileged-uid": "Needs a 'nobody' user, and runtime files (Deno, Pyodide, Python) readable by it.",
}


def add_parser(commands: Any) -> None:
    parser = add_command(
        commands,
        "doctor",
        summary="check the installation",
        description="Check Deno, the harnesses, Pyodide's files, Monty, mini-racer, the config and the OS isolation "
        "layers; exit 1 if a piece is missing or a required layer is unavailable.",
        epilog="examples:\n  conduit doctor\n  conduit doctor --config examples/demo.yaml --quiet",
    )
    add_config_option(parser)
    parser.add_argument("--quiet", action="store_true", help="print only problems")
    parser.set_defaults(handler=doctor)


def doctor(args: argparse.Namespace) -> int:
    from importlib.metadata import version as version_of

    from conduit.assembly import probed_walls
    from conduit.sandbox.deno.runtime import HARNESS, find_deno
    from conduit.sandbox.monty.runtime import find_monty
    from conduit.sandbox.pyodide.runtime import check_pyodide_dir, default_pyodide_dir

    loaded = load(args)
    problems: list[str] = []
    report: list[str] = []
    try:
        deno = find_deno(loaded.config.deno_path)
        version = subprocess.run([deno, "--version"], capture_output=True, text=True, timeout=30, check=True)
        report.append(f"ok    deno: {version.stdout.splitlines()[0]} ({deno})")
    except (SandboxStartError, OSError, subprocess.SubprocessError) as exc:
        problems.append(f"FAIL  deno: {exc} (run `make setup`)")
    if HARNESS.is_file():
        report.append(f"ok    harness: {HARNESS}")
    else:
        problems.append(f"FAIL  harness missing: {HARNESS}")
    config = loaded.config
    pyodide_dir = Path(config.pyodide_path) if config.pyodide_path else default_pyodide_dir()
    problem = check_pyodide_dir(pyodide_dir)
    if problem:
        problems.append(f"FAIL  python runtime: {problem}")
    else:
        report.append(f"ok    pyodide: {pyodide_dir}")
    monty = find_monty(config.monty_path)
    try:
        ran = subprocess.run([monty, "-c", "print(6 * 7)"], capture_output=True, text=True, timeout=30, check=True)
        if ran.stdout.strip() != "42":
            raise OSError(f"printed {ran.stdout.strip()!r} for 6 * 7")
        report.append(f"ok    monty: pydantic-monty {version_of('pydantic-monty')} ({monty})")
    except (OSError, subprocess.SubprocessError) as exc:
        problems.append(f"FAIL  monty engine: {exc} (run `make setup`, or set montyPath)")
    try:
        from py_mini_racer import MiniRacer

        racer = MiniRacer()
        report.append(f"ok    mini-racer: V8 {racer.v8_version}")
        racer.close()
    except Exception as exc:  # a missing or broken native library shows up as any of several errors
        problems.append(f"FAIL  isolate runtime: mini-racer unusable: {exc} (run `make setup`)")
    report.append(f"ok    config: {loaded.source or 'defaults (no config file)'}")
    if config.upstreams:
        from conduit.cli.tools import catalog_of

        catalog, causes = anyio.run(catalog_of, loaded)
        for upstream in config.upstreams:
            if upstream.id in causes:
                problems.append(f"FAIL  upstream {upstream.id}: {causes[upstream.id]}")
            else:
                count = sum(1 for entry in catalog.tools if entry.upstream == upstream.id)
                report.append(f"ok    upstream {upstream.id}: reachable, {count} tools")
    if config.cluster.redis_url is not None:
        problem = _redis_problem(config)
        if problem:
            problems.append(
                f"FAIL  cluster: Redis unreachable: {problem} (replicas go on: onStoreError is "
                f"{config.cluster.on_store_error})"
            )
        else:
            report.append(f"ok    cluster: Redis answers; onStoreError {config.cluster.on_store_error}")
    if config.privacy.enabled:
        kinds = ", ".join(kind if isinstance(kind, str) else kind.name for kind in config.privacy.tokenize)
        where = "in Redis, shared by replicas" if config.cluster.redis_url is not None else "in memory"
        whom = ", ".join(config.privacy.principals) if config.privacy.principals is not None else "every caller"
        report.append(f"ok    privacy: tokenising {kinds} for {whom}; tokens kept {where}")
    if config.keeps_state:
        try:
            report.append(f"ok    state: {anyio.run(_state_report, loaded)}")
        except ConduitError as exc:
            problems.append(f"FAIL  state: {exc.message} (workspaces and skills fail; everything else runs)")
    try:
        walls = anyio.run(probed_walls, config)
    except SandboxStartError:  # no Deno: said above; the walls without the runtimes' uid checks
        walls = Walls.detect(config.resource_limits.timeout_ms, enabled=config.isolation.enabled)
    try:
        for wall in walls.report:
            if wall.active:
                report.append(f"ok    isolation {wall.name}: {wall.detail}")
            elif wall.name in config.isolation.require:
                problems.append(f"FAIL  isolation {wall.name} (required): {wall.detail}. {ENABLE_HINTS[wall.name]}")
            else:
                report.append(f"off   isolation {wall.name}: {wall.detail}. {ENABLE_HINTS[wall.name]}")
        if config.isolation.enabled:
            report.append(f"{'ok  ' if walls.native else 'note'}  sandbox launcher: {walls.launcher}")
    finally:
        walls.close()
    for line in ([] if args.quiet else report) + problems:
        print(line, file=sys.stderr if line.startswith("FAIL") else sys.stdout)
    return 1 if problems else 0


async def _state_report(loaded: LoadedConfig) -> str:
    """Where the state store is and which migration it is at (a SQLite file not made yet is said so).

    Raises:
        ConduitError: no key to seal it with, or it cannot be reached.
    """
    from conduit.state.database import StateDatabase, revision_of

    database = StateDatabase.for_config(loaded.config, loaded.base_dir)
    try:
        if not database.exists:
            return f"{database.name} (made on the first write)"
        return f"{database.name} at migration {await database.transact(revision_of)}"
    finally:
        await database.aclose()


def _redis_problem(config: Config) -> str | None:
    """None when the cluster's Redis answers a PING, else why not (never the URL: it may hold a password)."""
    from conduit.cluster.store import FAILURES, SharedStore

    store = SharedStore(config.cluster)
    try:
        store.sync_client.ping()
    except FAILURES as exc:
        return type(exc).__name__
    finally:
        store.sync_client.close()
    return None
