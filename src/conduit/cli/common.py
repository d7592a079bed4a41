"""What several commands share: loading the config with command-line overrides."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from conduit.config.loader import LoadedConfig, load_config


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="config file (default: CONFIG_FILE, else ./conduit.yaml)")


def load(args: argparse.Namespace, **overrides: Any) -> LoadedConfig:
    """The config named by ``--config`` (or found as usual), with ``overrides`` winning."""
    return load_config(getattr(args, "config", None), os.environ, Path.cwd(), overrides)
