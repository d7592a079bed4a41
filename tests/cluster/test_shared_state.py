"""What replicas share through a real Redis, one piece at a time: tokens, credentials, config, refusals."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import anyio
import httpx2
import pytest

from cluster_harness import CLUSTER_KEY, Redis
from conduit.assembly import open_gateway
from conduit.cluster.store import SharedStore
from conduit.config.schema import ClusterConfig, Config, Credentials
from conduit.errors import ConfigError, MethodNotFoundError, StoreUnavailableError, UpstreamError
from conduit.security.ssrf import NetworkPolicy
from conduit.upstream.credential_store import CredentialStore, RedisVault, new_key
from conduit.upstream.credentials import OAuthTokens
from conduit.upstream.network import guarded_client
from conduit.upstream.token_state import SharedTokenState, state_name
from servers.oauth_server import AuthServer
from support import MASTER, TOOLBOX, conduit, http_upstream, write_config

pytestmark = pytest.mark.anyio

NO_STATE = {"workspace": {"enabled": False}, "skills": {"enabled": False}}
"""Cluster configs of the tests about Redis keep no workspace or skills (no PostgreSQL: tests/cluster/test_state.py)."""

LOOPBACK = NetworkPolicy(allow_private_networks=True)


def shared(redis: Redis, on_error: str = "local", key: str = CLUSTER_KEY) -> SharedStore:
    return SharedStore(ClusterConfig(redis_url=redis.url, key=key, on_store_error=on_error))  # type: ignore[arg-type]


def oauth(base: str) -> Credentials:
    return Credentials.model_validate(
        {"type": "oauth2", "tokenUrl": f"{base}/token", "clientId": "conduit-test-client", "refreshToken": "refresh-0"}
    )


async def stats(base: str) -> dict:
    async with httpx2.AsyncClient() as http:
        return (await http.get(f"{base}/_stats")).json()


def replica_tokens(store: SharedStore, credentials: Credentials) -> OAuthTokens:
    """One replica's view of the credential: its own OAuthTokens over the shared state."""
    state = SharedTokenState(store, state_name("remote", credentials))
    return OAuthTokens(credentials, lambda: guarded_client(LOOPBACK), state=state)


async def all_at_once(askers: list[OAuthTokens]) -> list[str]:
    """Every asker's access token, all asked at once."""
    got: list[str] = []

    async def ask(tokens: OAuthTokens) -> None:
        got.append(await tokens.access_token())

    async with anyio.create_task_group() as tg:
        for tokens in askers:
            tg.start_soon(ask, tokens)
    return got


async def test_three_replicas_asking_at_once_refresh_once_and_a_restarted_one_refreshes_not_at_all(
    redis_server: Redis,
) -> None:
    async with http_upstream("--auth", "oauth", "--token-lifetime", "600") as base:
        credentials = oauth(base)
        replicas = [replica_tokens(shared(redis_server), credentials) for _ in range(3)]
        got = await all_at_once(replicas * 5)
        restarted = replica_tokens(shared(redis_server), credentials)
        again = await restarted.access_token()
        renewed = await replicas[0].access_token(renew=True)  # the upstream said 401: one new refresh
        after_renewal = await replicas[1].access_token(renew=True)  # the same 401 on another replica: adopts it
        seen = await stats(base)
    assert len(set(got)) == 1 and again == got[0]
    assert renewed != got[0] and after_renewal == renewed
    assert seen["reused_refresh_tokens"] == 0
    assert len(seen["grants"]) == 2, seen["grants"]
    assert sum(tokens.requests for tokens in [*replicas, restarted]) == 2


async def test_replicas_exchange_a_principals_token_once_and_each_principal_its_own(
    redis_server: Redis, auth_server: AuthServer
) -> None:
    auth_server.state.exchange_clients["conduit-x"] = "secret-x"
    credentials = Credentials.model_validate(
        {
            "type": "tokenExchange",
            "tokenUrl": f"{auth_server.url}/tenant/token",
            "clientId": "conduit-x",
            "clientSecret": "secret-x",
            "audience": "api",
        }
    )
    subjects = {"oauth:dora": "h.eyJzdWIiOiAiZG9yYSJ9.s", "oauth:erin": "h.eyJzdWIiOiAiZXJpbiJ9.s"}

    def replica(principal: str) -> OAuthTokens:
        state = SharedTokenState(shared(redis_server), state_name("remote", credentials, principal))
        return OAuthTokens(
            credentials, lambda: guarded_client(LOOPBACK), state=state, subject=lambda: subjects[principal]
        )

    got = await all_at_once([replica("oauth:dora") for _ in range(3)] * 3)
    erin = await replica("oauth:erin").access_token()
    assert len(set(got)) == 1 and got[0].startswith("user-x-dora-")
    assert erin.startswith("user-x-erin-")
    assert [entry["sub"] for entry in auth_server.state.exchanged] == ["dora", "erin"]


