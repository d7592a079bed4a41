"""``/oauth/callback``: where a user's browser comes back from connecting their own upstream account.

Reached without a bearer token (the browser has none): everything it may do is finish a flow a principal's
call started (:mod:`conduit.upstream.on_demand`), once, within its time. The answer is a small page saying what
happened in plain words: no script, no third-party asset, a strict Content-Security-Policy, never a token. A
client address sending more than :data:`PER_MINUTE` callbacks a minute is answered 429 (a request creates no
state: only a principal's call starts a flow).
"""

from __future__ import annotations

import html
import logging
from typing import Final

from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from conduit.errors import ConduitError
from conduit.upstream.on_demand import CALLBACK_PATH, Authorizations

logger = logging.getLogger(__name__)

PER_MINUTE: Final = "30/minute"
HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em}}</style></head>
<body><h1>{title}</h1><p>{text}</p></body></html>
"""


def callback_route(authorizations: Authorizations) -> Route:
    """The route finishing ``authorizations``' flows."""
    limiter = MovingWindowRateLimiter(MemoryStorage())
    limit = parse(PER_MINUTE)

    async def callback(request: Request) -> Response:
        client = request.client.host if request.client is not None else "unknown"
        if not await limiter.hit(limit, "oauth-callback", client):
            return _page(429, "Too many attempts", "Wait a minute, then start again from your client.")
        params = {key: str(value) for key, value in request.query_params.items()}
        try:
            flow = await authorizations.finish(params)
        except ConduitError as exc:
            logger.warning("connection callback refused: %s", exc.message)
            return _page(400, "Not connected", exc.message)
        text = f"Your account on {flow.upstream} is connected. You can close this page and go back to your client."
        return _page(200, "Connected", text)

    return Route(CALLBACK_PATH, callback, methods=["GET"])


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = PAGE.format(title=html.escape(title), text=html.escape(text))
    return HTMLResponse(body, status_code=status, headers=HEADERS)
