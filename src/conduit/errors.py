"""Conduit's exceptions and the error codes it puts on the wire.

Infrastructure failing is an exception; untrusted code failing is a value
(:class:`conduit.sandbox.base.RunOutcome`), never an exception. The tree::

    ConduitError                  root of everything Conduit raises on purpose
    ├── InvalidParamsError        a request's arguments are wrong (type, size, pattern, unknown key)   *
    │   └── ConfigError           a config file, env override or upstream definition is invalid       *
    ├── UpstreamError             an upstream MCP server failed (connect, call, timeout, died)
    │   ├── UnknownToolError      no upstream offers the requested tool                                *
    │   ├── ToolReportedError     a typed call's tool answered isError (the raw result is its data)
    │   └── CredentialMissingError a principal has no credential of its own for the upstream
    ├── ToolDeniedError           the caller's allowlist does not cover the tool                       *
    ├── ApprovalDeclinedError     a person declined a call (or could not be asked, or did not answer)
    ├── ToolCallLimitError        a program made its run's last allowed tool call (maxToolCalls)
    ├── WorkspaceLimitError       a workspace write past the principal's quota, file count or file size
    ├── AuthError                 a bridge request carried a missing, wrong or expired token           *
    ├── MethodNotFoundError       no such bridge method, or a runtime this build lacks                 *
    ├── BusyError                 the execution queue is full
    │   ├── StoreUnavailableError the cluster's Redis is away and cluster.onStoreError is refuse
    │   └── StateUnavailableError the state database (workspaces, skills) cannot be reached
    ├── SandboxStartError         a sandbox process could not be started
    ├── ListenError               an HTTP listener's address cannot be bound (a port in use)
    ├── BlockedAddressError       the SSRF guard refused an outbound destination (security/ssrf.py)
    ├── DiscoveryError            an OAuth server's metadata could not be found or is unusable
    ├── AuthorizationError        an OAuth authorization was denied, tampered with or refused
    └── AuthorizationRequiredError a principal must connect its own upstream account at a URL first (-32042)

Each carries ``code``: the JSON-RPC error code used when it crosses the wire. The classes marked
``*`` are the caller's fault (``caller_fault``): the request was wrong, so a front end answers with a
protocol error; the others are work that failed, answered as a failed result where the front end has
one (:mod:`conduit.transport.wire` for MCP).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

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
APPROVAL_DECLINED: Final = -32015
"""A call an approval rule covers was declined, not answered in time, or could not be asked about."""
WORKSPACE_LIMIT: Final = -32016
"""A workspace write past a limit (``workspace.quotaBytes``, ``maxFiles``, ``maxFileBytes``): nothing was written."""
TOOL_CALL_LIMIT: Final = -32017
"""A program's tool call past its run's ``maxToolCalls``: that call fails, the program goes on."""
URL_ELICITATION_REQUIRED: Final = -32042
"""The call needs the user to open a URL first (MCP's URL-elicitation-required code): to connect their own
account on an upstream; ``data.url`` is the page."""


class ConduitError(Exception):
    """Root of the errors Conduit raises on purpose."""

    code: int = INTERNAL_ERROR
    caller_fault: bool = False
    """The request itself was wrong (answered as a protocol error), rather than the work failing."""
    data: Any = None
    """What a sandbox's error gets as ``data`` besides the code and message (None: nothing)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidParamsError(ConduitError):
    """A request's arguments are wrong; the message names the argument and the rule."""

    code = INVALID_PARAMS
    caller_fault = True


class ConfigError(InvalidParamsError):
    """The configuration is invalid; the message names each bad key path and why."""


class UpstreamError(ConduitError):
    """An upstream MCP server could not be reached, failed a call, timed out or died."""

    code = UPSTREAM_ERROR


class UnknownToolError(UpstreamError):
    """No configured upstream offers the requested tool."""

    code = UNKNOWN_TOOL
    caller_fault = True


class ToolReportedError(UpstreamError):
    """A tool called for its typed value answered with ``isError``: the program's call throws, with the
    tool's own message, and the raw ``CallToolResult`` as the error's ``data``."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.data = result


class ToolDeniedError(ConduitError):
    """The execution's allowlist does not cover the tool (whether or not it exists)."""

    code = FORBIDDEN
    caller_fault = True


class ApprovalDeclinedError(ConduitError):
    """A call an approval rule covers did not get a person's approval: declined, cancelled, not answered in
    time, or the client cannot be asked. The upstream never saw it."""

    code = APPROVAL_DECLINED


class ToolCallLimitError(ConduitError):
    """A program asked for more tool calls than its run's ``maxToolCalls``: the call is refused (the upstream
    never sees it) and the program decides what to do."""

    code = TOOL_CALL_LIMIT


class WorkspaceLimitError(ConduitError):
    """A workspace write would pass one of the principal's limits; the message says which. Nothing was written."""

    code = WORKSPACE_LIMIT


class ListenError(ConduitError):
    """An HTTP listener (the MCP endpoint, the ops port) cannot bind its address; the message names the
    address, the listener and the option that moves it."""


class AuthError(ConduitError):
    """A bridge request carried a missing, wrong or expired token, or a token without the right."""

    code = UNAUTHORIZED
    caller_fault = True


class MethodNotFoundError(ConduitError):
    """No such bridge method, or an execution runtime this build does not have."""

    code = METHOD_NOT_FOUND
    caller_fault = True


class BusyError(ConduitError):
    """Every execution slot is taken and the queue is full."""

    code = BUSY


class StoreUnavailableError(BusyError):
    """The cluster's shared state (Redis) cannot be reached and ``cluster.onStoreError`` is ``refuse``:
    nothing has run, so a retry is safe."""


class StateUnavailableError(BusyError):
    """The state database (``state.url``: workspaces and skills) cannot be reached; the message names it.
    Runs that use neither are unaffected."""


class SandboxStartError(ConduitError):
    """A sandbox process could not be started (missing binary, spawn failure)."""

    code = INTERNAL_ERROR


class BlockedAddressError(ConduitError):
    """The SSRF guard refused a destination; the message says which address and why."""


class DiscoveryError(ConduitError):
    """An OAuth server's metadata could not be found or is unusable."""


class AuthorizationError(ConduitError):
    """The authorization failed: denied, tampered with, or refused by the server."""


class CredentialMissingError(UpstreamError):
    """A principal's call needs its own credential for an upstream, and it has none (-32005)."""


class AuthorizationRequiredError(ConduitError):
    """A principal's call needs its own account on an upstream connected first: ``data`` carries the URL the user
    opens to connect it (-32042); once connected, the call can be made again."""

    code = URL_ELICITATION_REQUIRED

    def __init__(self, message: str, *, url: str, upstream: str) -> None:
        super().__init__(message)
        self.url = url
        self.upstream = upstream
        self.data = {"url": url, "upstream": upstream}

    @property
    def elicitation_id(self) -> str:
        """The id of the URL-mode elicitation that sends the user to :attr:`url` (the same for the same URL)."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:24]
