"""``conduit serve``: the MCP server over Streamable HTTP or stdio."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import anyio

from conduit.auth.principals import local_caller
from conduit.auth.verifier import build_verifier
from conduit.cli.common import add_command, add_config_option, load, setup_logging
from conduit.errors import ConfigError, ListenError, SandboxStartError
from conduit.security.tokens import mint_token

EPILOG = """\
examples:
  conduit serve                                  Streamable HTTP on http://127.0.0.1:3000/mcp
  conduit serve --stdio                          for Claude Desktop, VS Code and other stdio clients
  conduit serve --config examples/demo.yaml --port 0

The HTTP endpoint requires 'Authorization: Bearer <token>' (IPC_BEARER_TOKEN or ipcBearerToken;
generated and printed to stderr when unset). /live, /ready, /health and /metrics are served on the
ops port (opsHost:opsPort, default 127.0.0.1:3001) in both modes. Over HTTP, SIGTERM drains first
(http.drainDelayMs, http.drainTimeoutMs); a second signal stops at once.
"""


def add_parser(commands: Any) -> None:
    parser = add_command(
        commands,
        "serve",
        summary="run the MCP server",
        description="Run Conduit's MCP server over Streamable HTTP (default) or stdio.",
        epilog=EPILOG,
    )
    parser.add_argument("--stdio", action="store_true", help="serve MCP over stdin/stdout (logs go to stderr)")
    add_config_option(parser)
    parser.add_argument("--port", type=int, metavar="N", help="HTTP port (0 picks a free one)")
    parser.add_argument("--host", metavar="ADDR", help="HTTP bind address (default 127.0.0.1)")
    parser.add_argument(
        "--ops-port", type=int, metavar="N", help="port of /live, /ready, /health, /metrics (0: a free one)"
    )
    parser.add_argument("--no-ops", action="store_true", help="do not serve /live, /ready, /health and /metrics")
    parser.add_argument(
        "--principal",
        metavar="ID",
        help="stdio: act as this principal of auth.principals (default: the single trusted local caller)",
    )
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    from conduit.server import run_server

    overrides: dict[str, Any] = {}
    if args.stdio:
        overrides["transport"] = "stdio"
    if args.port is not None:
        overrides["port"] = args.port
    if args.host:
        overrides["host"] = args.host
    if args.ops_port is not None:
        overrides["opsPort"] = args.ops_port
    if args.no_ops:
        overrides["opsEnabled"] = False
    loaded = load(args, **overrides)
    config = loaded.config
    token = config.ipc_bearer_token.get_secret_value() if config.ipc_bearer_token else None
    if token is None:
        token = mint_token()
        if config.transport == "http":
            print(
                f"Conduit master token: {token}\n"
                "  send it as 'Authorization: Bearer <token>' (conduit run --url: IPC_BEARER_TOKEN or --token);\n"
                "  it changes at every start: set IPC_BEARER_TOKEN or ipcBearerToken to keep one",
                file=sys.stderr,
                flush=True,
            )
    setup_logging(config, extra_secrets=[token])
    if args.principal is not None and config.transport != "stdio":
        raise ConfigError("--principal names the stdio client's principal; HTTP callers name theirs by key")
    local = local_caller(config, args.principal)
    build_verifier(config, token)  # a principal's key that is the master token fails here, before anything starts
    try:
        anyio.run(run_server, loaded, token, dict(os.environ), local)
    except BaseException as exc:  # the task groups wrap what ended the server in exception groups
        failure = _why(exc)
        if failure is None:
            raise
        status, message = failure
        print(f"conduit: {message}", file=sys.stderr)
        return status
    return 0


def _why(exc: BaseException) -> tuple[int, str] | None:
    """The exit status and the one line to print for what stopped the server, if it is one a user can act on."""
    if isinstance(exc, BaseExceptionGroup):
        found = [why for inner in exc.exceptions if (why := _why(inner)) is not None]
        return found[0] if found else None
    if isinstance(exc, ListenError):
        return 2, exc.message
    if isinstance(exc, SandboxStartError):
        return 1, exc.message
    if isinstance(exc, OSError):
        return 1, f"cannot serve: {exc}"
    return None
