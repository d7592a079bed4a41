"""Cancel the requests of an HTTP client that goes away before their responses are sent.

The SDK's Streamable HTTP transport keeps a request running when its POST connection drops
(a client could resume it from an event store; Conduit configures none, so nobody can). For
an execution that means a sandbox spinning until its timeout with a concurrency slot held.
This middleware watches each POST that carries JSON-RPC requests; when the client
disconnects before the response body is complete, it sends the session a
``notifications/cancelled`` for each of them through the same app, so a dropped client
takes exactly the path an explicit cancellation takes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

_SESSION_HEADER = b"mcp-session-id"


class CancelOnDisconnect:
    """ASGI middleware: a POST whose client disconnects early has its JSON-RPC requests cancelled."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not _header(scope, _SESSION_HEADER):
            await self._app(scope, receive, send)
            return
        body, ended = await _read_body(receive)
        request_ids = _request_ids(body)
        replayed = False
        disconnected = ended
        completed = False

        async def replay() -> Message:
            nonlocal replayed, disconnected
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def watch(message: Message) -> None:
            nonlocal completed
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True
            await send(message)

        try:
            await self._app(scope, replay, watch)
        finally:
            if disconnected and not completed and request_ids:
                for request_id in request_ids:
                    await self._cancel(scope, request_id)

    async def _cancel(self, scope: Scope, request_id: Any) -> None:
        logger.info("client disconnected; cancelling request %s", request_id)
        notice = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": request_id, "reason": "client disconnected"},
        }
        body = json.dumps(notice).encode()
        headers = [(k, v) for k, v in scope.get("headers", ()) if k not in (b"content-length", b"content-type")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def discard(message: Message) -> None:
            return None

        try:
            await self._app({**scope, "headers": headers}, receive, discard)
        except Exception:  # the session may be gone already; nothing is left to cancel then
            logger.debug("cancelling request %s failed", request_id, exc_info=True)


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole request body, and whether the client disconnected while sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _request_ids(body: bytes) -> list[Any]:
    """Ids of the JSON-RPC requests (not notifications or responses) in a POST body."""
    try:
        document = json.loads(body)
    except ValueError:
        return []
    messages = document if isinstance(document, list) else [document]
    return [
        message["id"]
        for message in messages
        if isinstance(message, dict) and "method" in message and isinstance(message.get("id"), (str, int))
    ]


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None