async def test_tokens_sealed_with_another_cluster_key_are_not_read(
    redis_server: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async with http_upstream("--auth", "oauth", "--token-lifetime", "600") as base:
        credentials = oauth(base)
        first = await replica_tokens(shared(redis_server), credentials).access_token()
        other = replica_tokens(shared(redis_server, key=new_key()), credentials)
        with caplog.at_level(logging.WARNING), pytest.raises(UpstreamError, match="refused the refresh_token grant"):
            await other.access_token()  # it cannot read the rotated refresh token, and refresh-0 was used
        raw = await shared(redis_server).client.keys("conduit:tokens:*")
        value = await shared(redis_server).client.get(raw[0])
    assert first.encode() not in value and b"refresh-" not in value  # encrypted at rest
    assert "cannot be read with cluster.key" in caplog.text


async def test_tokens_go_on_locally_while_redis_is_away_or_fail_when_told_to_refuse(redis_server: Redis) -> None:
    async with http_upstream("--auth", "oauth", "--token-lifetime", "600") as base:
        credentials = oauth(base)
        redis_server.stop()
        local = await replica_tokens(shared(redis_server, "local"), credentials).access_token()
        with pytest.raises(StoreUnavailableError):
            await replica_tokens(shared(redis_server, "refuse"), credentials).access_token()
    assert local.startswith("access-")


def test_credentials_stored_by_conduit_auth_reach_every_replica_and_are_sealed(redis_server: Redis) -> None:
    key = new_key()
    writer = CredentialStore(RedisVault(shared(redis_server)), key)  # `conduit auth` in cluster mode
    serving = CredentialStore(RedisVault(shared(redis_server)), key)
    assert serving.get("alice", "github") is None
    writer.put("alice", "github", Credentials.model_validate({"type": "bearer", "bearerToken": "user-alice-secret"}))
    found = None
    for _ in range(40):  # a replica looks again at most once a second
        found = serving.get("alice", "github")
        if found is not None:
            break
        time.sleep(0.05)
    assert found is not None and found[0].bearer_token is not None
    assert found[0].bearer_token.get_secret_value() == "user-alice-secret"
    raw = shared(redis_server).sync_client.hget("conduit:credentials", "document")
    assert isinstance(raw, bytes) and b"user-alice-secret" not in raw
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        CredentialStore(RedisVault(shared(redis_server)), new_key()).get("alice", "github")


def test_while_redis_is_away_a_replica_keeps_the_credentials_it_read_or_refuses(redis_server: Redis) -> None:
    key = new_key()
    CredentialStore(RedisVault(shared(redis_server)), key).put(
        "alice", "github", Credentials.model_validate({"type": "bearer", "bearerToken": "user-alice-secret"})
    )
    local = CredentialStore(RedisVault(shared(redis_server, "local")), key)
    refusing = CredentialStore(RedisVault(shared(redis_server, "refuse")), key)
    assert local.get("alice", "github") is not None and refusing.get("alice", "github") is not None
    redis_server.stop()
    time.sleep(1.1)  # past the re-check interval: both ask Redis again
    assert local.get("alice", "github") is not None
    with pytest.raises(StoreUnavailableError):
        refusing.get("alice", "github")
    with pytest.raises(StoreUnavailableError):
        local.put("bob", "github", Credentials.model_validate({"type": "bearer", "bearerToken": "x"}))


def test_cluster_mode_needs_a_valid_key() -> None:
    with pytest.raises(ValueError, match="cluster.redisUrl needs cluster.key"):
        Config.model_validate({"cluster": {"redisUrl": "redis://127.0.0.1:1/0"}})
    with pytest.raises(ValueError, match="cluster.key is not a Fernet key"):
        Config.model_validate({"cluster": {"redisUrl": "redis://127.0.0.1:1/0", "key": "not-a-key"}})
    config = Config.model_validate(
        {"cluster": {"redisUrl": "redis://:pw-secret@127.0.0.1:1/0", "key": CLUSTER_KEY}, **NO_STATE}
    )
    assert config.stateless_http and CLUSTER_KEY in config.secret_values()
    assert "redis://:pw-secret@127.0.0.1:1/0" in config.secret_values()  # scrubbed from logs
    assert not Config.model_validate({}).stateless_http


async def test_run_time_upstream_registration_is_refused_in_cluster_mode(redis_server: Redis, tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "cluster": {"redisUrl": redis_server.url, "key": CLUSTER_KEY},
            **NO_STATE,
            "pools": {"typescript": {"min": 0, "max": 0}, "python": {"min": 0, "max": 0}},
        }
    )
    async with open_gateway(config, master_token=MASTER, base_dir=tmp_path, host_env=dict(os.environ)) as gateway:
        with pytest.raises(MethodNotFoundError, match="cluster mode"):
            gateway.register_upstream({"id": "late", "command": sys.executable, "args": [TOOLBOX]})
        assert gateway.health()[1]["cluster"] == {"status": "ok", "onStoreError": "local"}


