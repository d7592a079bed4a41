"""Users connect their own upstream accounts: an authorization code flow (PKCE) that a principal's call starts
and Conduit's own ``/oauth/callback`` finishes.

A principal's call to a ``credentials: perPrincipal`` upstream with ``authorization`` configured, when the
principal has no credential there, starts a flow (:meth:`Authorizations.start`): the authorization server is
found from the upstream's 401 and its protected-resource metadata (as ``conduit auth`` finds it), the client
is the configured one, Conduit's Client ID Metadata Document, or one registered dynamically, and the flow is
kept under a random ``state`` bound to that principal and upstream, for at most 10 minutes (in Redis in
cluster mode, sealed, so any replica's callback finishes it). The user opens the URL; the authorization
server sends the browser back to ``/oauth/callback``, where :meth:`Authorizations.finish` takes the flow
(once: a replayed ``state`` finds nothing), checks the ``iss`` the server names (RFC 9207), exchanges the code
and stores the tokens in the credential store as that principal's, and nobody else's. No token is ever shown
or logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import Any, Final

import httpx2
from cryptography.fernet import InvalidToken
from mcp.client.auth.oauth2 import PKCEParameters
from mcp.shared.auth import OAuthMetadata

from conduit.cluster.store import SharedStore
from conduit.config.schema import Credentials, UpstreamConfig
from conduit.errors import AuthorizationError, DiscoveryError
from conduit.oauth.authorize import (
    Client,
    Grant,
    authorization_url,
    canonical_resource,
    credentials_document,
    exchange_code,
    register_client,
)
from conduit.oauth.discovery import discover_authorization_server, discover_resource
from conduit.security.callers import Caller
from conduit.upstream.credential_store import CredentialStore

logger = logging.getLogger(__name__)

FLOW_TTL_S: Final = 600.0
"""A started flow is kept this long at most (less when the upstream's ``authorization.timeoutMs`` is shorter)."""
CALLBACK_PATH: Final = "/oauth/callback"

HttpClientFactory = Callable[[], AbstractAsyncContextManager[httpx2.AsyncClient]]


@dataclass(frozen=True)
class Flow:
    """One started connection: whose, to which upstream, and what finishing it needs."""

    principal: str
    upstream: str
    verifier: str
    redirect_uri: str
    server: dict[str, Any]
    """The authorization server's metadata (``OAuthMetadata`` as JSON)."""
    client_id: str
    client_secret: str | None
    resource: str
    scopes: tuple[str, ...]
    expires_at: float


class Flows:
    """Started flows by ``state``, taken once: this process's memory, or the cluster's Redis (sealed)."""

    def __init__(self, shared: SharedStore | None = None, clock: Callable[[], float] = time.time) -> None:
        self._shared = shared
        self._clock = clock
        self._local: dict[str, Flow] = {}

    async def put(self, state: str, flow: Flow) -> None:
        if self._shared is None:
            self._expire()
            self._local[_digest(state)] = flow
            return
        sealed = self._shared.fernet.encrypt(json.dumps(asdict(flow)).encode())
        ttl_ms = max(1000, int((flow.expires_at - self._clock()) * 1000))

        async def put() -> None:
            await self._shared.client.set(self._key(state), sealed, px=ttl_ms)  # type: ignore[union-attr]

        await self._shared.with_fallback(put, None)

    async def take(self, state: str) -> Flow | None:
        """The flow ``state`` started, removed (a second callback with it finds nothing); None if unknown or
        expired.

        Raises:
            StoreUnavailableError: the cluster's Redis is away.
        """
        if self._shared is None:
            self._expire()
            return self._local.pop(_digest(state), None)
        shared = self._shared

        async def take() -> bytes | str | None:
            return await shared.client.getdel(self._key(state))

        sealed = await shared.with_fallback(take, None)
        if sealed is None:
            return None
        try:
            document = json.loads(shared.fernet.decrypt(sealed if isinstance(sealed, bytes) else sealed.encode()))
        except (InvalidToken, ValueError):
            return None
        flow = Flow(**{**document, "scopes": tuple(document["scopes"])})
        return flow if flow.expires_at > self._clock() else None

    def _key(self, state: str) -> str:
        assert self._shared is not None
        return self._shared.key("oauth-flow", _digest(state))

    def _expire(self) -> None:
        now = self._clock()
        for key in [key for key, flow in self._local.items() if flow.expires_at <= now]:
            del self._local[key]


class Authorizations:
    """Starting and finishing principals' connections to their upstream accounts."""

    def __init__(
        self,
        store: CredentialStore,
        flows: Flows,
        http: HttpClientFactory,
        public_url: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._flows = flows
        self._http = http
        self.public_url = public_url
        """Where browsers reach this server (``http.publicUrl``; else set once the listener is bound)."""
        self._clock = clock

    @property
    def redirect_uri(self) -> str:
        if self.public_url is None:
            raise AuthorizationError("this server's public URL is not known yet (http.publicUrl)")
        return self.public_url + CALLBACK_PATH

    async def start(self, caller: Caller, upstream: UpstreamConfig) -> str:
        """A flow connecting ``caller``'s own account on ``upstream``: the URL its user opens.

        Raises:
            DiscoveryError: the upstream's authorization server or its metadata cannot be found.
            AuthorizationError: no client can be had (no registration), or no public URL.
        """
        configured = upstream.authorization
        assert configured is not None and upstream.url is not None
        redirect_uri = self.redirect_uri
        async with self._http() as http:
            protected = await discover_resource(http, upstream.url)
            if not protected.authorization_servers:
                raise DiscoveryError(f"upstream {upstream.id!r} names no authorization server")
            server = await discover_authorization_server(http, str(protected.authorization_servers[0]))
            resource = str(protected.resource) if protected.resource else canonical_resource(upstream.url)
            scopes = tuple(configured.scopes or protected.scopes_supported or server.scopes_supported or ())
            client = await self._client(http, server, configured, redirect_uri, scopes)
        pkce, state = PKCEParameters.generate(), secrets.token_urlsafe(32)
        lifetime = min(FLOW_TTL_S, configured.timeout_ms / 1000)
        flow = Flow(
            principal=caller.id,
            upstream=upstream.id,
            verifier=pkce.code_verifier,
            redirect_uri=redirect_uri,
            server=server.model_dump(mode="json", exclude_none=True),
            client_id=client.client_id,
            client_secret=client.client_secret,
            resource=resource,
            scopes=scopes,
            expires_at=self._clock() + lifetime,
        )
        await self._flows.put(state, flow)
        logger.info("connection flow started", extra={"principal": caller.id, "upstream": upstream.id})
        return authorization_url(server, client, redirect_uri, pkce, state, resource, scopes)

    async def finish(self, params: Mapping[str, str]) -> Flow:
        """The authorization server's redirect: the flow its ``state`` started, finished, its tokens stored as
        that flow's principal's.

        Raises:
            AuthorizationError: an unknown, used or expired ``state``; the server's error; a mismatched ``iss``;
                a refused code.
        """
        flow = await self._flows.take(params.get("state", ""))
        if flow is None:
            raise AuthorizationError("this link is unknown, used already or expired: start again from your client")
        server = OAuthMetadata.model_validate(flow.server)
        issuer = params.get("iss")
        if issuer is not None and issuer != str(server.issuer):
            raise AuthorizationError("the response names another authorization server (iss): nothing was kept")
        if issuer is None and server.authorization_response_iss_parameter_supported:
            raise AuthorizationError("the response does not name its authorization server (iss): nothing was kept")
        if "error" in params:
            detail = params.get("error_description", "")
            raise AuthorizationError(
                f"the authorization was refused: {params['error']}{': ' + detail if detail else ''}"
            )
        if not params.get("code"):
            raise AuthorizationError("the response carries no authorization code")
        client = Client(flow.client_id, flow.client_secret)
        async with self._http() as http:
            tokens = await exchange_code(
                http,
                server,
                client,
                {
                    "grant_type": "authorization_code",
                    "code": params["code"],
                    "redirect_uri": flow.redirect_uri,
                    "code_verifier": flow.verifier,
                    "resource": flow.resource,
                },
            )
        granted = tokens.get("scope")
        grant = Grant(
            server=server,
            client=client,
            resource=flow.resource,
            scopes=tuple(granted.split()) if isinstance(granted, str) else flow.scopes,
            access_token=str(tokens["access_token"]),
            refresh_token=str(tokens["refresh_token"]) if tokens.get("refresh_token") else None,
            expires_in=int(tokens["expires_in"]) if isinstance(tokens.get("expires_in"), int) else None,
        )
        self._store.put(flow.principal, flow.upstream, Credentials.model_validate(credentials_document(grant)))
        logger.info("account connected", extra={"principal": flow.principal, "upstream": flow.upstream})
        return flow

    async def _client(
        self,
        http: httpx2.AsyncClient,
        server: OAuthMetadata,
        configured: Any,
        redirect_uri: str,
        scopes: tuple[str, ...],
    ) -> Client:
        if configured.client_id:
            secret = configured.client_secret.get_secret_value() if configured.client_secret else None
            return Client(configured.client_id, secret)
        if configured.client_metadata_url and server.client_id_metadata_document_supported:
            return Client(configured.client_metadata_url)
        return await register_client(http, server, redirect_uri, scopes)


def _digest(state: str) -> str:
    return hashlib.sha256(state.encode("utf-8", "surrogatepass")).hexdigest()
