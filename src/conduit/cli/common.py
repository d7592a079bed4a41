"""What several commands share: loading the config with command-line overrides, reporting a run."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from conduit.config.loader import DEFAULT_FILENAMES, LoadedConfig, load_config
from conduit.config.schema import Config
from conduit.errors import ConfigError
from conduit.observability.logging import configure_logging
from conduit.state.database import StateDatabase


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="config file (default: CONFIG_FILE, else ./conduit.yaml)")


def add_principal_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--principal", required=True, metavar="ID", help="whose: a principal's id, oauth:<claim>, master or local"
    )


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


@asynccontextmanager
async def open_state(loaded: LoadedConfig) -> AsyncIterator[StateDatabase]:
    """The config's state database (workspaces, skills), closed afterwards."""
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
