"""Host-side capture of a sandbox's stdout and stderr under byte and line limits.

The sandbox cannot be trusted to count its own output, so the host counts every byte it
reads. The first byte past ``max_output_bytes`` or the first line past ``max_log_entries``
trips the limit: the collector keeps exactly what fitted, records which limit tripped, and
tells its owner to kill the sandbox. The runtime's result record travels on stdout behind a
per-job marker, and an end marker closes stderr; both are split off here and never count as
program output. Once both have arrived the output is :attr:`~OutputCollector.complete`, and the
host need not wait for the process to finish exiting.
"""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conduit.config.schema import Limits
from conduit.errors import LOG_LIMIT, OUTPUT_LIMIT
from conduit.sandbox.protocol import END_PREFIX, RESULT_PREFIX

logger = logging.getLogger(__name__)


@dataclass
class _Stream:
    name: str
    data: bytearray = field(default_factory=bytearray)
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))


class OutputCollector:
    """Counts and keeps output of one run; finds the result record behind ``marker``."""

    def __init__(
        self,
        *,
        max_bytes: int,
        max_lines: int,
        nonce: str,
        max_record_bytes: int,
        listener: Callable[[str, str], None] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self._listener = listener
        self.max_lines = max_lines
        self._marker = RESULT_PREFIX + nonce.encode() + b":"
        self._max_record = max_record_bytes + 64 * 1024
        self._stdout = _Stream("stdout")
        self._stderr = _Stream("stderr")
        self._pending = bytearray()
        """stdout bytes that might be the start of the marker."""
        self._end_marker = END_PREFIX + nonce.encode() + b"\n"
        self._stderr_pending = bytearray()
        """stderr bytes that might be the start of the end marker."""
        self._stderr_ended = False
        self._record: bytearray | None = None
        self._bytes = 0
        self._lines = 0
        self.violation: tuple[int, str] | None = None

    @classmethod
    def for_limits(
        cls, limits: Limits, nonce: str, listener: Callable[[str, str], None] | None = None
    ) -> OutputCollector:
        """A collector enforcing ``limits``' byte and line budgets, finding the record behind ``nonce``."""
        return cls(
            max_bytes=limits.max_output_bytes,
            max_lines=limits.max_log_entries,
            nonce=nonce,
            max_record_bytes=limits.max_output_bytes,
            listener=listener,
        )

    @property
    def tripped(self) -> bool:
        return self.violation is not None

    def feed_stdout(self, chunk: bytes) -> None:
        if self._record is not None:
            self._feed_record(chunk)
            return
        output, self._pending, rest = _split_at(self._pending, chunk, self._marker)
        self._accept(self._stdout, output)
        if rest is not None:
            self._record = bytearray()
            self._feed_record(rest)

    def feed_stderr(self, chunk: bytes) -> None:
        if self._stderr_ended:
            return
        output, self._stderr_pending, rest = _split_at(self._stderr_pending, chunk, self._end_marker)
        self._accept(self._stderr, output)
        self._stderr_ended = rest is not None

    @property
    def complete(self) -> bool:
        """The sandbox marked the end of stderr and its record arrived whole: no more output will come."""
        return self._stderr_ended and self._record is not None and self._record.endswith(b"\n")

    def finish(self) -> None:
        """The streams ended: bytes held back as a possible marker start are output after all."""
        if self._pending:
            pending, self._pending = bytes(self._pending), bytearray()
            self._accept(self._stdout, pending)
        if self._stderr_pending:
            pending, self._stderr_pending = bytes(self._stderr_pending), bytearray()
            self._accept(self._stderr, pending)

    def record(self) -> dict[str, Any] | None:
        """The runtime's result record, if one arrived complete and well formed."""
        if self._record is None or not self._record.endswith(b"\n"):
            return None
        try:
            record = json.loads(self._record[:-1])
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def stdout(self) -> str:
        return self._stdout.data.decode("utf-8", "replace")

    def stderr(self) -> str:
        return self._stderr.data.decode("utf-8", "replace")

    def _feed_record(self, chunk: bytes) -> None:
        assert self._record is not None
        if b"\n" in self._record:
            return
        self._record += chunk
        if len(self._record) > self._max_record:
            self._record = bytearray()

    def _accept(self, stream: _Stream, chunk: bytes) -> None:
        if self.violation is not None or not chunk:
            return
        room = self.max_bytes - self._bytes
        if len(chunk) > room:
            chunk, over_bytes = chunk[:room], True
        else:
            over_bytes = False
        lines_room = self.max_lines - self._lines
        newlines = chunk.count(b"\n")
        if newlines > lines_room:
            cut = _nth_index(chunk, b"\n", lines_room - 1) + 1 if lines_room > 0 else 0
            self._keep(stream, chunk[:cut])
            self._lines = self.max_lines
            self.violation = (LOG_LIMIT, f"output exceeded the limit of {self.max_lines} lines")
            return
        self._keep(stream, chunk)
        self._lines += newlines
        if over_bytes:
            self.violation = (OUTPUT_LIMIT, f"output exceeded the limit of {self.max_bytes} bytes")

    def _keep(self, stream: _Stream, chunk: bytes) -> None:
        stream.data += chunk
        self._bytes += len(chunk)
        if self._listener is not None and chunk:
            text = stream.decoder.decode(chunk)
            if text:
                try:
                    self._listener(stream.name, text)
                except Exception:  # live streaming is best effort: it must never break the run
                    logger.warning("live output listener failed; streaming stops, the run goes on", exc_info=True)
                    self._listener = None


def _split_at(pending: bytearray, chunk: bytes, marker: bytes) -> tuple[bytes, bytearray, bytes | None]:
    """Scan ``pending + chunk`` for ``marker``: (output before it, bytes held back because they may start
    it, bytes after it or None when it has not arrived)."""
    buffer = pending + chunk
    index = buffer.find(marker)
    if index >= 0:
        return bytes(buffer[:index]), bytearray(), bytes(buffer[index + len(marker) :])
    keep = _partial_suffix(buffer, marker)
    return bytes(buffer[: len(buffer) - keep]), bytearray(buffer[len(buffer) - keep :]), None


def _partial_suffix(buffer: bytes | bytearray, marker: bytes) -> int:
    """Length of the longest suffix of ``buffer`` that is a proper prefix of ``marker``."""
    for size in range(min(len(marker) - 1, len(buffer)), 0, -1):
        if buffer.endswith(marker[:size]):
            return size
    return 0


def _nth_index(data: bytes, needle: bytes, n: int) -> int:
    """Index of the (n+1)-th occurrence of ``needle`` (n counts from 0)."""
    index = -1
    for _ in range(n + 1):
        index = data.index(needle, index + 1)
    return index
