"""stdio front end: MCP messages over the process's stdin and stdout, answering lines that are not JSON-RPC.

When stdin and stdout are pipes or sockets (an MCP client spawned Conduit), the event loop reads and
writes them itself: the SDK's stdio transport goes through a worker thread, several hand-offs per request
(~0.5 ms of CPU each request on this machine class, measured). Anything else (a terminal, a file) is read
by a daemon thread and written directly: a thread blocked reading a terminal cannot be cancelled, and
stopping (end of stdin, SIGTERM, Ctrl-C) must not wait for the next line typed. Either way the protocol
owns private duplicates of the two descriptors, and fd 1 is pointed at stderr for as long as it serves,
so a stray ``print`` cannot corrupt the protocol.

The SDK drops an unparseable line silently; a client then waits forever for an answer. JSON-RPC 2.0 says
such a line gets a parse error with ``"id": null``, so this front end answers it and keeps the session going.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import stat
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from conduit.errors import PARSE_ERROR

logger = logging.getLogger(__name__)

MAX_LINE: Final = 256 * 1024 * 1024
"""Longest message line read from stdin (programs are limited far below this by ``maxCodeBytes``)."""

Streams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


def parse_error(exc: Exception) -> SessionMessage:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    error = types.ErrorData(code=PARSE_ERROR, message=f"Parse error: not a JSON-RPC 2.0 message ({reason})")
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=None, error=error))


def _pipe_or_socket(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class _ThreadLines:
    """Lines of a descriptor the event loop cannot poll (a terminal is, but non-blocking mode would leak
    into the shell sharing it; a file is not), read by a daemon thread. Abandoned, not joined, when the
    session ends: the process can exit while it waits for a line."""

    def __init__(self, fd: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._lines: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._file = os.fdopen(fd, "rb", buffering=0)
        threading.Thread(target=self._pump, name="conduit-stdin", daemon=True).start()

    def _pump(self) -> None:
        buffered = io.BufferedReader(self._file)
        try:
            while True:
                line = buffered.readline(MAX_LINE + 1)
                self._loop.call_soon_threadsafe(self._lines.put_nowait, line)
                if not line:
                    return
        except (OSError, ValueError, RuntimeError) as exc:  # closed under it, or the loop is gone
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._lines.put_nowait, exc)

    async def readline(self) -> bytes:
        line = await self._lines.get()
        if isinstance(line, BaseException):
            return b""
        if len(line) > MAX_LINE:
            raise ValueError(f"a line longer than {MAX_LINE} bytes")
        return line


class _DirectWrites:
    """Writes to a descriptor that is not a pipe (a file or a terminal): they do not block for long."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    async def drain(self) -> None:
        return None


@asynccontextmanager
async def stdio_streams(on_end: Callable[[], None] = lambda: None) -> AsyncIterator[Streams]:
    """stdin/stdout as MCP message streams; malformed lines are answered, not passed on. ``on_end`` is
    called when stdin ends (the client closed its end), before the session winds down."""
    loop = asyncio.get_running_loop()
    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    diversion = os.open(os.devnull, os.O_RDONLY)
    os.dup2(diversion, 0)
    os.dup2(2, 1)  # stray prints go to stderr from now on
    os.close(diversion)
    transports: list[asyncio.BaseTransport] = []
    reader: asyncio.StreamReader | _ThreadLines
    writer: asyncio.StreamWriter | _DirectWrites | None = None
    try:
        if _pipe_or_socket(wire_in):
            stream_reader = asyncio.StreamReader(limit=MAX_LINE)
            read_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(stream_reader),
                os.fdopen(wire_in, "rb", buffering=0),
            )
            transports.append(read_transport)
            reader = stream_reader
        else:
            reader = _ThreadLines(wire_in)
        if _pipe_or_socket(wire_out):
            write_transport, write_protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, os.fdopen(wire_out, "wb", buffering=0)
            )
            transports.append(write_transport)
            writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
        else:
            writer = _DirectWrites(wire_out)
        async with _message_streams(reader, writer, on_end) as streams:
            yield streams
    finally:
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.drain()
        for transport in transports:
            transport.close()
        if not isinstance(writer, asyncio.StreamWriter):
            os.close(wire_out)
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)


@asynccontextmanager
async def _message_streams(
    reader: asyncio.StreamReader | _ThreadLines,
    writer: asyncio.StreamWriter | _DirectWrites,
    on_end: Callable[[], None],
) -> AsyncIterator[Streams]:
    """JSON-RPC messages read as lines from ``reader`` and written as lines to ``writer``."""
    incoming, received = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    outgoing, to_send = anyio.create_memory_object_stream[SessionMessage](0)

    async def write_lines() -> None:
        async with to_send:
            async for message in to_send:
                writer.write(message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")
                await writer.drain()

    async def read_lines() -> None:
        async with incoming:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError) as exc:  # a line longer than MAX_LINE
                    await outgoing.send(parse_error(exc))
                    return
                if not line:
                    on_end()
                    return
                if not line.strip():
                    continue
                try:
                    message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except Exception as exc:  # pydantic says why in many ways; all mean "not a message"
                    logger.warning("malformed message on stdin answered with a parse error")
                    await outgoing.send(parse_error(exc))
                    continue
                await incoming.send(SessionMessage(message))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_lines)
        tg.start_soon(write_lines)
        try:
            yield received, outgoing
        finally:
            tg.cancel_scope.cancel()
