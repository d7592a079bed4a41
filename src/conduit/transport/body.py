"""Request bodies on the HTTP front end: one ceiling for all of them, and a POST's JSON-RPC messages read once.

Every HTTP request's body passes the SDK's ``RequestBodyLimitMiddleware`` first (``http.maxBodyBytes``,
:func:`limited`): a body declared or streamed past the ceiling is answered 413 before anything else reads
or parses it, and nothing beyond the ceiling is ever buffered. Middlewares that need to know what a POST
asks for (which requests a dropped client leaves behind, whether a request starts work during a drain)
take its messages from :func:`messages`, which reads the body once per request, parses it once, keeps
both in the request's scope and gives back a ``receive`` that replays the body to the app. A body that
is not JSON, or JSON nested too deep for the parser, has no messages: the SDK answers it with a JSON-RPC
parse error (400), and no middleware trips over it.
"""

from __future__ import annotations

import json
from typing import Any, Final

from mcp.server.transport_security import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope

_KEY: Final = "conduit.body"
"""Where a request's body and its messages are kept in its scope, once read."""


def limited(app: ASGIApp, max_body_bytes: int) -> ASGIApp:
    """``app`` behind the request-body ceiling (413 past it, nothing buffered beyond it)."""
    return RequestBodyLimitMiddleware(app, max_body_bytes)


async def messages(scope: Scope, receive: Receive) -> tuple[list[dict[str, Any]] | None, Receive]:
    """A POST's JSON-RPC messages (requests, notifications, responses: each a JSON object) and a ``receive``
    that gives the app the body again; None when the client went away before its body was complete.

    Unparseable or too-deep JSON yields no messages (the app answers it).
    """
    kept = scope.get(_KEY)
    if kept is None:
        body, complete = await _read(receive)
        if not complete:
            return None, receive
        kept = scope[_KEY] = (body, _parse(body))
    body, parsed = kept
    return parsed, replaying(body, receive)


def replaying(body: bytes, then: Receive) -> Receive:
    """A ``receive`` that gives ``body`` whole, then whatever ``then`` gives."""
    given = False

    async def receive() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive


def request_ids(parsed: list[dict[str, Any]]) -> list[Any]:
    """Ids of the requests (not notifications or responses) among ``parsed``."""
    return [message["id"] for message in parsed if "method" in message and isinstance(message.get("id"), (str, int))]


async def _read(receive: Receive) -> tuple[bytes, bool]:
    """The body (within the ceiling the outer middleware keeps), and whether it arrived whole."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _parse(body: bytes) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-RPC message or batch; none for anything else.

    >>> _parse(b'[{"jsonrpc": "2.0", "method": "ping", "id": 1}, 3]')
    [{'jsonrpc': '2.0', 'method': 'ping', 'id': 1}]
    >>> _parse(b"[" * 100_000 + b"]" * 100_000)
    []
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        return []
    items = document if isinstance(document, list) else [document]
    return [item for item in items if isinstance(item, dict)]
