"""Find an MCP server's authorization server and that server's endpoints.

The MCP authorization flow: the protected resource (the MCP URL) names its authorization
servers in a protected-resource metadata document (RFC 9728), found through the
``resource_metadata`` parameter of a 401's ``WWW-Authenticate`` header or at the
well-known path; each authorization server describes its endpoints in an
authorization-server metadata document (RFC 8414, or OpenID Connect discovery). Both documents
are the MCP SDK's models (``mcp.shared.auth``); this module finds them and checks what Conduit's
flow needs of them (authorization servers named, both endpoints, PKCE with S256).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx2
from mcp.shared.auth import OAuthMetadata, ProtectedResourceMetadata
from pydantic import ValidationError

from conduit.errors import DiscoveryError

_RESOURCE_METADATA = re.compile(r'resource_metadata="?([^",\s]+)"?')


def well_known(url: str, name: str, *, suffix_path: bool = True) -> str:
    """``name``'s well-known URL for ``url``: inserted between host and path (RFC 8414 §3.1, RFC 9728 §3.1).

    >>> well_known("https://mcp.example.com/v1/mcp", "oauth-protected-resource")
    'https://mcp.example.com/.well-known/oauth-protected-resource/v1/mcp'
    >>> well_known("https://auth.example.com", "oauth-authorization-server")
    'https://auth.example.com/.well-known/oauth-authorization-server'
    """
    parts = urlsplit(url)
    path = parts.path.rstrip("/") if suffix_path else ""
    return urlunsplit((parts.scheme, parts.netloc, f"/.well-known/{name}{path}", "", ""))


def resource_metadata_hint(www_authenticate: str | None) -> str | None:
    """The ``resource_metadata`` URL of a ``WWW-Authenticate: Bearer ...`` challenge, if it has one.

    >>> resource_metadata_hint('Bearer realm="mcp", resource_metadata="https://x.test/.well-known/r"')
    'https://x.test/.well-known/r'
    """
    match = _RESOURCE_METADATA.search(www_authenticate or "")
    return match.group(1) if match else None


async def discover_resource(http: httpx2.AsyncClient, mcp_url: str) -> ProtectedResourceMetadata:
    """The protected-resource metadata of the MCP server at ``mcp_url``.

    Raises:
        DiscoveryError: no metadata document, or one without authorization servers.
    """
    candidates: list[str] = []
    try:
        probe = await http.get(mcp_url, headers={"Accept": "application/json, text/event-stream"})
        hint = resource_metadata_hint(probe.headers.get("www-authenticate")) if probe.status_code == 401 else None
        if hint:
            candidates.append(hint)
    except httpx2.HTTPError:
        pass  # the well-known locations may still answer
    candidates += [well_known(mcp_url, "oauth-protected-resource")]
    candidates += [well_known(mcp_url, "oauth-protected-resource", suffix_path=False)]
    document = await _first_document(http, dict.fromkeys(candidates))
    if document is None:
        raise DiscoveryError(
            f"{mcp_url} publishes no protected-resource metadata (tried {', '.join(dict.fromkeys(candidates))}); "
            "pass --issuer with the authorization server's URL"
        )
    servers = document.get("authorization_servers")
    if not isinstance(servers, list) or not servers or not all(isinstance(s, str) for s in servers):
        raise DiscoveryError("the protected-resource metadata names no authorization_servers")
    return _validated(ProtectedResourceMetadata, {**document, "resource": document.get("resource") or mcp_url})


async def authorization_server_document(http: httpx2.AsyncClient, issuer: str) -> dict[str, Any]:
    """The metadata document of authorization server ``issuer`` (RFC 8414, then OpenID Connect Discovery).

    Raises:
        DiscoveryError: it publishes none.
    """
    candidates = [well_known(issuer, "oauth-authorization-server"), well_known(issuer, "openid-configuration")]
    candidates.append(issuer.rstrip("/") + "/.well-known/openid-configuration")
    document = await _first_document(http, dict.fromkeys(candidates))
    if document is None:
        raise DiscoveryError(f"authorization server {issuer} publishes no metadata (tried {', '.join(candidates)})")
    return document


async def discover_authorization_server(http: httpx2.AsyncClient, issuer: str) -> OAuthMetadata:
    """The metadata of the authorization server ``issuer``.

    Raises:
        DiscoveryError: no metadata, required endpoints missing, or no PKCE with S256.
    """
    document = await authorization_server_document(http, issuer)
    missing = [key for key in ("authorization_endpoint", "token_endpoint") if not isinstance(document.get(key), str)]
    if missing:
        raise DiscoveryError(f"authorization server {issuer} metadata lacks {', '.join(missing)}")
    methods = document.get("code_challenge_methods_supported")
    if not isinstance(methods, list) or "S256" not in methods:
        raise DiscoveryError(
            f"authorization server {issuer} does not advertise PKCE with S256 (code_challenge_methods_supported); "
            "refusing to continue without it"
        )
    return _validated(OAuthMetadata, {**document, "issuer": document.get("issuer") or issuer})


_Document = TypeVar("_Document", OAuthMetadata, ProtectedResourceMetadata)


def _validated(model: type[_Document], document: dict[str, Any]) -> _Document:
    """``document`` as the SDK's ``model``.

    Raises:
        DiscoveryError: a field is not what RFC 8414 / RFC 9728 say (named, with the reason).
    """
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())
        raise DiscoveryError(f"unusable {model.__name__} document: {problems}") from None


async def _first_document(http: httpx2.AsyncClient, urls: dict[str, None]) -> dict[str, Any] | None:
    for url in urls:
        try:
            response = await http.get(url, headers={"Accept": "application/json"})
        except httpx2.HTTPError:
            continue
        if response.status_code != 200:
            continue
        try:
            document = response.json()
        except ValueError:
            continue
        if isinstance(document, dict):
            return document
    return None
