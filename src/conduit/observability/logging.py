"""Logging set-up: stderr only (stdout may carry MCP), with secrets scrubbed before any handler."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Final

REDACTED: Final = "[REDACTED]"


def redact(text: str, secrets: Iterable[str], patterns: Iterable[re.Pattern[str]] = ()) -> str:
    """``text`` with every secret value and every pattern match replaced.

    >>> redact("token abc123 and abc123", ["abc123"])
    'token [REDACTED] and [REDACTED]'
    """
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern in patterns:
        text = pattern.sub(REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    """Renders each record's message once and scrubs it (and any exception text)."""

    def __init__(self, secrets: Iterable[str], patterns: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 4]
        self._patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self._secrets, self._patterns)
        record.args = None
        if record.exc_info:
            record.exc_text = redact(
                logging.Formatter().formatException(record.exc_info), self._secrets, self._patterns
            )
            record.exc_info = None
        return True


def configure_logging(level: str, secrets: Iterable[str], patterns: Iterable[str]) -> None:
    """Send logs to stderr at ``level``, redacting configured secrets and patterns."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets, patterns))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpx2", "mcp", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
