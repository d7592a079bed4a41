"""Correlation ids carried through a request and an execution (read by the log formatter), and why its work
was cancelled, when it was."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Final, Literal

REQUEST_ID: ContextVar[str | None] = ContextVar("conduit_request_id", default=None)
EXECUTION_ID: ContextVar[str | None] = ContextVar("conduit_execution_id", default=None)
PRINCIPAL: ContextVar[str | None] = ContextVar("conduit_principal", default=None)
"""Who the request acts as: a principal's id, ``master`` or ``local``."""

Ending = Literal["cancelled", "client_gone", "stopped"]
CANCELLED: Final[Ending] = "cancelled"
"""The client asked (``notifications/cancelled``, ``conduit__mcp_cancel_execution``)."""
CLIENT_GONE: Final[Ending] = "client_gone"
"""The client went away mid-request (an HTTP client disconnected, a stdio client closed its end)."""
STOPPED: Final[Ending] = "stopped"
"""The server is stopping (a signal, the end of a drain)."""


def _asked() -> Ending:
    return CANCELLED


ENDED_BY: ContextVar[Callable[[], Ending]] = ContextVar("conduit_ended_by", default=_asked)
"""Asked when work is cancelled: why (the front end that serves the request, or a run, says)."""
