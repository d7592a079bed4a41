"""Host-side output capture: byte and line limits, and the result record behind its marker."""

from __future__ import annotations

import json

from conduit.errors import LOG_LIMIT, OUTPUT_LIMIT
from conduit.sandbox.host.output import OutputCollector
from conduit.sandbox.protocol import RESULT_PREFIX

NONCE = "abc123"
MARKER = RESULT_PREFIX + NONCE.encode() + b":"


def collector(max_bytes: int = 1000, max_lines: int = 100) -> OutputCollector:
    return OutputCollector(max_bytes=max_bytes, max_lines=max_lines, nonce=NONCE, max_record_bytes=1000)


def test_output_and_record_are_separated_even_when_the_marker_is_split() -> None:
    c = collector()
    record = MARKER + json.dumps({"status": "ok", "value": 7}).encode() + b"\n"
    stream = b"hello\npartial" + record
    for i in range(len(stream)):  # one byte at a time: the marker arrives in pieces
        c.feed_stdout(stream[i : i + 1])
    c.finish()
    assert c.stdout() == "hello\npartial"
    assert c.record() == {"status": "ok", "value": 7}
    assert c.violation is None


def test_a_marker_with_the_wrong_nonce_is_plain_output() -> None:
    c = collector()
    forged = RESULT_PREFIX + b"guess:" + b'{"status": "ok", "value": 1}\n'
    c.feed_stdout(forged)
    c.finish()
    assert c.record() is None
    assert c.stdout().endswith('{"status": "ok", "value": 1}\n')


def test_held_back_bytes_are_output_when_the_stream_ends() -> None:
    c = collector()
    c.feed_stdout(b"text" + MARKER[:5])
    c.finish()
    assert c.stdout().encode() == b"text" + MARKER[:5]


def test_byte_limit_keeps_exactly_the_limit_across_both_streams() -> None:
    c = collector(max_bytes=10)
    c.feed_stdout(b"12345")
    c.feed_stderr(b"67890abc")
    assert c.violation is not None and c.violation[0] == OUTPUT_LIMIT
    assert (c.stdout(), c.stderr()) == ("12345", "67890")
    c.feed_stdout(b"more")
    assert c.stdout() == "12345"


def test_exactly_the_limit_is_not_a_violation() -> None:
    c = collector(max_bytes=10, max_lines=2)
    c.feed_stdout(b"1234\n6789\n")
    assert c.violation is None


def test_line_limit_keeps_exactly_the_allowed_lines() -> None:
    c = collector(max_lines=3)
    c.feed_stdout(b"a\nb\n")
    c.feed_stderr(b"c\nd\ne\n")
    assert c.violation is not None and c.violation[0] == LOG_LIMIT
    assert (c.stdout(), c.stderr()) == ("a\nb\n", "c\n")


def test_oversized_record_is_dropped() -> None:
    c = collector()
    c.feed_stdout(MARKER + b'{"value": "' + b"x" * 200_000 + b'"}\n')
    assert c.record() is None


def test_the_listener_gets_decoded_text_as_it_is_accepted_and_never_the_record() -> None:
    seen: list[tuple[str, str]] = []
    c = OutputCollector(
        max_bytes=1000, max_lines=100, nonce=NONCE, max_record_bytes=1000, listener=lambda *a: seen.append(a)
    )
    euro = "€".encode()
    c.feed_stdout(b"a" + euro[:1])  # a character split across chunks arrives whole
    c.feed_stdout(euro[1:] + b"\n")
    c.feed_stderr(b"oops\n")
    c.feed_stdout(MARKER + b'{"status": "ok"}\n')
    c.finish()
    assert seen == [("stdout", "a"), ("stdout", "€\n"), ("stderr", "oops\n")]


def test_a_failing_listener_stops_streaming_but_not_the_collection() -> None:
    calls = 0

    def broken(stream: str, text: str) -> None:
        nonlocal calls
        calls += 1
        raise BrokenPipeError("reader gone")

    c = OutputCollector(max_bytes=1000, max_lines=100, nonce=NONCE, max_record_bytes=1000, listener=broken)
    c.feed_stdout(b"one\n")
    c.feed_stdout(b"two\n")
    c.finish()
    assert calls == 1
    assert c.stdout() == "one\ntwo\n"
    assert c.violation is None
