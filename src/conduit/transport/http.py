"""Serving an ASGI app over HTTP with uvicorn, on a socket bound here (the callers' door is ``conduit.auth.http``)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final

import anyio
import uvicorn
from starlette.types import ASGIApp

from conduit.errors import ListenError

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S: Final = 5
"""How long a stopped server waits for open requests before closing them."""


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: it re-raises SIGTERM and SIGINT once it has shut down,
    which ends the process before the gateway has closed (sandboxes, upstreams, cgroups). The caller
    stops the server by cancelling :func:`serve_http` (see ``conduit.server``)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_http(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    log_level: str,
    announce: str = "Conduit listening on {url}/mcp",
    trusted_proxies: Sequence[str] = (),
    listener: str = "the MCP endpoint",
    moved_by: str = "--port N (port: in the config, PORT in the environment; 0 picks a free port)",
    on_bound: Callable[[str], None] | None = None,
) -> None:
    """Serve ``app`` with uvicorn until stopped; prints ``announce`` (with ``{url}``) on stderr once bound.

    ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed from ``trusted_proxies`` only (uvicorn's
    own default would believe any loopback client: one could pose as another address).

    ``on_bound`` is told the base URL once the socket is bound.

    Raises:
        ListenError: the address cannot be bound; the message names ``listener`` and what moves it (``moved_by``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it. Without it, a response written in two parts on a kept-alive
    # connection waits for the client's delayed ACK: ~40 ms on every request after a connection's first.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = (exc.strerror or str(exc)).lower()
        raise ListenError(f"cannot listen on {host}:{port} for {listener}: {why}; move it with {moved_by}") from None
    sock.listen(128)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        log_config=None,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=list(trusted_proxies),
    )
    server = _Server(config)
    url = f"http://{shown}:{bound_port}"
    if on_bound is not None:
        on_bound(url)
    print(announce.format(url=url), file=sys.stderr, flush=True)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(serving)
    finally:
        # Cancelled (the other front end ended): stop the way a signal would, so the app's lifespan
        # shuts down cleanly instead of being cancelled mid-wait (uvicorn logged that as an error).
        server.should_exit = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE_S + 1):
            await asyncio.wait([serving])
        if not serving.done():
            serving.cancel()
        sock.close()
