"""The ops endpoints: ``/health`` (200 or 503 with per-runtime and per-upstream status) and ``/metrics``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conduit.core.gateway import Gateway
from conduit.observability.metrics import CONTENT_TYPE


def build_ops_app(gateway: Gateway) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        healthy, report = gateway.health()
        return JSONResponse(report, status_code=200 if healthy else 503)

    async def metrics(request: Request) -> Response:
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/health", health), Route("/metrics", metrics)])
