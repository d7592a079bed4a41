"""The one-shot loopback HTTP listener that receives the authorization server's redirect.

Bound to a loopback address before the authorization URL is built (so the redirect URI
names the real port); it answers one request on its callback path and then stops.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import parse_qs, urlsplit

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream

CALLBACK_PATH: Final = "/callback"
_MAX_REQUEST: Final = 16 * 1024


@dataclass(frozen=True)
class Callback:
    """The query parameters of the redirect (``code``, ``state``, or ``error``...)."""

    params: dict[str, str]


class LoopbackReceiver:
    """Waits for the redirect to ``redirect_uri``."""

    def __init__(self, listener: SocketListener, host: str) -> None:
        port = listener.extra(SocketAttribute.local_port)
        self._listener = listener
        shown = f"[{host}]" if ":" in host else host
        self.redirect_uri = f"http://{shown}:{port}{CALLBACK_PATH}"

    async def receive(self) -> Callback:
        """The first request to the callback path (others get 404 and are ignored)."""
        while True:
            stream = await self._listener.accept()
            async with stream:
                with anyio.move_on_after(10):
                    callback = await _serve_one(stream)
                    if callback is not None:
                        return callback


@asynccontextmanager
async def loopback_receiver(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[LoopbackReceiver]:
    """A :class:`LoopbackReceiver` listening on ``host:port`` (0 picks a free port) until the block ends."""
    multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with multi:
        yield LoopbackReceiver(cast(SocketListener, multi.listeners[0]), host)


async def _serve_one(stream: SocketStream) -> Callback | None:
    request = b""
    while b"\r\n\r\n" not in request and len(request) < _MAX_REQUEST:
        try:
            request += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
    line = request.split(b"\r\n", 1)[0].decode("latin-1")
    method, _, rest = line.partition(" ")
    target = rest.rpartition(" ")[0] or rest
    parts = urlsplit(target)
    if method != "GET" or parts.path != CALLBACK_PATH:
        await _respond(stream, 404, "Not found", "This address only receives Conduit's OAuth redirect.")
        return None
    params = {key: values[0] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
    if "error" in params:
        said = f"The server said: {params['error']}. Back to the terminal."
        await _respond(stream, 200, "Authorization failed", said)
    else:
        await _respond(stream, 200, "Conduit is authorized", "You can close this window and return to the terminal.")
    return Callback(params)


async def _respond(stream: SocketStream, status: int, title: str, text: str) -> None:
    body = (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    ).encode()
    reason = {200: "OK", 404: "Not Found"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        await stream.send(head + body)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
