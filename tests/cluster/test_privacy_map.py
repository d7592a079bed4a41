"""Tokens shared by replicas through a real Redis: any replica restores any token, Redis never holds a value
in the clear, issuing is atomic across replicas, the map is bounded and expires, and Redis going away is
answered as ``cluster.onStoreError`` says."""

from __future__ import annotations

import json
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
import redis

from cluster_harness import CLUSTER_KEY, Redis
from conduit.assembly import open_gateway
from conduit.cluster.store import RETRY_S, SharedStore
from conduit.config.schema import ClusterConfig, Config
from conduit.errors import StoreUnavailableError
from conduit.privacy.token_map import LOCAL_NUMBERS, RedisTokenMap
from conduit.security.callers import Caller
from conduit.upstream.credential_store import new_key
from support import MASTER

CRM = str(Path(__file__).parent.parent / "servers" / "crm.py")

pytestmark = pytest.mark.anyio

VALUES = [("EMAIL", "ann.lee@example.com"), ("PHONE", "+1 415 555 0100"), ("CREDIT_CARD", "4111 1111 1111 1111")]


def replica(server: Redis, *, on_error: str = "local", key: str = CLUSTER_KEY, ttl_s: float = 60, bound: int = 1000):
    store = SharedStore(ClusterConfig(redis_url=server.url, key=key, on_store_error=on_error))  # type: ignore[arg-type]
    return store, RedisTokenMap(store, ttl_s, bound)


async def test_any_replica_restores_any_token_and_redis_never_holds_a_value(redis_server: Redis) -> None:
    (one_store, one), (two_store, two) = replica(redis_server), replica(redis_server)
    try:
        tokens = await one.tokens("alice", VALUES)
        assert tokens == ["[EMAIL_1]", "[PHONE_1]", "[CREDIT_CARD_1]"]
        assert await two.tokens("alice", [VALUES[0], ("EMAIL", "bo@example.org")]) == ["[EMAIL_1]", "[EMAIL_2]"]
        assert await two.values("alice", [*tokens, "[EMAIL_2]", "[EMAIL_3]"]) == [v for _, v in VALUES] + [
            "bo@example.org",
            None,
        ]
        assert await two.values("bob", tokens) == [None, None, None]  # alice's numbering means nothing to bob
        assert await two.tokens("bob", [VALUES[1]]) == ["[PHONE_1]"]
        raw = redis.Redis.from_url(redis_server.url)
        keys = raw.keys("*")
        assert keys
        dump = b" ".join(keys) + b" ".join(
            b" ".join(map(bytes, raw.zrange(k, 0, -1)))
            if raw.type(k) == b"zset"
            else b" ".join(raw.hvals(k))
            if raw.type(k) == b"hash"
            else raw.get(k) or b""
            for k in keys
        )
        for _, value in [*VALUES, ("EMAIL", "bo@example.org")]:
            assert value.encode() not in dump
        assert b"alice" not in dump and b"bob" not in dump  # principals are keyed hashes too
        raw.close()
    finally:
        await one_store.aclose()
        await two_store.aclose()


async def test_two_replicas_issuing_the_same_new_values_at_once_agree(redis_server: Redis) -> None:
    stores = [replica(redis_server) for _ in range(4)]
    values = [("EMAIL", f"user{n}@example.com") for n in range(50)]
    answers: list[list[str]] = []
    try:

        async def issue(token_map: RedisTokenMap) -> None:
            answers.append(await token_map.tokens("alice", values))

        async with anyio.create_task_group() as tg:
            for _, token_map in stores:
                tg.start_soon(issue, token_map)
        assert all(answer == answers[0] for answer in answers)
        assert len(set(answers[0])) == 50
    finally:
        for store, _ in stores:
            await store.aclose()


async def test_the_shared_map_is_bounded_expires_and_is_sealed_with_the_cluster_key(redis_server: Redis) -> None:
    (store, bounded) = replica(redis_server, bound=100, ttl_s=1)
    (other_store, other_key) = replica(redis_server, key=new_key())
    try:
        first = await bounded.tokens("alice", [("EMAIL", f"user{n}@example.com") for n in range(150)])
        assert first[-1] == "[EMAIL_150]"
        restored = await bounded.values("alice", ["[EMAIL_1]", "[EMAIL_50]", "[EMAIL_51]", "[EMAIL_150]"])
        assert restored == [None, None, "user50@example.com", "user149@example.com"]  # the 50 oldest evicted
        assert await other_key.values("alice", ["[EMAIL_150]"]) == [None]  # another key: other hashes, no value
        await anyio.sleep(1.3)
        assert await bounded.values("alice", ["[EMAIL_150]"]) == [None]  # expired
    finally:
        await store.aclose()
        await other_store.aclose()


