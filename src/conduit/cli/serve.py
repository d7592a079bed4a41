"""``conduit serve``: the MCP server over Streamable HTTP or stdio."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import anyio

from conduit.auth.verifier import build_verifier
from conduit.cli.common import add_config_option, load, setup_logging
from conduit.errors import ConfigError, SandboxStartError
from conduit.security.callers import local_caller
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
    parser = commands.add_parser(
        "serve",
        help="run the MCP server",
        description="Run Conduit's MCP server over Streamable HTTP (default) or stdio.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stdio", action="store_true", help="serve MCP over stdin/stdout (logs go to stderr)")
    add_config_option(parser)
    parser.add_argument("--port", type=int, metavar="N", help="HTTP port (0 picks a free one)")
    parser.add_argument("--host", metavar="ADDR", help="HTTP bind address (default 127.0.0.1)")
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
    loaded = load(args, **overrides)
    config = loaded.config
    token = config.ipc_bearer_token.get_secret_value() if config.ipc_bearer_token else None
    if token is None:
        token = mint_token()
        if config.transport == "http":
            print(f"Conduit master token (IPC_BEARER_TOKEN was not set): {token}", file=sys.stderr, flush=True)
    setup_logging(config, extra_secrets=[token])
    if args.principal is not None and config.transport != "stdio":
        raise ConfigError("--principal names the stdio client's principal; HTTP callers name theirs by key")
    local = local_caller(config, args.principal)
    build_verifier(config, token)  # a principal's key that is the master token fails here, before anything starts
    try:
        anyio.run(run_server, loaded, token, dict(os.environ), local)
    except SandboxStartError as exc:
        print(f"conduit: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"conduit: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0
