"""Command line: wiring only. ``main(argv) -> exit code``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

from conduit import __version__
from conduit.config.loader import LoadedConfig, load_config
from conduit.errors import ConfigError, SandboxStartError
from conduit.observability.logging import configure_logging
from conduit.security.tokens import mint_token

EPILOG = """\
examples:
  conduit serve                          Streamable HTTP on http://127.0.0.1:3000/mcp
  conduit serve --stdio                  for Claude Desktop, VS Code and other stdio MCP clients
  conduit serve --config examples/demo.yaml --port 0
  conduit doctor                         check that Deno and the harness are in place
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conduit",
        description="Secure code-mode gateway for MCP: run agent-written programs in fresh sandboxes "
        "that call upstream MCP tools.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"conduit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the MCP server",
        description="Run Conduit's MCP server over Streamable HTTP (default) or stdio.",
        epilog="The HTTP endpoint requires 'Authorization: Bearer <token>' (IPC_BEARER_TOKEN or ipcBearerToken;\n"
        "generated and printed to stderr when unset).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--stdio", action="store_true", help="serve MCP over stdin/stdout (logs go to stderr)")
    serve.add_argument("--config", metavar="PATH", help="config file (default: CONFIG_FILE, else ./conduit.yaml)")
    serve.add_argument("--port", type=int, metavar="N", help="HTTP port (0 picks a free one)")
    serve.add_argument("--host", metavar="ADDR", help="HTTP bind address (default 127.0.0.1)")

    doctor = commands.add_parser(
        "doctor",
        help="check the installation",
        description="Check Deno, the harnesses, Pyodide's files and mini-racer; exit 1 if any is missing.",
    )
    doctor.add_argument("--config", metavar="PATH", help="config file to check as well")
    doctor.add_argument("--quiet", action="store_true", help="print only problems")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "serve":
            return _serve(args)
        return _doctor(args)
    except ConfigError as exc:
        print(f"conduit: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _load(args: argparse.Namespace) -> LoadedConfig:
    overrides: dict[str, Any] = {}
    if getattr(args, "stdio", False):
        overrides["transport"] = "stdio"
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    if getattr(args, "host", None):
        overrides["host"] = args.host
    return load_config(args.config, os.environ, Path.cwd(), overrides)


def _serve(args: argparse.Namespace) -> int:
    from conduit.server import run_server

    loaded = _load(args)
    config = loaded.config
    token = config.ipc_bearer_token.get_secret_value() if config.ipc_bearer_token else None
    if token is None:
        token = mint_token()
        if config.transport == "http":
            print(f"Conduit master token (IPC_BEARER_TOKEN was not set): {token}", file=sys.stderr, flush=True)
    json_lines = {"json": True, "text": False}.get(config.log_format)
    configure_logging(config.log_level, [*config.secret_values(), token], config.secret_redaction_patterns, json_lines)
    try:
        anyio.run(run_server, loaded, token, dict(os.environ))
    except SandboxStartError as exc:
        print(f"conduit: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"conduit: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from conduit.sandbox.deno import HARNESS, find_deno
    from conduit.sandbox.pyodide import check_pyodide_dir, default_pyodide_dir

    loaded = _load(args)
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
    try:
        from py_mini_racer import MiniRacer

        racer = MiniRacer()
        report.append(f"ok    mini-racer: V8 {racer.v8_version}")
        racer.close()
    except Exception as exc:  # a missing or broken native library shows up as any of several errors
        problems.append(f"FAIL  isolate runtime: mini-racer unusable: {exc} (run `make setup`)")
    report.append(f"ok    config: {loaded.source or 'defaults (no config file)'}")
    for line in ([] if args.quiet else report) + problems:
        print(line, file=sys.stderr if line.startswith("FAIL") else sys.stdout)
    return 1 if problems else 0
