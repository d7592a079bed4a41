"""Token exchange (RFC 8693), no browser at all: an OAuth caller's own access token is traded at a real
authorization server for one meant for the upstream, per principal, cached until 30 s before it expires; the
inbound token never reaches the upstream; API-key principals and the master get -32005. Through a real Conduit
over HTTP, a real JWT issuer, a real authorization server and a real remote upstream that answers with the very
token each request carried."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client

from servers.oauth_server import AuthServer, AuthServerState, running
from support import EXECUTE_TS, ISSUER, ConduitHttp, free_port, http_upstream, loopback_server, run_code, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

MASTER = "master-token-for-exchange-0123"
ALICE_KEY = "alice-key-for-exchange-012345"
CLIENT_ID, CLIENT_SECRET = "conduit-exchanger", "exchange-secret-0123"
WHOAMI = "return (await tools.remote.whoami({})).structuredContent.credential;"


@dataclass
class Setup:
    server: ConduitHttp
    authority: AuthServer
    remote: str
    issuer: str
    audience: str
    key: rsa.RSAPrivateKey

    def token(self, subject: str, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": self.audience, "sub": subject, "exp": now + 300, "groups": "remote"}
        return jwt.encode({**body, **claims}, self.key, algorithm="RS256", headers={"kid": "rsa-1"})

    async def seen(self) -> dict[str, Any]:
        async with httpx2.AsyncClient(timeout=10) as http:
            return (await http.get(f"{self.remote}/_stats")).json()


@pytest.fixture(scope="module")
async def setup(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    directory = tmp_path_factory.mktemp("exchange")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = {**jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "rsa-1", "use": "sig"}
    (directory / "jwks.json").write_text(json.dumps({"keys": [public]}))
    state = AuthServerState(exchange_clients={CLIENT_ID: CLIENT_SECRET}, refused_subjects={"mallory"})
    port = free_port()
    audience = f"http://127.0.0.1:{port}/mcp"
    async with (
        running(state) as authority,
        http_upstream("--transport", "streamable", "--auth", "users") as remote,
        loopback_server(ISSUER, str(directory / "jwks.json")) as issuer,
    ):
        config = write_config(
            directory,
            {
                "codeModeOnly": False,
                "network": {"allowPrivateNetworks": True},
                "auth": {
                    "principals": [{"id": "alice", "apiKey": ALICE_KEY}],
                    "oauth": {
                        "issuer": issuer,
                        "audience": audience,
                        "policies": [{"claim": {"groups": "remote"}, "allowedTools": ["remote.*"]}],
                    },
                },
                "upstreams": [
                    {
                        "id": "remote",
                        "type": "streamableHttp",
                        "url": f"{remote}/mcp",
                        "credentials": {
                            "type": "tokenExchange",
                            "tokenUrl": f"{authority.url}/tenant/token",
                            "clientId": CLIENT_ID,
                            "clientSecret": CLIENT_SECRET,
                            "audience": "remote-api",
                        },
                    }
                ],
                "workspace": {"enabled": False},
                "skills": {"enabled": False},
                "pools": {"typescript": {"min": 1, "max": 2}, "python": {"min": 0, "max": 0}},
            },
        )
        async with ConduitHttp.start(config, token=MASTER, port=port) as server:
            yield Setup(server, authority, remote, issuer, audience, key)


async def whoami(client: Client) -> dict[str, Any]:
    _, result = await run_code(client, EXECUTE_TS, WHOAMI)
    return result


async def test_each_oauth_callers_token_is_exchanged_for_its_own_and_cached(setup: Setup) -> None:
    dora, erin = setup.token("dora"), setup.token("erin")
    async with setup.server.client(dora) as client:
        first = await whoami(client)
        assert first["result"].startswith("user-x-dora-"), first
        assert (await whoami(client))["result"] == first["result"]  # cached: no second exchange
        direct = await client.call_tool("remote__whoami", {})
        assert direct.structured_content["credential"] == first["result"]  # type: ignore[index]
    async with setup.server.client(erin) as client:
        assert (await whoami(client))["result"].startswith("user-x-erin-")
    granted = setup.authority.state.exchanged
    assert [entry["sub"] for entry in granted].count("dora") == 1
    assert all(entry["audience"] == "remote-api" for entry in granted)
    requests = [r for r in setup.authority.state.token_requests if r.get("grant_type", "").endswith("token-exchange")]
    assert {r["subject_token"] for r in requests} <= {dora, erin}
    assert all(r["client_id"] == CLIENT_ID and r["client_secret"] == CLIENT_SECRET for r in requests)
    tokens_seen = (await setup.seen())["tokens"]
    assert not [token for token in tokens_seen if token in (dora, erin)]  # the inbound tokens never went out
    assert all(token.startswith("user-x-") for token in tokens_seen)


async def test_callers_without_an_access_token_or_refused_get_32005(setup: Setup) -> None:
    async with setup.server.client(ALICE_KEY) as alice:
        refused = await whoami(alice)
        assert "called with an API key: call it with an OAuth access token" in refused["stderr"], refused
    async with setup.server.client() as master:
        answer = await master.call_tool("remote__whoami", {})
        assert answer.is_error and "the master caller is no principal" in answer.content[0].text  # type: ignore[union-attr]
    async with setup.server.client(setup.token("mallory")) as mallory:
        denied = await whoami(mallory)
        assert "invalid_grant" in denied["stderr"] and "subject not allowed" in denied["stderr"], denied


async def test_an_exchanged_token_is_renewed_30_s_before_it_expires(setup: Setup) -> None:
    setup.authority.state.exchange_lifetime_s = 34  # fresh for four seconds, then within the 30 s margin
    try:
        async with setup.server.client(setup.token("frank")) as client:
            first = (await whoami(client))["result"]
            assert (await whoami(client))["result"] == first
            await anyio.sleep(4.2)
            renewed = (await whoami(client))["result"]
    finally:
        setup.authority.state.exchange_lifetime_s = 3600
    assert renewed != first and renewed.startswith("user-x-frank-")
    assert [entry["sub"] for entry in setup.authority.state.exchanged].count("frank") == 2
