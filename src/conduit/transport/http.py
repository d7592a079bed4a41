"""Streamable HTTP front end: the SDK's ASGI app behind a master-bearer-token check."""

from __future__ import annotations

import json
import logging
import socket
import sys

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from conduit.security.tokens import tokens_equal

logger = logging.getLogger(__name__)


class BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <master token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._authorized(scope):
            body = json.dumps({"error": "unauthorized", "message": "a valid bearer token is required"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer realm="conduit"'),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self._app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and tokens_equal(credentials.strip(), self._token)
        return False


async def serve_http(
    app: ASGIApp, *, host: str, port: int, log_level: str, announce: str = "Conduit listening on {url}/mcp"
) -> None:
    """Serve ``app`` with uvicorn until stopped; prints ``announce`` (with ``{url}``) on stderr once bound.

    Raises:
        OSError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it. Without it, a response written in two parts on a kept-alive
    # connection waits for the client's delayed ACK: ~40 ms on every request after a connection's first.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", log_config=None)
    server = uvicorn.Server(config)
    print(announce.format(url=f"http://{shown}:{bound_port}"), file=sys.stderr, flush=True)
    await server.serve(sockets=[sock])
