"""The ``http`` upstream transport: each JSON-RPC message is one POST, each answer one JSON body.

For servers that speak MCP's JSON-RPC over plain request/response HTTP (no SSE, no stream).
It presents the same pair of message streams as the SDK's transports, so the official
client runs on top unchanged. A session id the server hands out is sent back on every
later request. Network failures and unusable answers become JSON-RPC errors for the
request that caused them, so a caller never waits for an answer that will not come.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import anyio
import httpx2
from mcp.client._transport import TransportStreams
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import CONNECTION_CLOSED, ErrorData, JSONRPCError, JSONRPCRequest, jsonrpc_message_adapter
from pydantic import ValidationError

from conduit.errors import UPSTREAM_ERROR

logger = logging.getLogger(__name__)

_SESSION_HEADER: Final = "mcp-session-id"
_BUFFER: Final = 64


@asynccontextmanager
async def plain_http_client(url: str, http: httpx2.AsyncClient) -> AsyncIterator[TransportStreams]:
    """Message streams to the JSON-RPC endpoint ``url``, carried by ``http``."""
    to_client, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](_BUFFER)
    to_server, from_client = anyio.create_memory_object_stream[SessionMessage](_BUFFER)
    session: dict[str, str] = {}

    async def fail(request_id: str | int, code: int, message: str) -> None:
        error = JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message))
        await to_client.send(SessionMessage(error))

    async def post(message: SessionMessage) -> None:
        request_id = message.message.id if isinstance(message.message, JSONRPCRequest) else None
        headers = {"Accept": "application/json", "Content-Type": "application/json", **session}
        if isinstance(message.metadata, ClientMessageMetadata) and message.metadata.headers:
            headers |= message.metadata.headers
        body = message.message.model_dump_json(by_alias=True, exclude_unset=True)
        try:
            response = await http.post(url, content=body, headers=headers)
            content = await response.aread()
        except httpx2.HTTPError as exc:
            if request_id is not None:
                await fail(request_id, CONNECTION_CLOSED, f"HTTP request failed: {exc}")
            return
        if response.headers.get(_SESSION_HEADER):
            session[_SESSION_HEADER] = response.headers[_SESSION_HEADER]
        if request_id is None:
            return  # a notification or a response: nothing comes back
        if response.status_code != 200:
            await fail(request_id, UPSTREAM_ERROR, f"HTTP {response.status_code} from the upstream")
            return
        try:
            answer = jsonrpc_message_adapter.validate_json(content, by_name=False)
        except ValidationError:
            await fail(request_id, UPSTREAM_ERROR, "the upstream answered with something that is not JSON-RPC")
            return
        await to_client.send(SessionMessage(answer))

    async def pump() -> None:
        async with from_client, anyio.create_task_group() as requests:
            async for message in from_client:
                requests.start_soon(post, message)  # requests may run concurrently, like on any transport

    async with to_client, anyio.create_task_group() as tg:
        tg.start_soon(pump)
        try:
            yield from_server, to_server
        finally:
            tg.cancel_scope.cancel()
