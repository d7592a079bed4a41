"""Leaving a load balancer's rotation without losing a request: what SIGTERM starts on the HTTP front end.

1. ``/ready`` answers 503 at once, so the balancer (or Kubernetes) stops sending new requests here;
2. for ``http.drainDelayMs`` new requests are still served, since the balancer needs that long to notice;
3. then new MCP requests that would start work (an execution, a tool call) get 503 with ``Retry-After``
   and a JSON-RPC error (nothing has run, so a retry elsewhere is safe), while requests in flight finish,
   for up to ``http.drainTimeoutMs``. Requests that start nothing are still served: listing tools, pings,
   disclosure, a run's status or cancel, a later round of a run already here, notifications, a session's
   DELETE. A client that has just had its answer often lists tools next (the official client does, to
   check the result against the tool's output schema): refusing that would turn an answered run into a
   failure, and a retry elsewhere into a second run;
4. once nothing has been in flight for :data:`LINGER_S` (a client that has just had its last answer gets
   its follow-up list or status read served), or at the timeout, the server stops (and whatever still runs
   is cancelled, its sandboxes killed).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from conduit.config.schema import HttpConfig
from conduit.errors import BUSY
from conduit.transport.body import messages

logger = logging.getLogger(__name__)

RETRY_AFTER_S: Final = 1
"""What a refused client is told to wait: another replica can take the request at once."""
LINGER_S: Final = 0.5
"""How long the drain waits with nothing in flight before the server stops: the follow-up of a client
that has just had its answer (the official client lists tools next) comes within it."""


class Drain:
    """The drain state of one server, and the requests in flight on it."""

    def __init__(self, config: HttpConfig) -> None:
        self.delay_s = config.drain_delay_ms / 1000
        self.timeout_s = config.drain_timeout_ms / 1000
        self.draining = False
        """SIGTERM arrived: ``/ready`` answers 503."""
        self.refusing = False
        """The delay is over: new requests are refused."""
        self.in_flight = 0
        self.served = 0
        """Requests let in so far (a count that moves tells the drain a client is still talking)."""
        self._idle = anyio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.in_flight += 1
        self.served += 1
        self._idle = anyio.Event() if self.in_flight == 1 else self._idle

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def _settled(self) -> None:
        """Return once nothing has been in flight, and nothing new has come, for :data:`LINGER_S`."""
        while True:
            await self._idle.wait()
            served = self.served
            await anyio.sleep(LINGER_S)
            if self.in_flight == 0 and self.served == served:
                return

    async def run(self) -> None:
        """Steps 1 to 3; returns when the server may stop."""
        started = time.monotonic()
        self.draining = True
        logger.info("draining: /ready answers 503; new work accepted for %.1f s more", self.delay_s)
        await anyio.sleep(self.delay_s)
        self.refusing = True
        logger.info(
            "draining: new requests refused; waiting for %d in flight (at most %.1f s)", self.in_flight, self.timeout_s
        )
        with anyio.move_on_after(self.timeout_s) as waited:
            await self._settled()
        if waited.cancelled_caught:
            logger.warning("drain timeout: %d requests still in flight are cancelled", self.in_flight)
        logger.info("drained in %.1f s", time.monotonic() - started)


class DrainGate:
    """ASGI middleware in front of the MCP app: counts requests (POSTs) in flight and, once draining, refuses
    those whose messages ``starts_work`` says would start work."""

    def __init__(self, app: ASGIApp, drain: Drain, starts_work: Callable[[Mapping[str, Any]], bool]) -> None:
        self.app = app
        self.drain = drain
        self.starts_work = starts_work

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":  # a GET event stream is no work to wait for: it ends with the server
            await self.app(scope, receive, send)
            return
        if self.drain.refusing:
            parsed, receive = await messages(scope, receive)
            if parsed is None:
                return
            if any(self.starts_work(message) for message in parsed):
                await _refuse(send)
                return
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.leave()


async def _refuse(send: Send) -> None:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": BUSY, "message": "this replica is shutting down; nothing was run, retry"},
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
