"""A stdio upstream's stderr: each line logged under the upstream's id, and the last few kept to say why it died.

Left to the SDK, an upstream's stderr reaches Conduit's own, unlabelled, and a server that exits at start
("no API key set") leaves its caller with "Connection closed". Here the upstream writes into a pipe; a task
reads it, logs each line as ``[<id>] <line>`` at ``info`` (``conduit tools`` and ``serve`` show them with
the id), and keeps the last :data:`KEPT` lines for the connection's error message.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from typing import Final, TextIO

import anyio
from anyio.abc import TaskGroup

logger = logging.getLogger("conduit.upstream.stderr")

KEPT: Final = 5
"""Lines of an upstream's stderr kept for the message when it fails."""
MAX_LINE: Final = 2000
"""Longer lines are cut (an upstream printing a blob must not flood the log)."""


class StderrPipe:
    """The write end an upstream process gets as its stderr, and the reader of the other end."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.last: collections.deque[str] = collections.deque(maxlen=KEPT)
        read, write = os.pipe()
        self._read = read
        self.errlog: TextIO = os.fdopen(write, "w")
        self.ended = anyio.Event()
        """Set once the pipe is at its end: the upstream, and Conduit's copy of the write end, are gone."""

    def start(self, tg: TaskGroup) -> None:
        tg.start_soon(self._pump)

    def close(self) -> None:
        """Close Conduit's copy of the write end (the reader ends once the upstream's copy is gone too)."""
        with contextlib.suppress(OSError):
            self.errlog.close()

    def tail(self) -> str:
        """The last lines, joined for a one-line message (empty when it printed nothing)."""
        return " | ".join(self.last)

    async def _pump(self) -> None:
        """Read until the upstream (and Conduit's copy of the write end) are gone; cancellable at any time."""
        os.set_blocking(self._read, False)
        pending = b""
        try:
            while True:
                await anyio.wait_readable(self._read)
                try:
                    chunk = os.read(self._read, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    self._line(raw)
                pending = pending[-MAX_LINE:]
            self._line(pending)
        finally:
            os.close(self._read)
            self.ended.set()

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()[:MAX_LINE]
        if line:
            self.last.append(line)
            logger.info("[%s] %s", self.upstream, line, extra={"upstream": self.upstream})
