"""Remote upstreams over Streamable HTTP, SSE and plain HTTP, with real credentials, through the SSRF guard."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest
from pydantic import SecretStr

from conduit.assembly import open_gateway
from conduit.auth.principals import principal
from conduit.config.schema import Config, Credentials, Policy, UpstreamConfig
from conduit.errors import UPSTREAM_ERROR, UPSTREAM_TIMEOUT, UpstreamError
from conduit.security.callers import MASTER as MASTER_CALLER
from conduit.security.callers import Caller
from conduit.security.ssrf import NetworkPolicy
from conduit.upstream.credential_store import CredentialStore, new_key
from conduit.upstream.per_principal import PrincipalConnections
from conduit.upstream.registry import UpstreamRegistry
from servers.http_upstream import API_KEY, API_KEY_HEADER, BEARER, CLIENT_ID, CLIENT_SECRET, FIRST_REFRESH_TOKEN
from support import MASTER, http_upstream, wait_until

pytestmark = pytest.mark.anyio

LOOPBACK_ALLOWED = NetworkPolicy(allow_private_networks=True)
ENDPOINT = {"streamable": "/mcp", "sse": "/sse", "plain": "/mcp"}
TYPE = {"streamable": "streamableHttp", "sse": "sse", "plain": "http"}


@pytest.fixture(scope="module")
async def servers(anyio_backend: str) -> AsyncIterator[Callable[..., Any]]:
    """Starts servers on demand (``await servers("sse", "bearer")``), each once per module."""
    started: dict[tuple[str, ...], str] = {}
    async with AsyncExitStack() as stack:

        async def start(*key: str) -> str:
            if key not in started:
                transport, auth, *extra = key
                started[key] = await stack.enter_async_context(
                    http_upstream("--transport", transport, "--auth", auth, *extra)
                )
            return started[key]

        yield start


@pytest.fixture
async def task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    async with anyio.create_task_group() as tg:
        yield tg
        tg.cancel_scope.cancel()


def make_registry(
    tg: anyio.abc.TaskGroup, *upstreams: dict[str, Any], network: NetworkPolicy = LOOPBACK_ALLOWED
) -> UpstreamRegistry:
    registry = UpstreamRegistry(base_dir=Path.cwd(), host_env=dict(os.environ), tg=tg, network=network)
    for upstream in upstreams:
        registry.add(UpstreamConfig.model_validate(upstream))
    return registry


async def whoami(registry: UpstreamRegistry, upstream: str) -> str:
    result = await registry.call(await registry.resolve(f"{upstream}__whoami"), {})
    assert not result.is_error, result
    return str(result.structured_content["credential"])  # type: ignore[index]


CREDENTIALS = {
    "none": None,
    "bearer": {"type": "bearer", "bearerToken": BEARER},
    "apikey": {"type": "apiKey", "apiKey": API_KEY, "headerName": API_KEY_HEADER},
    "oauth": {"type": "oauth2", "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "tokenUrl": "{base}/token"},
}
EXPECTED = {"none": "anonymous", "bearer": "bearer", "apikey": "api-key", "oauth": "oauth"}


@pytest.mark.parametrize("transport", ["streamable", "sse", "plain"])
@pytest.mark.parametrize("auth", ["none", "bearer", "apikey", "oauth"])
async def test_every_transport_with_every_credential_type(
    servers: Callable[..., Any], task_group: anyio.abc.TaskGroup, transport: str, auth: str
) -> None:
    base = await servers(transport, auth)
    upstream: dict[str, Any] = {"id": "remote", "type": TYPE[transport], "url": base + ENDPOINT[transport]}
    if CREDENTIALS[auth] is not None:
        upstream["credentials"] = {k: v.format(base=base) for k, v in CREDENTIALS[auth].items()}  # type: ignore[union-attr]
    registry = make_registry(task_group, upstream)
    assert await whoami(registry, "remote") == EXPECTED[auth]
    echoed = await registry.call(await registry.resolve("remote__echo"), {"text": "hi"})
    assert echoed.structured_content == {"text": "hi"}
    await registry.aclose()


async def stats(base: str) -> dict[str, Any]:
    async with httpx2.AsyncClient() as http:
        document: dict[str, Any] = (await http.get(f"{base}/_stats")).json()
        return document


async def test_refresh_tokens_are_rotated_and_expired_access_tokens_renewed(
    servers: Callable[..., Any], task_group: anyio.abc.TaskGroup
) -> None:
    # Tokens live 31 s and are renewed 30 s early: each is fresh for 1 s (long enough for a connect and two
    # calls on a loaded machine; 0.2 s was not, once, in CI: an extra refresh).
    base = await servers("streamable", "oauth", "--token-lifetime", "31")
    credentials = {
        "type": "oauth2",
        "clientId": CLIENT_ID,
        "tokenUrl": f"{base}/token",
        "refreshToken": FIRST_REFRESH_TOKEN,
        "tokenParams": {"resource": f"{base}/mcp"},
    }
    registry = make_registry(
        task_group, {"id": "o", "type": "streamableHttp", "url": f"{base}/mcp", "credentials": credentials}
    )
    for _ in range(3):
        assert await whoami(registry, "o") == "oauth"
        assert await whoami(registry, "o") == "oauth"  # within its lifetime: the cached token
        await anyio.sleep(1.05)
    seen = await stats(base)
    assert len(seen["grants"]) == 3
    assert set(seen["grants"]) == {f"refresh_token:{base}/mcp"}
    assert seen["reused_refresh_tokens"] == 0  # each refresh used the token the previous one rotated in
    await registry.aclose()


async def test_a_401_triggers_one_refresh_and_a_retry(
    servers: Callable[..., Any], task_group: anyio.abc.TaskGroup
) -> None:
    base = await servers("plain", "oauth")
    credentials = {"type": "oauth2", "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "tokenUrl": f"{base}/token"}
    credentials["tokenRequestFormat"] = "json"
    registry = make_registry(task_group, {"id": "o", "type": "http", "url": f"{base}/mcp", "credentials": credentials})
    assert await whoami(registry, "o") == "oauth"
    before = await stats(base)
    async with httpx2.AsyncClient() as http:
        await http.post(f"{base}/_revoke")
    assert await whoami(registry, "o") == "oauth"
    after = await stats(base)
    assert after["unauthorized"] == before["unauthorized"] + 1
    assert len(after["grants"]) == len(before["grants"]) + 1
    assert set(after["grants"]) == {"client_credentials:"}
    await registry.aclose()


async def test_wrong_credentials_fail_clearly_without_echoing_secrets(
    servers: Callable[..., Any], task_group: anyio.abc.TaskGroup
) -> None:
    base = await servers("streamable", "bearer")
    oauth_base = await servers("plain", "oauth")
    wrong = {"type": "bearer", "bearerToken": "wrong-token-value-1234"}
    refused = {
        "type": "oauth2",
        "clientId": CLIENT_ID,
        "clientSecret": "bad-secret-9999",
        "tokenUrl": f"{oauth_base}/token",
    }
    registry = make_registry(
        task_group,
        {"id": "wrong", "type": "streamableHttp", "url": f"{base}/mcp", "credentials": wrong},
        {"id": "refused", "type": "http", "url": f"{oauth_base}/mcp", "credentials": refused},
        {
            "id": "good",
            "type": "streamableHttp",
            "url": f"{base}/mcp",
            "credentials": {"type": "bearer", "bearerToken": BEARER},
        },
    )
    catalog = await registry.catalog()
    assert {entry.upstream for entry in catalog.tools} == {"good"}
    assert set(catalog.failures) == {"wrong", "refused"}
    wrong_error = registry.connections["wrong"].last_error or ""
    refused_error = registry.connections["refused"].last_error or ""
    assert "HTTP 401" in wrong_error
    assert "invalid_client" in refused_error
    for text in (wrong_error, refused_error, *catalog.failures.values()):
        assert "wrong-token-value-1234" not in text and "bad-secret-9999" not in text
    await registry.aclose()


async def test_a_loopback_upstream_is_refused_unless_private_networks_are_allowed(
    servers: Callable[..., Any], task_group: anyio.abc.TaskGroup
) -> None:
    base = await servers("streamable", "none")
    before = await stats(base)
    for url in (f"{base}/mcp", base.replace("127.0.0.1", "localhost") + "/mcp"):
        registry = make_registry(
            task_group, {"id": "local", "type": "streamableHttp", "url": url}, network=NetworkPolicy()
        )
        catalog = await registry.catalog()
        assert "local" in catalog.failures
        assert "refusing to connect" in (registry.connections["local"].last_error or "")
        assert "loopback" in (registry.connections["local"].last_error or "")
        await registry.aclose()
    assert await stats(base) == before  # nothing reached the server
    allowed = make_registry(task_group, {"id": "local", "type": "streamableHttp", "url": f"{base}/mcp"})
    assert await whoami(allowed, "local") == "anonymous"
    await allowed.aclose()


async def test_a_hanging_a_garbage_and_a_dying_upstream_each_fail_cleanly_while_others_work(
    servers: Callable[..., Any], task_group: anyio.abc.TaskGroup
) -> None:
    hanging = await servers("sse", "none")
    garbage = await servers("streamable", "none", "--garbage")
    healthy = await servers("plain", "none")
    async with http_upstream("--transport", "streamable", "--auth", "none") as dying:
        registry = make_registry(
            task_group,
            {"id": "hangs", "type": "sse", "url": f"{hanging}/sse", "timeoutMs": 1000},
            {"id": "garbage", "type": "streamableHttp", "url": f"{garbage}/mcp", "connectTimeoutMs": 5000},
            {"id": "dies", "type": "streamableHttp", "url": f"{dying}/mcp"},
            {"id": "fine", "type": "http", "url": f"{healthy}/mcp"},
        )
        catalog = await registry.catalog()
        assert set(catalog.failures) == {"garbage"}
        with pytest.raises(UpstreamError) as hung:
            await registry.call(await registry.resolve("hangs__hang"), {})
        assert hung.value.code == UPSTREAM_TIMEOUT
        with pytest.raises(UpstreamError) as died:
            await registry.call(await registry.resolve("dies__die"), {})
        assert "dies" in died.value.message
        assert await whoami(registry, "fine") == "anonymous"
        assert await whoami(registry, "hangs") == "anonymous"  # the hung call did not break its upstream
        await registry.aclose()


async def test_programs_reach_remote_upstreams_and_never_see_their_credentials(
    servers: Callable[..., Any], tmp_path: Path
) -> None:
    base = await servers("streamable", "bearer")
    config = Config.model_validate(
        {
            "network": {"allowPrivateNetworks": True},
            "pools": {"typescript": {"min": 0, "max": 0}, "python": {"min": 0, "max": 0}},
            "upstreams": [
                {
                    "id": "remote",
                    "type": "streamableHttp",
                    "url": f"{base}/mcp",
                    "credentials": {"type": "bearer", "bearerToken": BEARER},
                }
            ],
        }
    )
    code = f"""
    const who = (await tools.remote.whoami({{}})).structuredContent.credential;
    const seen = JSON.stringify([Object.getOwnPropertyNames(globalThis), await discoverMCPTools()]);
    return {{who, leaked: seen.includes({BEARER!r})}};
    """
    async with open_gateway(config, master_token=MASTER, base_dir=tmp_path, host_env=dict(os.environ)) as gateway:
        outcome = await gateway.execute("typescript", code)
        python = await gateway.execute(
            "python", "r = await tools.remote.whoami()\nr['structuredContent']['credential']"
        )
    assert outcome.error is None, outcome
    assert outcome.result == {"who": "bearer", "leaked": False}
    assert python.result == "bearer"
    assert BEARER not in outcome.stdout + outcome.stderr


async def tool_names(registry: UpstreamRegistry) -> set[str]:
    return {entry.name for entry in (await registry.catalog()).tools}


async def test_the_tool_list_is_refreshed_after_its_ttl(task_group: anyio.abc.TaskGroup) -> None:
    async with http_upstream("--transport", "streamable", "--auth", "none") as base:
        upstream = {"id": "g", "type": "streamableHttp", "url": f"{base}/mcp", "toolsCacheTtlMs": 300}
        registry = make_registry(task_group, upstream)
        assert "extra_1" not in await tool_names(registry)
        version = registry.version
        await registry.call(await registry.resolve("g__grow"), {})
        assert "extra_1" not in await tool_names(registry)  # still within the TTL: the cached list
        await anyio.sleep(0.4)
        assert "extra_1" in await tool_names(registry)
        assert registry.version != version  # generated SDKs are rebuilt for the new list
        result = await registry.call(await registry.resolve("g__extra_1"), {"text": "x"})
        assert result.content[0].text == "extra_1"  # type: ignore[union-attr]
        await registry.aclose()


async def test_a_list_changed_notification_triggers_a_new_listing(task_group: anyio.abc.TaskGroup) -> None:
    async with http_upstream("--transport", "sse", "--auth", "none") as base:
        upstream = {"id": "g", "type": "sse", "url": f"{base}/sse", "toolsCacheTtlMs": 0}
        registry = make_registry(task_group, upstream)
        assert "extra_1" not in await tool_names(registry)
        await registry.call(await registry.resolve("g__grow"), {"notify": True})
        names: set[str] = set()

        async def refreshed() -> bool:
            names.update(await tool_names(registry))
            return "extra_1" in names

        with anyio.fail_after(10):
            while not await refreshed():  # noqa: ASYNC110 (the notification arrives on the upstream's stream)
                await anyio.sleep(0.05)
        await registry.call(await registry.resolve("g__grow"), {})  # no notification, no TTL: not seen
        await anyio.sleep(0.3)
        assert "extra_2" not in await tool_names(registry)
        await registry.aclose()


async def test_a_per_principal_upstream_keeps_each_principals_rotated_refresh_token_in_the_store(
    servers: Callable[..., Any], task_group: anyio.abc.TaskGroup, tmp_path: Path
) -> None:
    base = await servers("streamable", "oauth", "--token-lifetime", "3600.5")  # a server of its own
    store = CredentialStore(tmp_path / "store.enc", new_key())
    oauth = {"type": "oauth2", "clientId": CLIENT_ID, "tokenUrl": f"{base}/token", "refreshToken": FIRST_REFRESH_TOKEN}
    store.put("alice", "o", Credentials.model_validate(oauth))
    alice = principal("alice", Policy())
    upstream = {"id": "o", "type": "streamableHttp", "url": f"{base}/mcp", "credentials": "perPrincipal"}

    async def call_as(caller: Caller) -> str:
        registry = UpstreamRegistry(
            base_dir=tmp_path, host_env={}, tg=task_group, network=LOOPBACK_ALLOWED, store=store
        )
        registry.add(UpstreamConfig.model_validate(upstream))
        try:
            result = await registry.call(await registry.resolve("o__whoami"), {}, caller)
            return str(result.structured_content["credential"])  # type: ignore[index]
        finally:
            await registry.aclose()

    assert await call_as(alice) == "oauth"
    found = store.get("alice", "o")
    assert found is not None and found[0].refresh_token is not None
    assert found[0].refresh_token.get_secret_value() != FIRST_REFRESH_TOKEN  # the rotated one, stored at once
    assert await call_as(alice) == "oauth"  # "after a restart": the stored token, not the revoked first one
    assert (await stats(base))["reused_refresh_tokens"] == 0
    with pytest.raises(UpstreamError) as missing:
        await call_as(principal("bob", Policy()))
    assert missing.value.code == UPSTREAM_ERROR
    assert "conduit auth --principal bob --upstream o" in missing.value.message
    with pytest.raises(UpstreamError, match="no principal"):
        await call_as(MASTER_CALLER)


async def test_a_principals_new_credential_is_used_at_once_and_its_old_connection_closed(
    servers: Callable[..., Any], task_group: anyio.abc.TaskGroup, tmp_path: Path
) -> None:
    base = await servers("streamable", "users")
    store = CredentialStore(tmp_path / "store.enc", new_key())
    store.put("alice", "u", Credentials(type="bearer", bearer_token=SecretStr("user-alice-1")))
    registry = UpstreamRegistry(base_dir=tmp_path, host_env={}, tg=task_group, network=LOOPBACK_ALLOWED, store=store)
    upstream = registry.add(
        UpstreamConfig.model_validate(
            {"id": "u", "type": "streamableHttp", "url": f"{base}/mcp", "credentials": "perPrincipal"}
        )
    )
    assert isinstance(upstream, PrincipalConnections)
    alice = principal("alice", Policy())

    async def whoami_as_alice() -> str:
        result = await registry.call(await registry.resolve("u__whoami"), {}, alice)
        return str(result.structured_content["credential"])  # type: ignore[index]

    assert await whoami_as_alice() == "user-alice-1"
    old = upstream.for_caller(alice)
    store.put("alice", "u", Credentials(type="bearer", bearer_token=SecretStr("user-alice-2")))  # `conduit auth` again
    assert await whoami_as_alice() == "user-alice-2"
    await wait_until(lambda: not old.connected)
    await registry.aclose()
