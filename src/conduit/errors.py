"""Conduit's exceptions and the error codes it puts on the wire.

Infrastructure failing is an exception; untrusted code failing is a value
(:class:`conduit.sandbox.base.RunOutcome`), never an exception. The tree::

    ConduitError                  root of everything Conduit raises on purpose
    ├── ConfigError               a config file or env override is invalid (message lists key paths)
    ├── UpstreamError             an upstream MCP server failed (connect, call, timeout, died)
    │   └── UnknownToolError      no upstream offers the requested tool
    ├── ToolDeniedError           the caller's allowlist does not cover the tool
    ├── AuthError                 a bridge request carried a missing, wrong or expired token
    ├── BusyError                 the execution queue is full
    └── SandboxStartError         a sandbox process could not be started

Each carries ``code``: the JSON-RPC error code used when it crosses the wire.
"""

from __future__ import annotations

from typing import Final

# JSON-RPC 2.0 protocol codes.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603

# Conduit execution and bridge codes (SPEC §2).
BUSY: Final = -32000
PROGRAM_ERROR: Final = -32001
"""The program threw an uncaught error or exited non-zero (not a limit, not infrastructure)."""
UNAUTHORIZED: Final = -32002
FORBIDDEN: Final = -32003
UNKNOWN_TOOL: Final = -32004
UPSTREAM_ERROR: Final = -32005
UPSTREAM_TIMEOUT: Final = -32006
TIMEOUT: Final = -32008
MEMORY_LIMIT: Final = -32009
OUTPUT_LIMIT: Final = -32013
LOG_LIMIT: Final = -32014


class ConduitError(Exception):
    """Root of the errors Conduit raises on purpose."""

    code: int = INTERNAL_ERROR

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(ConduitError):
    """The configuration is invalid; the message names each bad key path and why."""

    code = INVALID_PARAMS


class UpstreamError(ConduitError):
    """An upstream MCP server could not be reached, failed a call, timed out or died."""

    code = UPSTREAM_ERROR


class UnknownToolError(UpstreamError):
    """No configured upstream offers the requested tool."""

    code = UNKNOWN_TOOL


class ToolDeniedError(ConduitError):
    """The tool exists but the execution's allowlist does not cover it."""

    code = FORBIDDEN


class AuthError(ConduitError):
    """A bridge request carried a missing, wrong or expired token, or a token without the right."""

    code = UNAUTHORIZED


class BusyError(ConduitError):
    """Every execution slot is taken and the queue is full."""

    code = BUSY


class SandboxStartError(ConduitError):
    """A sandbox process could not be started (missing binary, spawn failure)."""

    code = INTERNAL_ERROR
