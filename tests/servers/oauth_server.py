"""A small OAuth 2.1 authorization server and protected MCP resource, for testing `conduit auth`.

It plays both roles on one origin: ``/mcp`` answers 401 pointing at its protected-resource
metadata, and the authorization server lives under the issuer path ``/tenant`` (so the
RFC 8414 well-known URL needs the path inserted). ``/tenant/authorize`` consents at once
(the test is the browser); ``/tenant/token`` checks the PKCE verifier against the challenge
it stored and refuses anything that does not match; it also grants token exchange (RFC 8693) to the clients
``state.exchange_clients`` names. ``state`` records what happened.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from support import wait_until


@dataclass
class Issued:
    client_id: str
    redirect_uri: str
    challenge: str
    resource: str | None
    scope: str | None


@dataclass
class AuthServerState:
    clients: dict[str, list[str]] = field(default_factory=dict)
    codes: dict[str, Issued] = field(default_factory=dict)
    pkce_checks: list[bool] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    refresh_token: str = field(default_factory=lambda: "rt-" + secrets.token_urlsafe(16))
    advertise_s256: bool = True
    loopback_clients: set[str] = field(default_factory=set)
    """Pre-registered native clients: any loopback redirect, any port (RFC 8252, section 7.3)."""
    exchange_clients: dict[str, str] = field(default_factory=dict)
    """Clients allowed the token-exchange grant (RFC 8693), with their secrets."""
    exchange_lifetime_s: int = 3600
    exchanged: list[dict[str, str]] = field(default_factory=list)
    """Every token exchange granted: the subject token's ``sub``, the audience, the token issued."""
    refused_subjects: set[str] = field(default_factory=set)
    """Subjects whose tokens the exchange refuses (invalid_grant)."""
    token_prefix: str = "at-"
    """How issued access tokens start (``user-`` for tests/servers/http_upstream.py's ``--auth users``)."""
    iss_parameter: bool = False
    """Advertise and send the ``iss`` authorization response parameter (RFC 9207)."""
    consent: str = "accept"
    """What the user does at the consent step: ``accept``, or an OAuth error such as ``access_denied``."""
    authorizations: list[dict[str, str]] = field(default_factory=list)
    """Every authorization request, as received."""


@dataclass
class AuthServer:
    """A running authorization server: its origin and what it saw."""

    url: str
    state: AuthServerState


