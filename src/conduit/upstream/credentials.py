"""Credentials for remote upstreams: headers on every request, OAuth2 tokens fetched and refreshed.

The values live in this process (OAuth tokens in Redis too, in cluster mode: see
:mod:`conduit.upstream.token_state`). :class:`CredentialAuth` is an httpx auth flow: it adds
the credential to each request and, for OAuth2, answers a 401 by refreshing the access token
once and retrying. :class:`OAuthTokens` fetches tokens with the refresh-token grant (when a
refresh token is configured) or the client-credentials grant, caches them until shortly
before they expire, and keeps a rotated refresh token. Token endpoint errors are reported by
their OAuth error code and description only: never a body that might echo a secret.

The MCP SDK has a client-credentials provider (``mcp.client.auth.extensions.client_credentials``);
it is not used here because it is an ``OAuthClientProvider``: it discovers the authorization
server from the upstream's 401, wants a token store, and sends form requests only, while an
upstream's ``credentials`` block names its token URL outright, may ask for JSON token requests and
extra token parameters, and must reach the token endpoint through the SSRF-guarded client
(``upstream/network.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Final

import httpx2

from conduit.config.schema import Credentials
from conduit.errors import UpstreamError
from conduit.oauth.responses import json_object, oauth_error
from conduit.upstream.token_state import LocalTokenState, Tokens, TokenState

logger = logging.getLogger(__name__)

EXPIRY_MARGIN_S: Final = 30.0
"""A cached token is renewed this long before it expires."""
DEFAULT_LIFETIME_S: Final = 3600.0
"""Assumed lifetime of a token issued without ``expires_in``."""
TOKEN_EXCHANGE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"

HttpClientFactory = Callable[[], AbstractAsyncContextManager[httpx2.AsyncClient]]


class OAuthTokens:
    """Access tokens for one OAuth2 credential, cached and renewed as needed.

    The tokens are kept in a :class:`~conduit.upstream.token_state.TokenState`: this process's memory,
    or Redis shared by a cluster. A renewal takes its lock and reads the tokens again first, so
    concurrent callers (and replicas) refresh once, and a rotated refresh token is never used twice.
    """

    def __init__(
        self,
        credentials: Credentials,
        http: HttpClientFactory,
        clock: Callable[[], float] = time.time,
        on_rotate: Callable[[str], None] | None = None,
        state: TokenState | None = None,
        subject: Callable[[], str | None] | None = None,
    ) -> None:
        assert credentials.token_url is not None and credentials.client_id is not None
        self._credentials = credentials
        self._subject = subject
        """tokenExchange: the principal's current access token, the one exchanged."""
        self._on_rotate = on_rotate
        self._http = http
        self._clock = clock
        self._state = state or LocalTokenState()
        self._tokens: Tokens | None = None
        self._configured_refresh = credentials.refresh_token.get_secret_value() if credentials.refresh_token else None
        self.requests = 0
        """Token requests made by this process (for tests and health)."""

    async def access_token(self, *, renew: bool = False) -> str:
        """A valid access token; ``renew`` discards the cached one (the upstream answered 401).

        Raises:
            UpstreamError: the token endpoint is unreachable or refused, or the shared lock stayed taken.
            StoreUnavailableError: the cluster's Redis is away and ``cluster.onStoreError`` is ``refuse``.
        """
        stale = self._tokens.access if self._tokens is not None else None
        if not renew and self._fresh(self._tokens):
            assert self._tokens is not None
            return self._tokens.access
        async with self._state.lock():
            current = await self._state.read()  # another caller, or replica, may have renewed meanwhile
            if current is not None and self._fresh(current) and not (renew and current.access == stale):
                self._tokens = current
                return current.access
            used = current.refresh if current is not None and current.refresh else self._configured_refresh
            tokens = await self._fetch(used)
            await self._state.write(tokens)
            self._tokens = tokens
        if tokens.refresh != used and tokens.refresh is not None:  # the old one may already be revoked
            if self._on_rotate is not None:
                self._on_rotate(tokens.refresh)
                logger.info("token endpoint rotated the refresh token; the new one is stored")
            else:
                logger.info("token endpoint rotated the refresh token; the new one is kept")
        return tokens.access

    def _exchange(self) -> dict[str, str]:
        """The RFC 8693 grant's fields: the principal's own access token as the subject, for the upstream.

        Raises:
            UpstreamError: the principal brought no access token (an API key, the master token).
        """
        subject = self._subject() if self._subject is not None else None
        if not subject:
            raise UpstreamError("token exchange needs the caller's own OAuth access token, and this caller has none")
        creds = self._credentials
        fields = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS_TOKEN_TYPE}
        if creds.audience is not None:
            fields["audience"] = creds.audience
        if creds.resource is not None:
            fields["resource"] = creds.resource
        return fields

    def _fresh(self, tokens: Tokens | None) -> bool:
        return tokens is not None and self._clock() < tokens.expires_at - EXPIRY_MARGIN_S

    async def _fetch(self, refresh: str | None) -> Tokens:
        creds = self._credentials
        form: dict[str, str] = {"client_id": creds.client_id or ""}
        if creds.type == "tokenExchange":
            form |= self._exchange()
            refresh = None
        elif refresh:
            form |= {"grant_type": "refresh_token", "refresh_token": refresh}
        else:
            form["grant_type"] = "client_credentials"
        if creds.client_secret is not None:
            form["client_secret"] = creds.client_secret.get_secret_value()
        if creds.scopes:
            form["scope"] = " ".join(creds.scopes)
        form |= creds.token_params
        self.requests += 1
        try:
            async with self._http() as http:
                if creds.token_request_format == "json":
                    response = await http.post(creds.token_url or "", json=form, headers={"Accept": "application/json"})
                else:
                    response = await http.post(creds.token_url or "", data=form, headers={"Accept": "application/json"})
        except httpx2.HTTPError as exc:
            raise UpstreamError(f"token endpoint unreachable: {exc}") from None
        document = json_object(response)
        token = document.get("access_token")
        if response.status_code != 200 or not isinstance(token, str) or not token:
            grant, status = form["grant_type"], response.status_code
            raise UpstreamError(f"token endpoint refused the {grant} grant ({status}): {oauth_error(document)}")
        lifetime = document.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else DEFAULT_LIFETIME_S
        rotated = document.get("refresh_token")
        kept = rotated if isinstance(rotated, str) and rotated else refresh
        return Tokens(access=token, expires_at=self._clock() + seconds, refresh=kept)


