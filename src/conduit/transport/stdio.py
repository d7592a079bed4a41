"""stdio front end: MCP messages over the process's stdin and stdout, answering lines that are not JSON-RPC.

When stdin and stdout are pipes or sockets (an MCP client spawned Conduit), they are read and written
by the event loop itself: the SDK's stdio transport reads and writes through a worker thread, several
hand-offs per request (~0.5 ms of CPU each request on this machine class, measured). On anything else
(a terminal, a file) the SDK's transport is used. Either way the protocol owns private duplicates of the
two descriptors, and fd 1 is pointed at stderr for as long as it serves, so a stray ``print`` cannot
corrupt the protocol.

The SDK drops an unparseable line silently; a client then waits forever for an answer. JSON-RPC 2.0 says
such a line gets a parse error with ``"id": null``, so this front end answers it and keeps the session going.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.stdio import stdio_server
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


@asynccontextmanager
async def stdio_streams() -> AsyncIterator[Streams]:
    """stdin/stdout as MCP message streams; malformed lines are answered, not passed on."""
    if _pipe_or_socket(0) and _pipe_or_socket(1):
        async with _loop_streams() as streams:
            yield streams
        return
    async with _sdk_streams() as streams:
        yield streams


@asynccontextmanager
async def _loop_streams() -> AsyncIterator[Streams]:
    """stdin and stdout read and written by the event loop (non-blocking pipes, no threads)."""
    loop = asyncio.get_running_loop()
    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    diversion = os.open(os.devnull, os.O_RDONLY)
    os.dup2(diversion, 0)
    os.dup2(2, 1)  # stray prints go to stderr from now on
    os.close(diversion)
    reader = asyncio.StreamReader(limit=MAX_LINE)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
    )
    write_transport, write_protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(wire_out, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
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

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_lines)
            tg.start_soon(write_lines)
            try:
                yield received, outgoing
            finally:
                tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(Exception):
            if not write_transport.is_closing():
                await writer.drain()
        read_transport.close()
        write_transport.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)


@asynccontextmanager
async def _sdk_streams() -> AsyncIterator[Streams]:
    """The SDK's stdio transport (threads), with malformed lines answered."""
    async with stdio_server() as (raw_read, write):
        send, receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def filter_input() -> None:
            async with send:
                async for item in raw_read:
                    if isinstance(item, Exception):
                        logger.warning("malformed message on stdin answered with a parse error")
                        await write.send(parse_error(item))
                    else:
                        await send.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(filter_input)
            try:
                yield receive, write
            finally:
                tg.cancel_scope.cancel()
