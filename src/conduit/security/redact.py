"""What may leave Conduit: text scrubbed of secrets, credential shapes, PII, and (for sandboxes) host details.

One pure module for every place text leaves: log records (:func:`redact` for configured secret
values and patterns, then :func:`scrub`), and error messages sent into a sandbox
(:func:`sandbox_safe`, which also drops URLs and host paths).

Patterns are deliberately specific (known token formats, key=value secrets, and the personal values of
:mod:`conduit.security.personal`: Luhn-valid card numbers, formatted phone numbers...) so that ids, ports,
durations and timestamps in logs stay readable. Each match is replaced by a label saying what was there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final

from conduit.security.personal import BUILT_IN, Kind

Replacement = str | Callable[[re.Match[str]], str]

REDACTED: Final = "[REDACTED]"

_SECRET_NAMES: Final = (
    r"password|passwd|passphrase|secret|client[_-]?secret|api[_-]?key|apikey|access[_-]?token|refresh[_-]?token"
    r"|id[_-]?token|auth[_-]?token|private[_-]?key|token"
)

CREDENTIAL_PATTERNS: Final[tuple[tuple[re.Pattern[str], Replacement], ...]] = (
    (
        re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)", re.DOTALL),
        "[REDACTED private key]",
    ),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), "[REDACTED jwt]"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), lambda m: f"{m.group(1)} [REDACTED]"),
    (
        re.compile(
            r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
            r"|glpat-[A-Za-z0-9_-]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}"
            r"|sk_(?:live|test)_[A-Za-z0-9]{16,})"
        ),
        "[REDACTED api key]",
    ),
    (
        re.compile(rf"(?i)\b({_SECRET_NAMES})(\"?'?\s*[:=]\s*\"?'?)([^\s\"'&,;]{{4,}})"),
        lambda m: f"{m.group(1)}{m.group(2)}[REDACTED]",
    ),
)


def _checked(kind: Kind, label: str) -> tuple[re.Pattern[str], Replacement]:
    """A kind's pattern for logs: its matches that pass its check become ``label``."""
    return re.compile(kind.pattern), lambda match: label if kind.accepts(match.group(0)) else match.group(0)


PII_PATTERNS: Final[tuple[tuple[re.Pattern[str], Replacement], ...]] = (
    _checked(BUILT_IN["email"], "[REDACTED email]"),
    _checked(BUILT_IN["credit_card"], "[REDACTED card]"),
    _checked(BUILT_IN["us_ssn"], "[REDACTED national id]"),
    (re.compile(r"\b[A-CEGHJ-PR-TW-Z]{2}\s?\d{2}\s?\d{2}\s?\d{2}\s?[A-D]\b"), "[REDACTED national id]"),  # UK NINO
    _checked(BUILT_IN["phone"], "[REDACTED phone]"),
)
"""The personal values logs never show: the kinds of :mod:`conduit.security.personal` (one home for their
patterns and checks), and UK national insurance numbers."""


def scrub(text: str, *, credentials: bool = True, pii: bool = True) -> str:
    """``text`` with credential-shaped strings and PII replaced by labels.

    >>> scrub("Authorization: Bearer abcdefghij12345 from ann@example.com card 4111 1111 1111 1111")
    'Authorization: Bearer [REDACTED] from [REDACTED email] card [REDACTED card]'
    >>> scrub("port 8080 took 12.5 ms at 2026-11-25T17:48:00 id 1234567890abcdef")
    'port 8080 took 12.5 ms at 2026-11-25T17:48:00 id 1234567890abcdef'
    """
    groups = (CREDENTIAL_PATTERNS if credentials else ()) + (PII_PATTERNS if pii else ())
    for pattern, replacement in groups:
        text = pattern.sub(replacement, text)
    return text


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


class Redactor:
    """One cleaning of text for a place it leaves to: configured secret values (four characters or longer, so
    that a short one does not blank ordinary words) and patterns, then credential shapes and PII as asked.

    >>> Redactor(["s3cret-value", "ab"], [r"id-\\d+"], pii=False)("s3cret-value id-42 ab ann@example.com")
    '[REDACTED] [REDACTED] ab ann@example.com'
    """

    def __init__(
        self, secrets: Iterable[str], patterns: Iterable[str], *, credentials: bool = True, pii: bool = True
    ) -> None:
        self._secrets = [secret for secret in secrets if len(secret) >= 4]
        self._patterns = [re.compile(pattern) for pattern in patterns]
        self._credentials = credentials
        self._pii = pii

    def __call__(self, text: str) -> str:
        return scrub(redact(text, self._secrets, self._patterns), credentials=self._credentials, pii=self._pii)


_URL: Final = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"()<>]+", re.IGNORECASE)
_HOST_PATH: Final = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+[\w.@+-]*")


def sandbox_safe(message: str) -> str:
    """An error message fit for untrusted code: no URLs, host paths, credentials or PII.

    >>> sandbox_safe("token endpoint unreachable: All connection attempts failed (http://10.0.0.5:8080/token)")
    'token endpoint unreachable: All connection attempts failed ([url])'
    >>> sandbox_safe("cannot read /srv/conduit/conf/secret.yaml for 'toolbox__add'")
    "cannot read [path] for 'toolbox__add'"
    """
    return scrub(_HOST_PATH.sub("[path]", _URL.sub("[url]", message)))
