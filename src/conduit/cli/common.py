"""What several commands share: loading the config with command-line overrides, reporting a run."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from conduit.config.loader import DEFAULT_FILENAMES, LoadedConfig, load_config
from conduit.config.schema import Config
from conduit.errors import ConduitError, ConfigError
from conduit.observability.logging import configure_logging

if TYPE_CHECKING:
    from conduit.state.database import StateDatabase


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="config file (default: CONFIG_FILE, else ./conduit.yaml)")


def add_principal_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--principal", required=True, metavar="ID", help="whose: a principal's id, oauth:<claim>, master or local"
    )


def add_command(commands: Any, name: str, *, summary: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A ``conduit`` command: ``summary`` in the list of commands, its ``--help`` the description and the
    examples (``epilog``) as written."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def principal_of(loaded: LoadedConfig, principal: str) -> str:
    """``principal`` if it names a caller of the config.

    Raises:
        ConfigError: it does not.
    """
    if not loaded.config.auth.is_caller_id(principal):
        raise ConfigError(
            f"--principal {principal!r} is no caller here (a principal's id, oauth:<claim>, master, local)"
        )
    return principal


Operand = tuple[str, str | None, str]
"""A positional argument of an action: its name, its ``nargs`` (None: exactly one) and its metavar."""


def add_state_actions(
    parser: argparse.ArgumentParser,
    actions: Iterable[tuple[str, str, Iterable[Operand]]],
    act: Callable[[LoadedConfig, str, argparse.Namespace], Awaitable[int]],
) -> dict[str, argparse.ArgumentParser]:
    """The actions of a command on a principal's state (``conduit workspace ls ...``), each with its operands,
    ``--principal`` and ``--config``; ``act`` does one (see :func:`run_state_action`)."""
    subparsers = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    made = {}
    for name, help_text, operands in actions:
        action = made[name] = subparsers.add_parser(name, help=help_text, description=help_text)
        for dest, nargs, metavar in operands:
            action.add_argument(dest, nargs=nargs, metavar=metavar)
        add_principal_option(action)
        add_config_option(action)
    parser.set_defaults(handler=lambda args: run_state_action(args, act))
    return made


def run_state_action(
    args: argparse.Namespace, act: Callable[[LoadedConfig, str, argparse.Namespace], Awaitable[int]]
) -> int:
    """Run ``act`` for the config and ``--principal`` of ``args``; a Conduit error is one line and exit 1."""
    loaded = load(args)
    principal = principal_of(loaded, args.principal)
    try:
        return anyio.run(act, loaded, principal, args)
    except ConduitError as exc:
        print(f"conduit: {exc.message}", file=sys.stderr)
        return 1


@asynccontextmanager
async def open_state(loaded: LoadedConfig) -> AsyncIterator[StateDatabase]:
    """The config's state database (workspaces, skills), closed afterwards."""
    from conduit.state.database import StateDatabase  # only the commands on state pay for SQLAlchemy

    database = StateDatabase.for_config(loaded.config, loaded.base_dir)
    try:
        yield database
    finally:
        await database.aclose()


def load(args: argparse.Namespace, **overrides: Any) -> LoadedConfig:
    """The config named by ``--config`` (or found as usual), with ``overrides`` winning."""
    return load_config(getattr(args, "config", None), os.environ, Path.cwd(), overrides)


def say_which_config(loaded: LoadedConfig) -> None:
    """Tell the user, on stderr, when no config file was found: the run then has no upstreams at all."""
    if loaded.source is None:
        names = ", ".join(DEFAULT_FILENAMES)
        print(
            f"conduit: no config file found ({names} in {loaded.base_dir}; CONFIG_FILE unset): no upstreams, "
            "so programs see no tools; pass --config PATH",
            file=sys.stderr,
        )


def setup_logging(config: Config, *, level: str | None = None, extra_secrets: Iterable[str] = ()) -> None:
    """Logging as the config says (level, format, redaction), at ``level`` when a command wants quieter logs."""
    configure_logging(
        level or config.log_level,
        [*config.secret_values(), *extra_secrets],
        config.secret_redaction_patterns,
        {"json": True, "text": False}.get(config.log_format),
        credentials=config.redact_credentials,
        pii=config.redact_pii,
    )


def report(payload: dict[str, Any]) -> int:
    """Print what follows a program's output (its result, its error) and return its exit code."""
    if payload.get("result") is not None:
        print(json.dumps(payload["result"], indent=2, ensure_ascii=False))
    error = payload.get("error")
    if isinstance(error, dict):
        print(f"conduit: {error.get('message')} (error {error.get('code')})", file=sys.stderr)
    return int(payload.get("exitCode", 1))
