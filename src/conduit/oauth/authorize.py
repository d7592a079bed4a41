"""Authorization code with PKCE (RFC 7636), optional dynamic client registration (RFC 7591).

The PKCE pair and the metadata models are the MCP SDK's (``PKCEParameters``, ``mcp.shared.auth``).
The flow itself stays here: the SDK's ``OAuthClientProvider`` is an httpx2 auth flow that needs a
token store and a browser redirect handler for every request it makes, while ``conduit auth`` is a
one-shot command that prints a ``credentials`` block and keeps nothing.

:func:`login` runs the whole flow for an MCP URL: discovery, a client id, the browser
step through a loopback redirect, and the code exchange. It returns the tokens; it never
logs them.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import anyio
import httpx2
from mcp.client.auth.oauth2 import PKCEParameters
from mcp.shared.auth import OAuthMetadata

from conduit.errors import AuthorizationError
from conduit.oauth.discovery import discover_authorization_server, discover_resource
from conduit.oauth.loopback import loopback_receiver
from conduit.oauth.responses import json_object, oauth_error


@dataclass(frozen=True)
class Client:
    client_id: str
    client_secret: str | None = None


@dataclass(frozen=True)
class Grant:
    """What the flow obtained, and what a ``credentials`` block needs to refresh it."""

    server: OAuthMetadata
    client: Client
    resource: str
    scopes: tuple[str, ...]
    access_token: str
    refresh_token: str | None
    expires_in: int | None


@dataclass(frozen=True)
class LoginOptions:
    mcp_url: str
    issuer: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    scopes: tuple[str, ...] | None = None
    callback_host: str = "127.0.0.1"
    callback_port: int = 0
    timeout_s: float = 300.0


async def login(options: LoginOptions, show_url: Callable[[str], None], http: httpx2.AsyncClient) -> Grant:
    """Run the flow; ``show_url`` is given the authorization URL for the user to open.

    Raises:
        DiscoveryError: the metadata could not be found or is unusable.
        AuthorizationError: registration, the user's consent, or the exchange failed.
    """
    resource_url = canonical_resource(options.mcp_url)
    scopes_hint: tuple[str, ...] = ()
    if options.issuer:
        issuer = options.issuer
    else:
        protected = await discover_resource(http, options.mcp_url)
        issuer, resource_url = str(protected.authorization_servers[0]), str(protected.resource)
        scopes_hint = tuple(protected.scopes_supported or ())
    server = await discover_authorization_server(http, issuer)
    scopes = options.scopes if options.scopes is not None else scopes_hint or tuple(server.scopes_supported or ())
    async with loopback_receiver(options.callback_host, options.callback_port) as receiver:
        client = (
            Client(options.client_id, options.client_secret)
            if options.client_id
            else await register_client(http, server, receiver.redirect_uri, scopes)
        )
        pkce, state = PKCEParameters.generate(), secrets.token_urlsafe(24)
        show_url(authorization_url(server, client, receiver.redirect_uri, pkce, state, resource_url, scopes))
        with anyio.fail_after(options.timeout_s):
            callback = (await receiver.receive()).params
    if "error" in callback:
        detail = callback.get("error_description", "")
        raise AuthorizationError(f"authorization refused: {callback['error']}{': ' + detail if detail else ''}")
    if not secrets.compare_digest(callback.get("state", ""), state):
        raise AuthorizationError("the redirect's state does not match this request: possible CSRF, nothing was kept")
    if not callback.get("code"):
        raise AuthorizationError("the redirect carries no authorization code")
    tokens = await exchange_code(
        http,
        server,
        client,
        {
            "grant_type": "authorization_code",
            "code": callback["code"],
            "redirect_uri": receiver.redirect_uri,
            "code_verifier": pkce.code_verifier,
            "resource": resource_url,
        },
    )
    granted = tokens.get("scope")
    return Grant(
        server=server,
        client=client,
        resource=resource_url,
        scopes=tuple(granted.split()) if isinstance(granted, str) else tuple(scopes),
        access_token=str(tokens["access_token"]),
        refresh_token=str(tokens["refresh_token"]) if tokens.get("refresh_token") else None,
        expires_in=int(tokens["expires_in"]) if isinstance(tokens.get("expires_in"), int) else None,
    )


def credentials_document(grant: Grant) -> dict[str, Any]:
    """The upstream ``credentials`` a grant makes: refreshable oauth2 when possible, else a bearer token."""
    if grant.refresh_token is None:
        return {"type": "bearer", "bearerToken": grant.access_token}
    document: dict[str, Any] = {
        "type": "oauth2",
        "tokenUrl": str(grant.server.token_endpoint),
        "clientId": grant.client.client_id,
    }
    if grant.client.client_secret:
        document["clientSecret"] = grant.client.client_secret
    document["refreshToken"] = grant.refresh_token
    if grant.scopes:
        document["scopes"] = list(grant.scopes)
    document["tokenParams"] = {"resource": grant.resource}
    return document


def authorization_url(
    server: OAuthMetadata,
    client: Client,
    redirect_uri: str,
    pkce: PKCEParameters,
    state: str,
    resource: str,
    scopes: tuple[str, ...],
) -> str:
    """The URL of the user's step: an authorization code request with PKCE (S256) for ``resource``."""
    query = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "code_challenge": pkce.code_challenge,
        "code_challenge_method": "S256",
        "state": state,
        "resource": resource,
    }
    if scopes:
        query["scope"] = " ".join(scopes)
    return with_query(str(server.authorization_endpoint), query)


