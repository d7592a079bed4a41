"""``conduit workspace ls|get|put|rm --principal ID``: an operator reads and writes a principal's workspace
in the state database directly (the same files its programs see as ``tools.workspace``)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

import anyio

from conduit.cli.common import add_command, add_state_actions, open_state
from conduit.config.loader import LoadedConfig

EPILOG = """\
examples:
  conduit workspace ls --principal alice                 every file: size, last written, path
  conduit workspace get --principal alice notes/a.md     a file's content on stdout
  conduit workspace put --principal alice notes/a.md -   stdin as the file (text if UTF-8, else binary)
  conduit workspace rm --principal alice notes/a.md
"""


def add_parser(commands: Any) -> None:
    parser = add_command(
        commands,
        "workspace",
        summary="read and write a principal's workspace",
        description="List, read, write or delete the files of a principal's workspace (workspace.*).",
        epilog=EPILOG,
    )
    add_state_actions(
        parser,
        [
            ("ls", "list the files (under PREFIX)", [("prefix", "?", "PREFIX")]),
            ("get", "print a file's content", [("path", None, "PATH")]),
            ("put", "write FILE ('-': standard input) as PATH", [("path", None, "PATH"), ("source", None, "FILE")]),
            ("rm", "delete a file", [("path", None, "PATH")]),
        ],
        _act,
    )


async def _act(loaded: LoadedConfig, principal: str, args: argparse.Namespace) -> int:
    from conduit.state.workspace import WorkspaceStore  # here: every other command starts without SQLAlchemy

    async with open_state(loaded) as database:
        store = WorkspaceStore(database, loaded.config.workspace)
        if args.action == "ls":
            for info in await store.list(principal, args.prefix):
                moment = datetime.fromtimestamp(info.modified_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
                print(f"{info.size:>10}  {moment}  {info.path}")
        elif args.action == "get":
            _, content = await store.read(principal, args.path)
            sys.stdout.buffer.write(content)
            sys.stdout.flush()
        elif args.action == "put":
            content = sys.stdin.buffer.read() if args.source == "-" else await anyio.Path(args.source).read_bytes()
            try:
                content.decode("utf-8")
                encoding = "text"
            except UnicodeDecodeError:
                encoding = "base64"
            written = await store.write(principal, args.path, content, "text" if encoding == "text" else "base64")
            print(f"wrote {written.path} ({written.size} bytes, {encoding}) for {principal}", file=sys.stderr)
        elif not await store.delete(principal, args.path):
            print(f"conduit: no file {args.path!r} in {principal}'s workspace", file=sys.stderr)
            return 1
    return 0
