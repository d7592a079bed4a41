"""Users connecting their own upstream accounts across replicas sharing a real Redis: a flow one replica
started is finished by another's callback, the token is then used by every replica at once, and Redis holds
neither the flow nor the token in the clear."""

from __future__ import annotations

import base64
import os
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import anyio
import httpx2
import pytest
import redis

from cluster_harness import CLUSTER_KEY, Redis
from conduit.assembly import open_gateway
from conduit.config.schema import Config
from conduit.errors import AuthorizationError, AuthorizationRequiredError
from conduit.security.callers import Caller
from conduit.upstream.credential_store import RECHECK_S
from servers.oauth_server import AuthServerState, running
from support import MASTER, http_upstream

pytestmark = pytest.mark.anyio

STORE_KEY = base64.urlsafe_b64encode(b"r" * 32).decode()
WHOAMI = "return (await tools.remote.whoami({})).structuredContent.credential;"


async def test_a_flow_started_on_one_replica_is_finished_by_another_and_used_by_all(
    redis_server: Redis, tmp_path: Path
) -> None:
    async with running(AuthServerState(token_prefix="user-", iss_parameter=True)) as authority:
        issuer = f"{authority.url}/tenant"
        async with http_upstream("--auth", "users", "--authorization-server", issuer) as remote:
            config = Config.model_validate(
                {
                    "http": {"publicUrl": "https://conduit.example.com"},
                    "network": {"allowPrivateNetworks": True},
                    "auth": {
                        "principals": [{"id": "alice", "apiKey": "alice-key-for-replicas-0123"}],
                        "credentialStore": {"key": STORE_KEY},
                    },
                    "upstreams": [
                        {
                            "id": "remote",
                            "type": "streamableHttp",
                            "url": f"{remote}/mcp",
                            "credentials": "perPrincipal",
                            "authorization": {},
                        }
                    ],
                    "cluster": {"redisUrl": redis_server.url, "key": CLUSTER_KEY},
                    "workspace": {"enabled": False},
                    "skills": {"enabled": False},
                    "pools": {"typescript": {"min": 0, "max": 1}, "python": {"min": 0, "max": 0}},
                }
            )
            alice = Caller("alice", "principal")
            async with AsyncExitStack() as stack:
                replicas = []
                for name in ("one", "two"):
                    (tmp_path / name).mkdir()
                    replicas.append(
                        await stack.enter_async_context(
                            open_gateway(
                                config, master_token=MASTER, base_dir=tmp_path / name, host_env=dict(os.environ)
                            )
                        )
                    )
                one, two = replicas
                with pytest.raises(AuthorizationRequiredError) as required:
                    await one.registry.resolve("remote__whoami", alice)
                url = required.value.url
                query = dict(parse_qsl(urlsplit(url).query))
                assert query["redirect_uri"] == "https://conduit.example.com/oauth/callback"
                async with httpx2.AsyncClient(timeout=20) as browser:
                    consent = await browser.get(url)
                callback = dict(parse_qsl(urlsplit(consent.headers["location"]).query))
                raw = redis.Redis.from_url(redis_server.url)
                sealed = b" ".join(raw.get(key) or b"" for key in raw.keys("conduit:oauth-flow:*"))
                assert sealed and query["state"].encode() not in sealed and b"verifier" not in sealed
                assert two.registry.authorizations is not None
                flow = await two.registry.authorizations.finish(callback)  # the other replica's callback
                assert (flow.principal, flow.upstream) == ("alice", "remote")
                with pytest.raises(AuthorizationError, match="used already"):
                    await one.registry.authorizations.finish(callback)  # type: ignore[union-attr]
                await anyio.sleep(RECHECK_S + 0.1)  # how often a replica asks Redis whether the store changed
                for gateway in (one, two):
                    ran = await gateway.execute("typescript", WHOAMI, caller=alice)
                    assert ran.error is None and str(ran.result).startswith("user-"), ran
                stored = b" ".join(b" ".join(raw.hvals(key)) for key in raw.keys("conduit:credentials"))
                assert stored and str(ran.result).encode() not in stored and b"user-" not in stored
                raw.close()