async def test_redis_away_tokenises_locally_or_refuses_as_on_store_error_says(redis_server: Redis) -> None:
    (local_store, local), (refuse_store, refusing) = replica(redis_server), replica(redis_server, on_error="refuse")
    try:
        assert await local.tokens("alice", VALUES[:1]) == ["[EMAIL_1]"]
        redis_server.stop()
        away = await local.tokens("alice", [VALUES[0], ("EMAIL", "new@example.com")])
        numbers = [int(token.rsplit("_", 1)[1][:-1]) for token in away]
        assert all(number > LOCAL_NUMBERS for number in numbers)  # never a number the shared map may issue
        assert await local.values("alice", away) == [VALUES[0][1], "new@example.com"]  # this replica restores them
        with pytest.raises(StoreUnavailableError):
            await refusing.tokens("alice", VALUES[:1])
        with pytest.raises(StoreUnavailableError):
            await refusing.values("alice", ["[EMAIL_1]"])
        redis_server.start()
        await anyio.sleep(RETRY_S + 0.1)
        assert await local.values("alice", ["[EMAIL_1]", away[1]]) == [None, "new@example.com"]  # a fresh Redis
        assert await refusing.tokens("alice", VALUES[:1]) == ["[EMAIL_1]"]
    finally:
        await local_store.aclose()
        await refuse_store.aclose()


async def test_a_token_one_replica_gave_out_is_restored_by_another_on_the_way_to_the_upstream(
    redis_server: Redis, tmp_path: Path
) -> None:
    crm_log = tmp_path / "crm.jsonl"
    config = Config.model_validate(
        {
            "upstreams": [{"id": "crm", "command": sys.executable, "args": [CRM], "env": {"CRM_LOG": str(crm_log)}}],
            "privacy": {"tokenize": ["email", "credit_card"]},
            "cluster": {"redisUrl": redis_server.url, "key": CLUSTER_KEY},
            "workspace": {"enabled": False},
            "skills": {"enabled": False},
            "pools": {"typescript": {"min": 0, "max": 1}, "python": {"min": 0, "max": 0}},
        }
    )
    alice = Caller("alice", "principal")
    read = "return (await tools.crm.customers({})).structuredContent.customers[0];"
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    async with AsyncExitStack() as stack:
        one, two = [
            await stack.enter_async_context(
                open_gateway(config, master_token=MASTER, base_dir=tmp_path / name, host_env=dict(os.environ))
            )
            for name in ("one", "two")
        ]
        first = await one.execute("typescript", read, caller=alice)
        assert first.error is None, first
        ann = first.result
        assert ann["email"] == "[EMAIL_1]" and ann["card"] == "[CREDIT_CARD_1]", first
        again = await two.execute("typescript", read, caller=alice)
        assert again.result == ann  # the same values, the same tokens, on any replica
        sent = await two.execute(
            "typescript",
            'return await tools.crm.send_email({ to: "[EMAIL_1]", body: "[CREDIT_CARD_1]" });',
            caller=alice,
        )
        assert sent.error is None, sent
    arrived = [json.loads(line) for line in crm_log.read_text().splitlines()]
    assert arrived == [
        {"tool": "send_email", "arguments": {"to": "ann.lee@example.com", "body": "4111 1111 1111 1111"}}
    ]


async def test_with_redis_away_and_refuse_output_with_values_is_withheld_not_sent_in_the_clear(
    redis_server: Redis, tmp_path: Path
) -> None:
    config = Config.model_validate(
        {
            "privacy": {"tokenize": ["email"]},
            "cluster": {"redisUrl": redis_server.url, "key": CLUSTER_KEY, "onStoreError": "refuse"},
            "workspace": {"enabled": False},
            "skills": {"enabled": False},
            "pools": {"typescript": {"min": 0, "max": 1}, "python": {"min": 0, "max": 0}},
        }
    )
    heard: list[str] = []
    async with open_gateway(config, master_token=MASTER, base_dir=tmp_path, host_env=dict(os.environ)) as gateway:
        plain = await gateway.execute("typescript", 'console.log("no personal values"); return 1;')
        assert plain.stdout == "no personal values\n"
        redis_server.stop()
        with pytest.raises(StoreUnavailableError):
            await gateway.execute(
                "typescript",
                'console.log("ann.lee@example.com"); return "ann.lee@example.com";',
                on_output=lambda stream, text: heard.append(text),
            )
        assert not [text for text in heard if "ann" in text]  # nor did it stream live
        quiet = await gateway.execute("typescript", 'console.log("nothing to hide"); return 2;')
        assert quiet.stdout == "nothing to hide\n"  # output without values needs no map
