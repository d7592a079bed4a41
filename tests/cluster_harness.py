"""A real cluster on loopback: one ``redis-server``, one PostgreSQL (the state store: workspaces and skills),
three ``conduit serve`` replicas and ``haproxy`` in front.

``redis-server``, ``haproxy`` and PostgreSQL come from Debian's packages: ``make setup`` installs them when it
runs as root (``.ci/run`` makes sure they are there); elsewhere these tests say what is missing and skip.
Every port is chosen free at run time; a replica keeps its ports across restarts, so the balancer
finds it again.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conduit.upstream.credential_store import new_key
from postgres_server import PostgresServer, postgres_server
from support import ConduitHttp, free_port, write_config

MASTER_TOKEN = "cluster-master-token-0123456789"
CLUSTER_KEY = new_key()
CHECK_INTERVAL_MS = 200
"""haproxy's health-check interval against each replica's /ready."""


def need(*programs: str) -> None:
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian packages; `make setup` as root installs them)")


@dataclass
class Redis:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            subprocess.run(["sleep", "0.02"], check=False)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@dataclass
class Replica:
    name: str
    config: Path
    port: int
    ops_port: int
    server: ConduitHttp | None = None
    stack: AsyncExitStack | None = None

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    async def start(self) -> None:
        """Start the replica on its port (kept across restarts: ``free_port`` picks it where no other
        process's ``bind(0)`` or outgoing connection can take it while the replica is down)."""
        self.stack = AsyncExitStack()
        try:
            self.server = await self.stack.enter_async_context(
                ConduitHttp.start(self.config, token=MASTER_TOKEN, port=self.port)
            )
        except BaseException:
            await self.stack.aclose()
            raise

    async def stop(self) -> None:
        if self.stack is not None:
            await self.stack.aclose()
        self.stack = self.server = None


@dataclass
class Cluster:
    """Three replicas behind haproxy (round robin, /ready checked every 200 ms), sharing one Redis and one
    PostgreSQL database."""

    redis: Redis
    replicas: list[Replica]
    balancer_port: int
    directory: Path
    balancer: subprocess.Popen[bytes] | None = None
    postgres: PostgresServer | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.balancer_port}/mcp"

    @asynccontextmanager
    async def client(self, token: str = MASTER_TOKEN, **options: Any) -> AsyncIterator[Client]:
        """An official client through the balancer (``options``: the ``Client``'s)."""
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            async with Client(streamable_http_client(self.url, http_client=http), **options) as client:
                yield client

    def start_balancer(self) -> None:
        servers = "\n".join(f"    server {r.name} 127.0.0.1:{r.port} check port {r.ops_port}" for r in self.replicas)
        config = self.directory / "haproxy.cfg"
        config.write_text(
            f"""global
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    option forwardfor
    # A request must never go out on a kept-alive connection to a replica that has just died: haproxy
    # cannot retry a POST that was sent, so it would be lost though it never ran. New connections to a
    # dead replica are refused at once, and retried on another (redispatch on every retry).
    http-reuse never
    option redispatch 1
    retries 3
frontend mcp
    bind 127.0.0.1:{self.balancer_port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /ready
    # Two failed checks take a replica out: one slow answer on a saturated machine must not (with every
    # replica out, haproxy answers 503 itself).
    timeout check 1s
    default-server inter {CHECK_INTERVAL_MS}ms fall 2 rise 2
{servers}
"""
        )
        self.balancer = subprocess.Popen(
            ["haproxy", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    async def wait_all_up(self, replicas: list[Replica] | None = None) -> None:
        """Until haproxy has seen every replica (or those of ``replicas``) ready (its checks need ``rise`` passes)."""
        async with httpx2.AsyncClient(timeout=5) as http:
            for replica in self.replicas if replicas is None else replicas:
                assert (await http.get(f"{replica.ops_url}/ready")).status_code == 200
        await anyio.sleep(CHECK_INTERVAL_MS * 3 / 1000)

    def stop_balancer(self) -> None:
        if self.balancer is not None:
            self.balancer.kill()
            self.balancer.wait()


def replica_configs(
    directory: Path, redis_url: str, document: Mapping[str, Any], count: int = 3, state_url: str | None = None
) -> list[Replica]:
    replicas = []
    for index in range(count):
        ops_port = free_port()
        home = directory / f"replica-{index}"  # each its own log
        home.mkdir()
        config = write_config(
            home,
            {
                "opsPort": ops_port,
                "rateLimit": "",
                "http": {"trustedProxies": ["127.0.0.1"], "drainDelayMs": 1000, "drainTimeoutMs": 20_000},
                **document,
                "cluster": {"redisUrl": redis_url, "key": CLUSTER_KEY, **document.get("cluster", {})},
                **({"state": {"url": state_url}} if state_url else {}),
                "pools": {
                    "typescript": {"min": 1, "max": 4},
                    "python": {"min": 0, "max": 1},
                    "isolate": {"min": 0, "max": 1},
                },
            },
        )
        replicas.append(Replica(f"r{index}", config, free_port(), ops_port))
    return replicas


@asynccontextmanager
async def running_cluster(directory: Path, document: Mapping[str, Any]) -> AsyncIterator[Cluster]:
    need("redis-server", "haproxy")
    state = AsyncExitStack()
    postgres = state.enter_context(postgres_server())
    redis = Redis(free_port(), directory)
    redis.start()
    replicas = replica_configs(directory, redis.url, document, state_url=postgres.create_database())
    cluster = Cluster(redis, replicas, free_port(), directory)
    cluster.postgres = postgres
    try:
        async with anyio.create_task_group() as tg:
            for replica in cluster.replicas:
                tg.start_soon(replica.start)
        cluster.start_balancer()
        await cluster.wait_all_up()
        yield cluster
    finally:
        cluster.stop_balancer()
        for replica in cluster.replicas:
            await replica.stop()
        redis.stop()
        await state.aclose()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    """A real ``redis-server`` on a free loopback port, for one test."""
    need("redis-server")
    redis = Redis(free_port(), tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()
