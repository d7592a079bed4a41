"""A stdio upstream's stderr: each line logged under the upstream's id, and the last few kept to say why it died,
with its exit status.

Left to the SDK, an upstream's stderr reaches Conduit's own, unlabelled, and a server that exits at start
("no API key set") leaves its caller with "Connection closed". Here the upstream writes into a pipe; a task
reads it, logs each line as ``[<id>] <line>`` at ``info`` (``conduit tools`` and ``serve`` show them with
the id), and keeps the last :data:`KEPT` lines for the connection's error message.

The SDK owns the upstream's process and does not say how it ended, so the command runs under a ``/bin/sh``
that waits for it and writes its status on this pipe, behind a marker no other line has (:meth:`reporting`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import secrets
import signal
from collections.abc import Mapping
from typing import Final, TextIO

import anyio
from anyio.abc import TaskGroup

logger = logging.getLogger("conduit.upstream.stderr")

KEPT: Final = 5
"""Lines of an upstream's stderr kept for the message when it fails."""
MAX_LINE: Final = 2000
"""Longer lines are cut (an upstream printing a blob must not flood the log)."""
SHELL: Final = "/bin/sh"
_REPORT: Final = 'mark=$1; shift; "$@"; status=$?; printf "\\n%s %s\\n" "$mark" "$status" >&2; exit $status'
"""Run the command (``$@`` after the marker), then write the marker and its status to stderr."""
_NO_PWD: Final = "unset PWD; "
"""The shell exports ``PWD`` of its own accord; the upstream gets only the variables it is given."""


class StderrPipe:
    """The write end an upstream process gets as its stderr, and the reader of the other end."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.last: collections.deque[str] = collections.deque(maxlen=KEPT)
        read, write = os.pipe()
        self._read = read
        self.errlog: TextIO = os.fdopen(write, "w")
        self.ended = anyio.Event()
        """Set once the upstream's status is known (the last thing written), or the pipe is at its end."""
        self.status: int | None = None
        """The upstream's exit status, once it has exited (a shell's: 128 + N when killed by signal N)."""
        self._mark = f"conduit-exit-{secrets.token_hex(8)}"

    def reporting(self, command: str, args: list[str], env: Mapping[str, str]) -> tuple[str, list[str]]:
        """The command line that runs ``command`` with ``args`` (and ``env``, the variables it is given) and
        then reports its exit status here."""
        script = _REPORT if "PWD" in env else _NO_PWD + _REPORT
        return SHELL, ["-c", script, "conduit-upstream", self._mark, command, *args]

    def exited(self) -> str | None:
        """How the upstream ended, for a message ("exited with status 3", "was killed by SIGKILL"), or None."""
        if self.status is None:
            return None
        killer = _killed_by(self.status)
        return f"was killed by {killer.name}" if killer else f"exited with status {self.status}"

    def start(self, tg: TaskGroup) -> None:
        tg.start_soon(self._pump)

    def close(self) -> None:
        """Close Conduit's copy of the write end (the reader ends once the upstream's copy is gone too)."""
        with contextlib.suppress(OSError):
            self.errlog.close()

    def ending(self, during: str = "") -> str | None:
        """How the upstream ended, ``during`` what, and its last lines ("exited with status 3 during 'x'; its
        stderr: ..."); None when its status is unknown and it said nothing."""
        exited, said = self.exited(), " | ".join(self.last)
        if exited is None and not said:
            return None
        what = f"{exited or 'closed the connection'}{during}"
        return f"{what}; its stderr: {said}" if said else what

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
        marker, _, status = line.partition(" ")
        if marker == self._mark and status.isdigit():
            self.status = int(status)
            killer = _killed_by(self.status)
            shell_said = signal.strsignal(killer) if killer else None  # what a shell prints then: "Killed"
            if shell_said and self.last and self.last[-1].startswith(shell_said):  # the shell's, not the upstream's
                self.last.pop()
            level = logging.INFO if self.status else logging.DEBUG  # 0: it was stopped, or stopped cleanly
            logger.log(level, "upstream %s %s", self.upstream, self.exited(), extra={"upstream": self.upstream})
            self.ended.set()
            return
        if line:
            self.last.append(line)
            logger.info("[%s] %s", self.upstream, line, extra={"upstream": self.upstream})


def _killed_by(status: int) -> signal.Signals | None:
    """The signal a shell's exit ``status`` says its command died of (128 + N), or None."""
    if status <= 128:
        return None
    try:
        return signal.Signals(status - 128)
    except ValueError:
        return None