class CredentialAuth(httpx2.Auth):
    """Adds one upstream's credential to every request; OAuth2 retries once after a 401."""

    def __init__(self, credentials: Credentials, tokens: OAuthTokens | None) -> None:
        self._credentials = credentials
        self._tokens = tokens

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        await self._apply(request)
        response = yield request
        if response.status_code == 401 and self._tokens is not None:
            await response.aread()
            await self._apply(request, renew=True)
            yield request

    async def _apply(self, request: httpx2.Request, *, renew: bool = False) -> None:
        creds = self._credentials
        if creds.type == "bearer" and creds.bearer_token is not None:
            request.headers["Authorization"] = f"Bearer {creds.bearer_token.get_secret_value()}"
        elif creds.type == "apiKey" and creds.api_key is not None:
            request.headers[creds.header_name] = creds.api_key.get_secret_value()
        elif self._tokens is not None:
            request.headers["Authorization"] = f"Bearer {await self._tokens.access_token(renew=renew)}"


def build_auth(
    credentials: Credentials | None,
    http: HttpClientFactory,
    on_rotate: Callable[[str], None] | None = None,
    state: TokenState | None = None,
    subject: Callable[[], str | None] | None = None,
) -> CredentialAuth | None:
    """The auth flow for an upstream's credentials (None when it has none); ``on_rotate`` keeps a
    refresh token the token endpoint rotated; ``state`` is where OAuth tokens live (default: memory);
    ``subject`` gives the principal's access token a ``tokenExchange`` credential exchanges."""
    if credentials is None:
        return None
    tokens = None
    if credentials.type in ("oauth2", "tokenExchange"):
        tokens = OAuthTokens(credentials, http, on_rotate=on_rotate, state=state, subject=subject)
    return CredentialAuth(credentials, tokens)
