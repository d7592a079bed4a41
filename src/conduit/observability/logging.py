"""Logging set-up: stderr only (stdout may carry MCP), secrets scrubbed before any handler.

Records are JSON lines (or readable text on a terminal) carrying the correlation ids of the
request and execution they belong to, and the structured fields passed as ``extra`` (runtime,
outcome, tool, duration_ms...). Execution code, tool arguments and results are never logged.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

from conduit.observability.context import EXECUTION_ID, PRINCIPAL, REQUEST_ID
from conduit.security.redact import Redactor

FIELDS: Final = (
    "request_id",
    "principal",
    "execution_id",
    "runtime",
    "outcome",
    "exit_code",
    "tool",
    "duration_ms",
    "upstream",
    "decision",
    "decided_by",
    "privacy",
)
"""Structured fields a record may carry (as ``extra``); the formatters print exactly these."""


class RedactingFilter(logging.Filter):
    """Renders each record's message once and scrubs it (and any exception text)."""

    def __init__(
        self, secrets: Iterable[str], patterns: Iterable[str], *, credentials: bool = True, pii: bool = True
    ) -> None:
        super().__init__()
        self._clean = Redactor(secrets, patterns, credentials=credentials, pii=pii)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._clean(record.getMessage())
        record.args = None
        for name in FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, self._clean(value))
        if record.exc_info:
            record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class ContextFilter(logging.Filter):
    """Stamps each record with the request id, principal and execution id of the task that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        if getattr(record, "execution_id", None) is None:
            record.execution_id = EXECUTION_ID.get()
        if getattr(record, "principal", None) is None:
            record.principal = PRINCIPAL.get()
        return True


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: value for name in FIELDS if (value := getattr(record, name, None)) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **fields(record),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal: the message, then the structured fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extra = " ".join(f"{key}={value}" for key, value in fields(record).items())
        line = f"{time} {record.levelname:<7} {record.name}: {record.getMessage()}{'  ' + extra if extra else ''}"
        return f"{line}\n{record.exc_text}" if record.exc_text else line


def configure_logging(
    level: str,
    secrets: Iterable[str],
    patterns: Iterable[str],
    json_lines: bool | None = None,
    *,
    credentials: bool = True,
    pii: bool = True,
) -> None:
    """Send logs to stderr at ``level``, redacting configured secrets and patterns.

    Args:
        json_lines: JSON lines; default: JSON unless stderr is a terminal.
        credentials: also scrub credential-shaped strings (bearer tokens, JWTs, API keys, private keys).
        pii: also scrub PII (emails, phone numbers, Luhn-valid card numbers, national ids).
    """
    handler = logging.StreamHandler(sys.stderr)
    as_json = not sys.stderr.isatty() if json_lines is None else json_lines
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter(secrets, patterns, credentials=credentials, pii=pii))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpx2", "mcp", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
