"""A remote MCP server for tests: Streamable HTTP, SSE or plain JSON-RPC over HTTP, optionally protected.

    python http_upstream.py --transport streamable|sse|plain --auth none|bearer|apikey|oauth|users

Prints ``listening on http://127.0.0.1:PORT`` once bound to a free loopback port. The MCP
endpoint is ``/mcp`` (``/sse`` for SSE). With ``--auth oauth`` the same server is its own
authorization server: ``/token`` grants client-credentials and refresh-token requests,
rotates the refresh token on every use (a reused one is refused and counted) and issues
access tokens that expire after ``--token-lifetime`` seconds. ``/_stats`` reports what
happened; ``/_revoke`` invalidates every access token (the next call gets a 401).

With ``--auth users`` any bearer token starting with ``user-`` is accepted, as one user's own, and
``whoami`` answers with the token of the very request that called it; ``/_stats`` lists every
token that reached ``/mcp``; with ``--authorization-server ISSUER`` too, its 401s point at protected-resource
metadata naming that authorization server (whose tokens the test makes start with ``user-``).

Tools: ``echo``, ``whoami`` (which credential reached the server), ``hang`` (never answers),
``die`` (the server process exits mid-call). ``--garbage`` makes ``/mcp`` answer with bytes
that are not JSON-RPC.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
import time
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp.server import Server
from mcp.server.sse import SseServerTransport
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.subscriptions import ToolsListChanged
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

BEARER = "test-bearer-token-5a8f"
API_KEY = "test-api-key-c3d1"
API_KEY_HEADER = "X-Test-Key"
CLIENT_ID = "conduit-test-client"
CLIENT_SECRET = "test-client-secret-77e0"
FIRST_REFRESH_TOKEN = "refresh-0"

ECHO_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
TOOLS = [
    types.Tool(name="echo", description="Return the text.", input_schema=ECHO_SCHEMA),
    types.Tool(name="whoami", description="Which credential reached the server.", input_schema={"type": "object"}),
    types.Tool(name="hang", description="Never answer.", input_schema={"type": "object"}),
    types.Tool(name="die", description="Exit the server process mid-call.", input_schema={"type": "object"}),
    types.Tool(
        name="grow",
        description="Add a tool named `extra_<n>`; with notify, send notifications/tools/list_changed.",
        input_schema={"type": "object", "properties": {"notify": {"type": "boolean"}}},
    ),
]


class State:
    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self.access: dict[str, float] = {}
        self.refresh = FIRST_REFRESH_TOKEN
        self.grants: list[str] = []
        self.reused_refresh_tokens = 0
        self.unauthorized = 0
        self.credential = ""
        self.auth = "none"
        self.tokens_seen: list[str] = []
        self.extra_tools: list[types.Tool] = []
        self.authorization_server: str | None = None
        """``--authorization-server``: its 401s point at protected-resource metadata naming this issuer."""
        self.bus = InMemorySubscriptionBus()


def build_server(state: State) -> Server:
    async def list_tools(ctx: object, params: object) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS + state.extra_tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = params.arguments or {}
        if params.name == "echo":
            text = str(args.get("text", ""))
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=text)], structured_content={"text": text}
            )
        if params.name == "whoami":
            credential = state.credential
            headers = getattr(getattr(ctx, "request", None), "headers", None)
            if state.auth == "users" and headers is not None:  # this request's own token, not the last one seen
                credential = credential_of(dict(headers), "users", state) or "none"
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=credential)],
                structured_content={"credential": credential},
            )
        if params.name == "hang":
            await anyio.sleep_forever()
        if params.name == "die":
            os._exit(3)
        if params.name == "grow":
            name = f"extra_{len(state.extra_tools) + 1}"
            state.extra_tools.append(types.Tool(name=name, description="Added at run time.", input_schema=ECHO_SCHEMA))
            if args.get("notify"):
                await state.bus.publish(ToolsListChanged())  # 2026-07-28 sessions: subscriptions/listen
            return types.CallToolResult(content=[types.TextContent(type="text", text=name)])
        if params.name.startswith("extra_"):
            return types.CallToolResult(content=[types.TextContent(type="text", text=params.name)])
        return types.CallToolResult(content=[types.TextContent(type="text", text="unknown tool")], is_error=True)

    return Server(
        "http-upstream",
        version="1.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_subscriptions_listen=ListenHandler(state.bus),
    )


def _origin(scope: Any) -> str:
    host = dict(scope["headers"]).get(b"host", b"127.0.0.1").decode("latin-1")
    return f"http://{host}"


def credential_of(request_headers: dict[str, str], auth: str, state: State) -> str | None:
    """Which credential the request carries, if it is valid for ``auth``."""
    if auth == "none":
        return "anonymous"
    if auth == "apikey":
        return "api-key" if request_headers.get(API_KEY_HEADER.lower()) == API_KEY else None
    scheme, _, token = request_headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    if auth == "bearer":
        return "bearer" if token == BEARER else None
    if auth == "users":
        return token if token.startswith("user-") else None
    expires = state.access.get(token)
    return "oauth" if expires is not None and time.monotonic() < expires else None


class Protected:
    """ASGI middleware: the MCP endpoints need the configured credential."""

    def __init__(self, app: Any, auth: str, state: State) -> None:
        self.app, self.auth, self.state = app, auth, state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(("/token", "/_", "/.well-known/")):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            credential = credential_of(headers, self.auth, self.state)
            if credential is None:
                self.state.unauthorized += 1
                headers = {}
                if self.state.authorization_server is not None:
                    metadata = f"{_origin(scope)}/.well-known/oauth-protected-resource/mcp"
                    headers["WWW-Authenticate"] = f'Bearer resource_metadata="{metadata}"'
                await JSONResponse({"error": "unauthorized"}, status_code=401, headers=headers)(scope, receive, send)
                return
            self.state.credential = credential
            if self.auth == "users" and scope["path"].startswith("/mcp"):
                self.state.tokens_seen.append(credential)
        await self.app(scope, receive, send)


def build_app(transport: str, auth: str, state: State, garbage: bool) -> Any:
    server = build_server(state)
    routes: list[Any] = []

    async def token(request: Request) -> Response:
        form = (
            dict(await request.form())
            if "json" not in request.headers.get("content-type", "")
            else await request.json()
        )
        if form.get("client_id") != CLIENT_ID:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        grant = form.get("grant_type")
        if grant == "client_credentials":
            if form.get("client_secret") != CLIENT_SECRET:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
        elif grant == "refresh_token":
            if form.get("refresh_token") != state.refresh:
                state.reused_refresh_tokens += 1
                return JSONResponse({"error": "invalid_grant", "error_description": "refresh token reused"}, 400)
            state.refresh = f"refresh-{len(state.grants) + 1}-{secrets.token_hex(4)}"
        else:
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        state.grants.append(f"{grant}:{form.get('resource', '')}")
        access = "access-" + secrets.token_hex(8)
        state.access[access] = time.monotonic() + state.lifetime
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": state.lifetime}
        if grant == "refresh_token":
            body["refresh_token"] = state.refresh
        return JSONResponse(body)

    async def stats(request: Request) -> Response:
        return JSONResponse(
            {
                "grants": state.grants,
                "reused_refresh_tokens": state.reused_refresh_tokens,
                "unauthorized": state.unauthorized,
                "tokens": sorted(set(state.tokens_seen)),
            }
        )

    async def revoke(request: Request) -> Response:
        state.access.clear()
        return JSONResponse({"revoked": True})

    async def protected_resource(request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"resource": f"{base}/mcp", "authorization_servers": [state.authorization_server]})

    routes += [
        Route("/token", token, methods=["POST"]),
        Route("/_stats", stats),
        Route("/_revoke", revoke, methods=["POST"]),
    ]
    if state.authorization_server is not None:
        routes.append(Route("/.well-known/oauth-protected-resource/mcp", protected_resource))
    if garbage:

        async def nonsense(request: Request) -> Response:
            return Response(b"\x00\xffthis is not json-rpc", media_type="application/json")

        routes.append(Route("/mcp", nonsense, methods=["GET", "POST", "DELETE"]))
        app: Any = Starlette(routes=routes)
    elif transport == "sse":
        sse = SseServerTransport("/messages/")

        async def handle_sse(request: Request) -> Response:
            async with sse.connect_sse(request.scope, request.receive, request._send) as (read, write):
                await server.run(read, write, server.create_initialization_options())
            return Response()

        routes += [Route("/sse", handle_sse), Mount("/messages/", app=sse.handle_post_message)]
        app = Starlette(routes=routes)
    else:
        plain = transport == "plain"
        mcp_app = server.streamable_http_app(json_response=plain, stateless_http=plain)
        mcp_app.router.routes.extend(routes)
        app = mcp_app
    return Protected(app, auth, state)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", choices=["streamable", "sse", "plain"], default="streamable")
    parser.add_argument("--auth", choices=["none", "bearer", "apikey", "oauth", "users"], default="none")
    parser.add_argument("--token-lifetime", type=float, default=3600.0)
    parser.add_argument("--garbage", action="store_true")
    parser.add_argument("--authorization-server", metavar="ISSUER", help="name it in protected-resource metadata")
    args = parser.parse_args()
    state = State(args.token_lifetime)
    state.auth = args.auth
    state.authorization_server = args.authorization_server
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(
        build_app(args.transport, args.auth, state, args.garbage), log_level="warning", lifespan="on", log_config=None
    )
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    sys.exit(0)


if __name__ == "__main__":
    main()
