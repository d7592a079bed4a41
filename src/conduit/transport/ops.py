"""The ops endpoints: ``/live``, ``/ready``, ``/health`` and ``/metrics`` (and ``/``, a page linking them).

``/live`` is 200 while the process serves (a liveness probe: restart it when not). ``/ready`` is 200
until SIGTERM starts the drain (a readiness probe: a load balancer sends requests only while it is);
an upstream that is down does not make a replica unready, since every replica shares that upstream.
``/health`` is diagnostic: 200 or 503 with each runtime's, upstream's and wall's status.
"""

from __future__ import annotations

from typing import Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from conduit.core.gateway import Gateway
from conduit.observability.metrics import CONTENT_TYPE
from conduit.transport.drain import Drain

INDEX: Final = """<!doctype html>
<title>Conduit ops</title>
<h1>Conduit ops</h1>
<ul>
<li><a href="/health">/health</a>: each runtime, upstream and wall, 200 or 503 with the reasons</li>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="/ready">/ready</a>: the readiness probe (503 while draining)</li>
<li><a href="/live">/live</a>: the liveness probe</li>
</ul>
<p>MCP itself is served on the main port, at <code>/mcp</code>.</p>
"""
"""What the ops port's ``/`` answers: where everything else is."""


class _JSONLine(JSONResponse):
    """JSON ending in a newline: ``curl`` of an ops endpoint leaves the terminal's prompt on a line of its own."""

    def render(self, content: object) -> bytes:
        return super().render(content) + b"\n"


def build_ops_app(gateway: Gateway, drain: Drain | None = None) -> Starlette:
    async def live(request: Request) -> _JSONLine:
        return _JSONLine({"status": "live"})

    async def ready(request: Request) -> _JSONLine:
        if drain is not None and drain.draining:
            return _JSONLine({"status": "draining", "inFlight": drain.in_flight}, status_code=503)
        return _JSONLine({"status": "ready"})

    async def health(request: Request) -> _JSONLine:
        healthy, report = gateway.health()
        return _JSONLine(report, status_code=200 if healthy else 503)

    async def metrics(request: Request) -> Response:
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(INDEX)

    routes = [
        Route("/", index),
        Route("/live", live),
        Route("/ready", ready),
        Route("/health", health),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes)
