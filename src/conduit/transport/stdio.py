"""stdio front end: the SDK's stdio transport, plus answers to lines that are not JSON-RPC.

The SDK drops an unparseable line silently; a client then waits forever for an answer.
JSON-RPC 2.0 says such a line gets a parse error with ``"id": null``, so this front end
answers it and keeps the session going.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

from conduit.errors import PARSE_ERROR

logger = logging.getLogger(__name__)


def parse_error(exc: Exception) -> SessionMessage:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    error = types.ErrorData(code=PARSE_ERROR, message=f"Parse error: not a JSON-RPC 2.0 message ({reason})")
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=None, error=error))


@asynccontextmanager
async def stdio_streams() -> AsyncIterator[
    tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
]:
    """stdin/stdout as MCP message streams; malformed lines are answered, not passed on."""
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
