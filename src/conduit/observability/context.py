"""Correlation ids carried through a request and an execution (read by the log formatter)."""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("conduit_request_id", default=None)
EXECUTION_ID: ContextVar[str | None] = ContextVar("conduit_execution_id", default=None)
PRINCIPAL: ContextVar[str | None] = ContextVar("conduit_principal", default=None)
"""Who the request acts as: a principal's id, ``master`` or ``local``."""
