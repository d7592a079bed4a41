"""``conduit run FILE``: one local program through the real sandbox and the configured upstreams.

Output streams live as the program writes it; a top-level return value is printed as JSON
afterwards; the exit code is the program's (non-zero when it threw or hit a limit).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import anyio

from conduit.cli.common import add_command, add_config_option, load, report, say_which_config, setup_logging
from conduit.config.loader import LoadedConfig
from conduit.config.schema import PYTHON_ENGINES
from conduit.core.languages import BY_ALIAS, BY_EXTENSION, BY_NAME
from conduit.core.requests import ExecutionRequest
from conduit.errors import ConduitError, SandboxStartError
from conduit.sandbox.base import RunOutcome
from conduit.security.callers import MASTER
from conduit.security.tokens import mint_token

EPILOG = """\
The language follows the file's extension (.ts TypeScript in Deno, .py Python on Monty, or in Pyodide
when the program needs what Monty lacks (--engine chooses), .js JavaScript in a V8 isolate) unless --lang
says otherwise. Upstreams come from the config, as for `conduit serve`.

examples:
  conduit run examples/cheapest_in_stock.ts --config examples/demo.yaml
  conduit run examples/stock_report.py --config examples/demo.yaml --allow 'catalog.*'
  echo 'return 6 * 7' | conduit run - --lang js
  conduit run examples/restock_notice.js --url http://127.0.0.1:3000/mcp     (token from IPC_BEARER_TOKEN)
"""


def add_parser(commands: Any) -> None:
    parser = add_command(
        commands,
        "run",
        summary="run a local program in a sandbox",
        description="Run a TypeScript, Python or JavaScript program through Conduit's real sandbox and upstreams.",
        epilog=EPILOG,
    )
    parser.add_argument("file", metavar="FILE", help="the program ('-' reads standard input; then --lang is needed)")
    parser.add_argument("--lang", choices=sorted(BY_ALIAS), help="the language (default: from FILE's extension)")
    parser.add_argument(
        "--allow",
        action="append",
        metavar="PATTERN",
        help="a tool the program may call: '*', 'upstream.*', 'upstream.tool' (repeatable; "
        "default: the config's defaultAllowedTools)",
    )
    parser.add_argument("--timeout-ms", type=int, metavar="N", help="lower the configured time limit")
    parser.add_argument(
        "--engine", choices=PYTHON_ENGINES, help="Python only: the engine (default: the config's pythonEngine)"
    )
    parser.add_argument(
        "--url",
        metavar="URL",
        help="send the program to a running Conduit server (Streamable HTTP) instead of running it here; "
        "its output streams back as progress notifications",
    )
    parser.add_argument("--token", metavar="TOKEN", help="the server's master token (default: IPC_BEARER_TOKEN)")
    add_config_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        language = _language(args.file, args.lang)
        code = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"conduit: {exc}", file=sys.stderr)
        return 2
    allowed = [pattern for value in args.allow for pattern in value.split(",") if pattern] if args.allow else None
    limits = {"timeoutMs": args.timeout_ms} if args.timeout_ms is not None else None
    if args.url:
        from conduit.cli.remote import run_remote

        token = args.token or os.environ.get("IPC_BEARER_TOKEN", "")
        if not token.strip():
            print("conduit: no token: set IPC_BEARER_TOKEN or pass --token", file=sys.stderr)
            return 2
        return run_remote(args.url, token, language, code, allowed, limits, args.engine)
    # A one-shot run needs no sandboxes started ahead of it.
    cold = {"min": 0, "max": 0}
    pools = {"typescript": cold, "python": cold, "isolate": {"min": 0}, "monty": {"min": 0}}
    loaded = load(args, pools=pools, opsEnabled=False)
    say_which_config(loaded)
    config = loaded.config
    setup_logging(config, level="warning")
    try:
        outcome = anyio.run(_execute, loaded, language, code, allowed, limits, args.engine)
    except SandboxStartError as exc:
        print(f"conduit: {exc}", file=sys.stderr)
        return 1
    if isinstance(outcome, ConduitError):  # the request was refused before anything ran
        print(f"conduit: {outcome.message}", file=sys.stderr)
        return 2
    return report(outcome.as_result())


def _language(file: str, lang: str | None) -> str:
    if lang:
        return BY_ALIAS[lang].name
    language = BY_EXTENSION.get(Path(file).suffix.lower())
    if language is None:
        raise ValueError(f"cannot tell the language of {file!r}: use --lang ts|py|js")
    return language.name


async def _execute(
    loaded: LoadedConfig,
    language: str,
    code: str,
    allowed: list[str] | None,
    limits: dict[str, int] | None,
    engine: str | None,
) -> RunOutcome | ConduitError:
    from conduit.assembly import open_gateway

    arguments = {"code": code, "allowedTools": allowed, "limits": limits, "engine": engine}
    try:
        request = ExecutionRequest.from_arguments(BY_NAME[language], arguments, known_only=False)
    except ConduitError as exc:
        return exc

    streams: dict[str, TextIO] = {"stdout": sys.stdout, "stderr": sys.stderr}

    def show(stream: str, text: str) -> None:
        streams[stream].write(text)
        streams[stream].flush()

    async with open_gateway(
        loaded.config, master_token=mint_token(), base_dir=loaded.base_dir, host_env=dict(os.environ)
    ) as gateway:
        try:
            return await gateway.run(gateway.plan(request, MASTER), on_output=show)
        except ConduitError as exc:
            return exc
