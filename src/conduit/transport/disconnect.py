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
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conduit.transport.body import messages, replaying, request_ids

logger = logging.getLogger(__name__)

_SESSION_HEADER = b"mcp-session-id"
_GONE: Final = "conduit.client_gone"
"""Set in a request's scope when its client went away: its handler was cancelled for that reason."""


def went_away(scope: Scope) -> bool:
    """Whether the client of the request ``scope`` disconnected before its answer was complete."""
    return bool(scope.get(_GONE))


class CancelOnDisconnect:
    """ASGI middleware: a POST whose client disconnects early has its JSON-RPC requests cancelled."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not _header(scope, _SESSION_HEADER):
            await self._app(scope, receive, send)
            return
        parsed, replay = await messages(scope, receive)
        if parsed is None:  # gone before its body was complete: nothing was asked
            return
        ids = request_ids(parsed)
        disconnected = False
        completed = False

        async def watched() -> Message:
            nonlocal disconnected
            message = await replay()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def watch(message: Message) -> None:
            nonlocal completed
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True
            await send(message)

        try:
            await self._app(scope, watched, watch)
        finally:
            if disconnected and not completed:
                scope[_GONE] = True  # before the cancel: the handler, cancelled, reads why
                for request_id in ids:
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

        async def gone() -> Message:
            return {"type": "http.disconnect"}

        receive = replaying(body, gone)

        async def discard(message: Message) -> None:
            return None

        try:
            await self._app({**scope, "headers": headers}, receive, discard)
        except Exception:  # the session may be gone already; nothing is left to cancel then
            logger.debug("cancelling request %s failed", request_id, exc_info=True)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None
