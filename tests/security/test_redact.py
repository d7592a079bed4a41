"""Log redaction: configured secrets, credential shapes and PII go; ordinary log content stays."""

from __future__ import annotations

import io
import json
import logging

import pytest

from conduit.observability.logging import configure_logging
from conduit.security.redact import scrub

SCRUBBED = [
    ("Authorization: Bearer abcdefghij0123456789", "Authorization: Bearer [REDACTED]"),
    ("basic dXNlcjpwYXNzd29yZA==", "basic [REDACTED]"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0", "jwt [REDACTED jwt]"),
    ("openai sk-proj-abcdefghijklmnopqrstuvwx", "openai [REDACTED api key]"),
    ("github ghp_abcdefghijklmnopqrstuvwxyz0123456789", "github [REDACTED api key]"),
    ("aws AKIAIOSFODNN7EXAMPLE", "aws [REDACTED api key]"),
    ("slack xoxb-123456789012-abcdefghij", "slack [REDACTED api key]"),
    ("stripe sk_live_abcdefghijklmnop1234", "stripe [REDACTED api key]"),
    (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----",
        "[REDACTED private key]",
    ),
    ('password=hunter22 and "api_key": "k-998877"', 'password=[REDACTED] and "api_key": "[REDACTED]"'),
    ("client_secret: s3cr3t-value", "client_secret: [REDACTED]"),
    ("mail ann.lee+x@example.co.uk now", "mail [REDACTED email] now"),
    ("card 4111 1111 1111 1111 or 5500-0000-0000-0004", "card [REDACTED card] or [REDACTED card]"),
    ("ssn 078-05-1120", "ssn [REDACTED national id]"),
    ("nino AB 12 34 56 C", "nino [REDACTED national id]"),
    ("call +44 20 7946 0958 or (212) 555-0147", "call [REDACTED phone] or [REDACTED phone]"),
]

KEPT = [
    "upstream time connected with 2 tools",
    "execution_id 4f3a9c0d1e2b4a6f8e7d6c5b4a3f2e1d took 12.5 ms",
    "listening on http://127.0.0.1:51473/mcp",
    "2026-11-25T17:48:00.123+00:00 pid 12345",
    "card-like but invalid 4111 1111 1111 1112",
    "tool toolbox__add outcome ok",
    "token budget 5000",
]


@pytest.mark.parametrize(("text", "expected"), SCRUBBED)
def test_credential_shapes_and_pii_are_scrubbed(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_log_content_is_kept(text: str) -> None:
    assert scrub(text) == text


def test_each_family_can_be_turned_off() -> None:
    text = "Bearer abcdefghij0123 ann@example.com"
    assert scrub(text, credentials=False) == "Bearer abcdefghij0123 [REDACTED email]"
    assert scrub(text, pii=False) == "Bearer [REDACTED] ann@example.com"


def test_every_record_is_scrubbed_before_any_handler_writes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = io.StringIO()
    monkeypatch.setattr("sys.stderr", sink)
    configure_logging("info", ["configured-secret-value"], [r"tenant-\d+"], json_lines=True)
    log = logging.getLogger("conduit.test")
    log.info("token %s for %s", "configured-secret-value", "ann@example.com", extra={"tool": "tenant-42__x"})
    try:
        raise ValueError("Bearer abcdefghij0123456789 failed")
    except ValueError:
        log.exception("upstream said no")
    records = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert records[0]["message"] == "token [REDACTED] for [REDACTED email]"
    assert records[0]["tool"] == "[REDACTED]__x"
    assert "abcdefghij0123456789" not in sink.getvalue()
    assert "Bearer [REDACTED] failed" in sink.getvalue()
