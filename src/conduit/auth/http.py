"""The HTTP front end's door: every request names its caller with a bearer token, or gets 401.

Built from the MCP SDK's auth pieces: starlette's ``AuthenticationMiddleware`` with the SDK's
``BearerAuthBackend`` (around :class:`~conduit.auth.verifier.CallerVerifier`) puts the caller on the
request, and the SDK's ``RequireAuthMiddleware`` answers 401 to anything else, with a
``WWW-Authenticate`` challenge that names the protected-resource metadata when OAuth is configured.
That metadata (RFC 9728) is served without a token at ``/.well-known/oauth-protected-resource``
and at the same path followed by the resource's own path (``.../mcp``), where the SDK's clients
look first, so an MCP client finds the authorization server by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import urlparse

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from pydantic import AnyHttpUrl
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from conduit.auth.verifier import CallerToken, CallerVerifier
from conduit.config.schema import OAuthConfig
from conduit.security.callers import Caller

METADATA_PATH: Final = "/.well-known/oauth-protected-resource"


def caller_of(scope: Scope) -> Caller | None:
    """The caller the door let in with this request, if any."""
    user = scope.get("user")
    if isinstance(user, AuthenticatedUser) and isinstance(user.access_token, CallerToken):
        return user.access_token.caller
    return None


class Door:
    """ASGI middleware: the protected-resource metadata for anyone; everything else needs a known caller."""

    def __init__(
        self, app: ASGIApp, verifier: CallerVerifier, oauth: OAuthConfig | None, public: Sequence[Route] = ()
    ) -> None:
        """``public``: routes anyone may reach without a token (besides the metadata): a browser's callback."""
        metadata_url: AnyHttpUrl | None = None
        self._metadata: list[Route] = []
        if oauth is not None:
            resource = AnyHttpUrl(oauth.resource or oauth.audience)
            metadata_url = build_resource_metadata_url(resource)
            self._metadata = create_protected_resource_routes(resource, [AnyHttpUrl(oauth.issuer)])
            if urlparse(str(metadata_url)).path != METADATA_PATH:  # also at the bare well-known path
                self._metadata.append(Route(METADATA_PATH, self._metadata[0].endpoint, methods=["GET", "OPTIONS"]))
        self._metadata.extend(public)
        self._inner = app
        self._app = AuthenticationMiddleware(
            RequireAuthMiddleware(app, [], resource_metadata_url=metadata_url), backend=BearerAuthBackend(verifier)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the app's own start and stop
            await self._inner(scope, receive, send)
            return
        for route in self._metadata:
            if scope["path"] == route.path:
                await route.handle(scope, receive, send)
                return
        await self._app(scope, receive, send)