def test_conduit_auth_in_cluster_mode_stores_the_credential_in_redis_and_fails_clearly_without_it(
    redis_server: Redis, tmp_path: Path
) -> None:
    key = new_key()
    config = write_config(
        tmp_path,
        {
            "cluster": {"redisUrl": redis_server.url, "key": CLUSTER_KEY},
            **NO_STATE,
            "auth": {
                "principals": [{"id": "alice", "apiKey": "alice-key-0123456789abcdef"}],
                "credentialStore": {"key": key},
            },
            "upstreams": [
                {
                    "id": "remote",
                    "type": "streamableHttp",
                    "url": "https://mcp.example/mcp",
                    "credentials": "perPrincipal",
                }
            ],
        },
    )
    store_as_alice = ["auth", "--principal", "alice", "--upstream", "remote", "--config", str(config)]
    stored = conduit(*store_as_alice, "--bearer-token", "user-alice-1")
    assert stored.returncode == 0, stored.stderr
    assert "in Redis (conduit:credentials)" in stored.stderr and "user-alice-1" not in stored.stderr
    found = CredentialStore(RedisVault(shared(redis_server)), key).get("alice", "remote")
    assert found is not None and found[0].bearer_token is not None
    assert found[0].bearer_token.get_secret_value() == "user-alice-1"
    redis_server.stop()
    refused = conduit(*store_as_alice, "--bearer-token", "user-alice-2")
    assert refused.returncode == 1
    assert "Redis" in refused.stderr and "unreachable" in refused.stderr and "Traceback" not in refused.stderr


def test_doctor_says_whether_the_clusters_redis_answers(redis_server: Redis, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {"cluster": {"redisUrl": f"redis://:pw-9f2@127.0.0.1:{redis_server.port}/0", "key": CLUSTER_KEY}, **NO_STATE},
    )
    up = conduit("doctor", "--config", str(config))
    assert "ok    cluster: Redis answers" in up.stdout, up.stdout + up.stderr
    redis_server.stop()
    down = conduit("doctor", "--config", str(config))
    assert down.returncode == 1 and "FAIL  cluster: Redis unreachable" in down.stderr
    assert "pw-9f2" not in down.stdout + down.stderr


async def test_run_records_are_sealed_commands_wait_for_the_owner_and_redis_away_never_breaks_the_owner(
    redis_server: Redis,
) -> None:
    from conduit.cluster.run_mirror import RunMirror

    owner, reader = (
        RunMirror(shared(redis_server), "aaaaaaaa", 60, 60),
        RunMirror(shared(redis_server), "bbbbbbbb", 60, 60),
    )
    await owner.publish("aaaaaaaa-run", {"principal": "alice", "status": {"stdout": "secret-output"}}, finished=False)
    assert (await reader.read("aaaaaaaa-run"))["principal"] == "alice"  # type: ignore[index]
    raw = shared(redis_server).sync_client.get("conduit:run:aaaaaaaa-run")
    assert raw is not None and b"secret-output" not in raw and b"alice" not in raw  # sealed with cluster.key
    other = RunMirror(shared(redis_server, key=new_key()), "cccccccc", 60, 60)
    assert await other.read("aaaaaaaa-run") is None  # another cluster.key reads nothing
    await reader.post("aaaaaaaa-run", {"cancel": True})
    await reader.post("aaaaaaaa-run", {"key": "approval-1", "answer": "accept"})
    assert await owner.take("aaaaaaaa-run") == [{"cancel": True}, {"key": "approval-1", "answer": "accept"}]
    assert await owner.take("aaaaaaaa-run") == []  # taken once
    assert await reader.alive("aaaaaaaa") is False
    async with anyio.create_task_group() as tg:
        tg.start_soon(owner.beat)  # its first beat is at once
        await anyio.sleep(0.3)
        assert await reader.alive("aaaaaaaa") is True
        tg.cancel_scope.cancel()
    redis_server.stop()
    refusing = RunMirror(shared(redis_server, on_error="refuse"), "dddddddd", 60, 60)
    await refusing.publish("dddddddd-run", {"principal": "bob"}, finished=True)  # skipped: the owner goes on
    assert await refusing.take("dddddddd-run") == []  # the owner's loop never fails
    with pytest.raises(StoreUnavailableError):
        await refusing.read("aaaaaaaa-run")  # a reader is told Redis is away (-32000), not "unknown"
    with pytest.raises(StoreUnavailableError):
        await refusing.post("aaaaaaaa-run", {"cancel": True})  # a command is never silently dropped
    local = RunMirror(shared(redis_server), "eeeeeeee", 60, 60)
    assert await local.read("aaaaaaaa-run") is None and await local.alive("aaaaaaaa") is True  # never "lost" then
