"""Outbound HTTP for upstreams and token endpoints, every connection through the SSRF guard.

The guard sits in the connection layer, not in front of requests: :class:`GuardedBackend`
is the network backend of the HTTP client's connection pool, so *every* TCP connection
(the first request, a reconnect, a redirect hop, a token refresh) resolves the host once,
checks every address, and connects to one of exactly those addresses. TLS still verifies
the certificate against the host name (the pool passes it as SNI) and the Host header is
the URL's, so pinning the address changes nothing a server can see.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

import httpcore2
import httpx2
from httpcore2 import AsyncNetworkBackend, AsyncNetworkStream
from httpcore2._backends.auto import AutoBackend

from conduit.config.schema import NetworkConfig
from conduit.errors import BlockedAddressError
from conduit.security.ssrf import NetworkPolicy, Resolver, checked_addresses, system_resolver

CONNECT_TIMEOUT: Final = 30.0
READ_TIMEOUT: Final = 300.0
"""MCP servers may hold an SSE stream open; per-call timeouts are enforced above the transport."""


class GuardedBackend(AsyncNetworkBackend):
    """A network backend that connects only to addresses the SSRF guard approved for this connection."""

    def __init__(
        self, policy: NetworkPolicy, resolve: Resolver = system_resolver, inner: AsyncNetworkBackend | None = None
    ) -> None:
        self._policy = policy
        self._resolve = resolve
        self._inner = inner or AutoBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AsyncNetworkStream:
        try:
            addresses = await checked_addresses(host, port, self._policy, self._resolve)
        except BlockedAddressError as exc:
            raise httpcore2.ConnectError(exc.message) from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are not reachable through the SSRF guard")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport with its connection pool on a :class:`GuardedBackend` (no proxies from the env)."""

    def __init__(self, backend: GuardedBackend) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=backend,
        )


def policy_for(config: NetworkConfig) -> NetworkPolicy:
    """The SSRF guard's policy from the ``network`` config block."""
    return NetworkPolicy.build(config.allow_private_networks, config.allowed_hosts, config.allowed_networks)


def guarded_client(
    policy: NetworkPolicy,
    *,
    resolve: Resolver = system_resolver,
    headers: Mapping[str, str] | None = None,
    auth: httpx2.Auth | None = None,
    timeout: httpx2.Timeout | None = None,
    on_response: Callable[[httpx2.Response], Awaitable[None]] | None = None,
) -> httpx2.AsyncClient:
    """An HTTP client whose every connection passes the SSRF guard; redirects are not followed.

    ``on_response`` sees every response (status and headers; the body is not read).
    """
    return httpx2.AsyncClient(
        event_hooks={"response": [on_response]} if on_response else None,
        transport=GuardedTransport(GuardedBackend(policy, resolve)),
        headers=dict(headers or {}),
        auth=auth,
        timeout=timeout or httpx2.Timeout(CONNECT_TIMEOUT, read=READ_TIMEOUT),
        follow_redirects=False,
        trust_env=False,
    )