def canonical_resource(url: str) -> str:
    """The RFC 8707 resource indicator for an MCP URL: lower-case scheme and host, no fragment.

    >>> canonical_resource("HTTPS://MCP.Example.com/mcp#x")
    'https://mcp.example.com/mcp'
    """
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, parts.query, ""))


async def register_client(
    http: httpx2.AsyncClient, server: OAuthMetadata, redirect_uri: str, scopes: tuple[str, ...]
) -> Client:
    """A public client registered for ``redirect_uri`` (RFC 7591).

    Raises:
        AuthorizationError: the server has no registration endpoint or refused.
    """
    if server.registration_endpoint is None:
        raise AuthorizationError(
            f"authorization server {server.issuer} offers no dynamic client registration: pass --client-id "
            "(and --client-secret if the client is confidential)"
        )
    metadata: dict[str, Any] = {
        "client_name": "Conduit",
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }
    if scopes:
        metadata["scope"] = " ".join(scopes)
    response = await http.post(str(server.registration_endpoint), json=metadata)
    document = json_object(response)
    if response.status_code not in (200, 201) or not isinstance(document.get("client_id"), str):
        raise AuthorizationError(f"client registration refused ({response.status_code}): {oauth_error(document)}")
    secret = document.get("client_secret")
    return Client(document["client_id"], secret if isinstance(secret, str) else None)


async def exchange_code(
    http: httpx2.AsyncClient, server: OAuthMetadata, client: Client, form: dict[str, str]
) -> dict[str, Any]:
    """POST ``form`` to the token endpoint, authenticating ``client`` as the server prefers.

    Raises:
        AuthorizationError: the server refused (the PKCE verifier or the code did not check out...).
    """
    headers = {"Accept": "application/json"}
    body = dict(form)
    methods = server.token_endpoint_auth_methods_supported or ["client_secret_basic"]
    if client.client_secret and "client_secret_post" not in methods:
        raw = f"{client.client_id}:{client.client_secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
    else:
        body["client_id"] = client.client_id
        if client.client_secret:
            body["client_secret"] = client.client_secret
    response = await http.post(str(server.token_endpoint), data=body, headers=headers)
    document = json_object(response)
    if response.status_code != 200 or not isinstance(document.get("access_token"), str):
        status = response.status_code
        raise AuthorizationError(f"the token endpoint refused the code ({status}): {oauth_error(document)}")
    return document


def with_query(url: str, query: dict[str, str]) -> str:
    parts = urlsplit(url)
    joined = "&".join(part for part in (parts.query, urlencode(query)) if part)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, joined, ""))
