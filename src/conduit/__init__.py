"""Conduit: a secure code-mode gateway for MCP agents."""

__version__ = "0.1.0"

__all__ = ["__version__"]
