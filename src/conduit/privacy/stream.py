"""Tokenising output while it streams: a value cut in two by the way output arrives is still one value.

A program's output reaches the host in chunks of any size (a value can straddle two); live output (progress
notifications, a background run's status, ``conduit run``'s terminal) must be tokenised before anyone sees
it. :class:`TokenizingStream` sits between the sandbox's output and those listeners: each stream's text is
passed on in whole lines, and a line longer than :data:`LONG` in pieces cut where no value can be
straddled (before any value found near the cut; values are far shorter than :data:`HOLD`). It keeps at most
one partial line per stream (bounded by ``LONG + HOLD``), never a second copy of the output. Listeners are
called from the stream's own task, in the order the output arrived.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from conduit.security.personal import Finder

logger = logging.getLogger(__name__)

Listener = Callable[[str, str], None]
"""Gets ``(stream, text)``: ``stdout`` or ``stderr``, and the text."""

LONG: Final = 8192
"""A partial line is passed on once it is this long (its last :data:`HOLD` characters stay)."""
HOLD: Final = 1024
"""What stays of a long partial line: longer than any value a kind finds."""


class TokenizingStream:
    """Output in, tokenised output out to ``listener``."""

    def __init__(self, tokenize: Callable[[str], Awaitable[str]], finder: Finder, listener: Listener) -> None:
        self._tokenize = tokenize
        self._finder = finder
        self._listener: Listener | None = listener
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, str]](math.inf)
        self._partial: dict[str, str] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, tokenize: Callable[[str], Awaitable[str]], finder: Finder, listener: Listener
    ) -> AsyncIterator[Listener]:
        """A listener to feed output to while the block runs; what is left is passed on as it ends."""
        stream = cls(tokenize, finder, listener)
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream._pump, stream._receive)
            try:
                yield stream.feed
            except Exception as exc:  # re-raised below, not wrapped in the task group's ExceptionGroup
                failure = exc
            finally:
                stream._send.close()
        if failure is not None:
            raise failure

    def feed(self, name: str, text: str) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._send.send_nowait((name, text))

    async def _pump(self, receive: MemoryObjectReceiveStream[tuple[str, str]]) -> None:
        async with receive:
            async for name, text in receive:
                batch = [(name, text)]
                with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                    while True:
                        batch.append(receive.receive_nowait())
                for name, text in _merged(batch):
                    await self._pass(name, self._ready(name, text))
        for name, rest in list(self._partial.items()):
            await self._pass(name, rest)

    def _ready(self, name: str, text: str) -> str:
        """What of ``name``'s text can go now; the rest waits for more."""
        buffer = self._partial.pop(name, "") + text
        cut = buffer.rfind("\n") + 1
        if cut == 0 and len(buffer) > LONG:
            cut = len(buffer) - HOLD
            for item in self._finder.find(buffer[cut - HOLD :]):
                start, end = item.start + cut - HOLD, item.end + cut - HOLD
                if start < cut < end:
                    cut = start
                    break
        if cut < len(buffer):
            self._partial[name] = buffer[cut:]
        return buffer[:cut]

    async def _pass(self, name: str, text: str) -> None:
        if not text or self._listener is None:
            return
        try:
            tokenized = await self._tokenize(text)
        except Exception:  # the token map is away (onStoreError: refuse): nothing untokenised goes out live
            logger.warning("live output stops: it cannot be tokenised now", exc_info=True)
            self._listener = None
            return
        try:
            self._listener(name, tokenized)
        except Exception:  # live output is best effort: it must never break the run
            logger.warning("live output listener failed; streaming stops, the run goes on", exc_info=True)
            self._listener = None


def _merged(batch: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Consecutive pieces of one stream as one (fewer rounds to the token map), the order kept."""
    merged: list[tuple[str, list[str]]] = []
    for name, text in batch:
        if merged and merged[-1][0] == name:
            merged[-1][1].append(text)
        else:
            merged.append((name, [text]))
    return [(name, "".join(parts)) for name, parts in merged]