@asynccontextmanager
async def running(state: AuthServerState) -> AsyncIterator[AuthServer]:
    """The server on a free loopback port, in this process, while the block runs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(build_app(state), log_level="warning", lifespan="off", log_config=None))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        await wait_until(lambda: server.started, interval=0.01)
        yield AuthServer(f"http://127.0.0.1:{sock.getsockname()[1]}", state)
        server.should_exit = True


def build_app(state: AuthServerState) -> Starlette:
    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def mcp(request: Request) -> Response:
        metadata = f"{base(request)}/.well-known/oauth-protected-resource/mcp"
        return JSONResponse(
            {"error": "unauthorized"},
            status_code=401,
            headers={"WWW-Authenticate": f'Bearer realm="mcp", resource_metadata="{metadata}"'},
        )

    async def protected_resource(request: Request) -> Response:
        return JSONResponse(
            {
                "resource": f"{base(request)}/mcp",
                "authorization_servers": [f"{base(request)}/tenant"],
                "scopes_supported": ["mcp:tools"],
            }
        )

    async def authorization_server(request: Request) -> Response:
        issuer = f"{base(request)}/tenant"
        document: dict[str, Any] = {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "registration_endpoint": f"{issuer}/register",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["none"],
        }
        if state.iss_parameter:
            document["authorization_response_iss_parameter_supported"] = True
        if state.advertise_s256:
            document["code_challenge_methods_supported"] = ["S256"]
        return JSONResponse(document)

    async def register(request: Request) -> Response:
        metadata = await request.json()
        redirect_uris = metadata.get("redirect_uris")
        if not isinstance(redirect_uris, list) or not redirect_uris:
            return JSONResponse({"error": "invalid_redirect_uri"}, status_code=400)
        client_id = "client-" + secrets.token_hex(6)
        state.clients[client_id] = redirect_uris
        return JSONResponse({"client_id": client_id, **metadata}, status_code=201)

    async def authorize(request: Request) -> Response:
        query = request.query_params
        state.authorizations.append(dict(query))
        client_id, redirect_uri = query.get("client_id", ""), query.get("redirect_uri", "")
        loopback = client_id in state.loopback_clients and urlsplit(redirect_uri).hostname == "127.0.0.1"
        if redirect_uri not in state.clients.get(client_id, []) and not loopback:
            return JSONResponse({"error": "invalid_request", "error_description": "unknown redirect"}, 400)
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return _redirect(redirect_uri, {"error": "invalid_request", "state": query.get("state", "")})
        iss = {"iss": f"{base(request)}/tenant"} if state.iss_parameter else {}
        if state.consent != "accept":
            return _redirect(redirect_uri, {"error": state.consent, "state": query.get("state", ""), **iss})
        code = secrets.token_urlsafe(16)
        state.codes[code] = Issued(
            client_id, redirect_uri, query["code_challenge"], query.get("resource"), query.get("scope")
        )
        return _redirect(redirect_uri, {"code": code, "state": query.get("state", ""), **iss})

    async def token(request: Request) -> Response:
        form = {key: str(value) for key, value in (await request.form()).items()}
        state.token_requests.append(form)
        if form.get("grant_type") == TOKEN_EXCHANGE:
            return _exchange(state, form)
        if form.get("grant_type") == "refresh_token":
            if form.get("refresh_token") != state.refresh_token:
                return JSONResponse({"error": "invalid_grant", "error_description": "unknown refresh token"}, 400)
            return JSONResponse(
                {
                    "access_token": state.token_prefix + secrets.token_urlsafe(16),
                    "token_type": "Bearer",
                    "expires_in": 3600,
                },
                headers={"Cache-Control": "no-store"},
            )
        issued = state.codes.pop(form.get("code", ""), None)  # single use
        if form.get("grant_type") != "authorization_code" or issued is None:
            return JSONResponse({"error": "invalid_grant", "error_description": "unknown code"}, 400)
        if form.get("client_id") != issued.client_id or form.get("redirect_uri") != issued.redirect_uri:
            return JSONResponse({"error": "invalid_grant", "error_description": "client or redirect mismatch"}, 400)
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        verified = base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == issued.challenge
        state.pkce_checks.append(verified)
        if not verified:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE verification failed"}, 400)
        return JSONResponse(
            {
                "access_token": state.token_prefix + secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": state.refresh_token,
                "scope": issued.scope or "",
            },
            headers={"Cache-Control": "no-store"},
        )

    return Starlette(
        routes=[
            Route("/mcp", mcp, methods=["GET", "POST"]),
            Route("/.well-known/oauth-protected-resource/mcp", protected_resource),
            Route("/.well-known/oauth-authorization-server/tenant", authorization_server),
            Route("/tenant/register", register, methods=["POST"]),
            Route("/tenant/authorize", authorize),
            Route("/tenant/token", token, methods=["POST"]),
        ]
    )


TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def _exchange(state: AuthServerState, form: dict[str, str]) -> Response:
    """RFC 8693: a client this server knows, with its secret, trades a user's access token (here: any JWT whose
    ``sub`` is not refused; the test's issuer signed it) for one meant for ``audience``."""
    client = form.get("client_id", "")
    if state.exchange_clients.get(client) != form.get("client_secret"):
        return JSONResponse({"error": "invalid_client", "error_description": "unknown client or secret"}, 401)
    if form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
        return JSONResponse({"error": "invalid_request", "error_description": "subject_token_type"}, 400)
    try:
        payload = form.get("subject_token", "").split(".")[1]
        subject = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]
    except (IndexError, ValueError, KeyError):
        return JSONResponse({"error": "invalid_grant", "error_description": "the subject token is no JWT"}, 400)
    if subject in state.refused_subjects:
        return JSONResponse({"error": "invalid_grant", "error_description": "subject not allowed"}, 400)
    token = f"user-x-{subject}-{len(state.exchanged) + 1}"
    state.exchanged.append({"sub": subject, "audience": form.get("audience", ""), "token": token})
    return JSONResponse(
        {
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": state.exchange_lifetime_s,
        },
        headers={"Cache-Control": "no-store"},
    )


def _redirect(uri: str, params: dict[str, str]) -> RedirectResponse:
    return RedirectResponse(f"{uri}?{urlencode(params)}", status_code=302)
