"""The ``conduit`` command: the top-level parser and dispatch. ``main(argv) -> exit code``."""

from __future__ import annotations

import argparse
import os
import sys

from conduit import __version__
from conduit.cli import auth, completion, credentials, doctor, run, serve, skills, tools, workspace
from conduit.errors import ConfigError

EPILOG = """\
examples:
  conduit serve --stdio                         serve MCP for Claude Desktop, VS Code...
  conduit run examples/cheapest_in_stock.ts --config examples/demo.yaml
                                                run a program through the sandbox and the upstreams
  conduit tools                                 list the upstream tools programs can call
  conduit tools catalog__get_stock              one tool's description and input schema
  conduit auth https://mcp.example.com/mcp      get OAuth credentials for an upstream
  conduit doctor                                check the installation
  conduit completion bash                       a completion script (bash, zsh, fish)

Every command takes --config PATH (default: CONFIG_FILE, else ./conduit.yaml); `conduit COMMAND --help`
tells more.
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
    for command in (serve, run, tools, workspace, skills, auth, credentials, doctor, completion):
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.handler(args)
        return code
    except ConfigError as exc:
        print(f"conduit: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`conduit tools | head`): no traceback for that
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
