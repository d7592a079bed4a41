"""Command line: ``conduit serve | run | tools | auth | doctor``; one module per command."""

from conduit.cli.main import main

__all__ = ["main"]
