"""Shared fixtures: real Conduit servers (stdio and HTTP) with real upstream MCP servers."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from cluster_harness import redis_server
from conduit.assembly import open_gateway
from conduit.config.schema import Config
from conduit.core.gateway import Gateway
from servers.oauth_server import AuthServer, AuthServerState, running
from support import CONDUIT, MASTER, TOOLBOX, connected, write_config

__all__ = ["redis_server"]  # a fixture, for tests/cluster


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def toolbox_command() -> dict[str, Any]:
    return {"command": sys.executable, "args": [TOOLBOX]}


@pytest.fixture(scope="module")
async def gateway(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """An in-process gateway (so tests can reach its bridge and runtimes) with the toolbox upstream."""
    config = Config.model_validate(
        {
            "upstreams": [{"id": "toolbox", "command": sys.executable, "args": [TOOLBOX]}],
            "maxCodeBytes": 10_000,
            "pools": {"typescript": {"min": 0, "max": 0}, "python": {"min": 0, "max": 0}},
        }
    )
    base = tmp_path_factory.mktemp("gw")
    async with open_gateway(config, master_token=MASTER, base_dir=base, host_env=dict(os.environ)) as gw:
        yield gw


@pytest.fixture(scope="module")
def e2e_config(tmp_path_factory: pytest.TempPathFactory, toolbox_command: dict[str, Any]) -> Path:
    """Two upstreams: our toolbox and PyPI's mcp-server-time."""
    return write_config(
        tmp_path_factory.mktemp("conduit"),
        {
            "upstreams": [
                {"id": "toolbox", **toolbox_command, "timeoutMs": 5000},
                {"id": "time", "command": "mcp-server-time", "args": ["--local-timezone", "Etc/UTC"]},
            ],
            "resourceLimits": {"timeoutMs": 10_000, "memoryLimitMb": 128},
            "pools": {"typescript": {"min": 1, "max": 2}, "python": {"min": 1, "max": 2}},
        },
    )


@pytest.fixture(scope="module", params=["stdio", "http"])
async def conduit(request: pytest.FixtureRequest, e2e_config: Path, anyio_backend: str) -> AsyncIterator[Client]:
    """An official MCP client connected to a real Conduit process, over stdio and over HTTP."""
    async with connected(request.param, e2e_config) as client:
        yield client


@pytest.fixture
async def auth_server(anyio_backend: str) -> AsyncIterator[AuthServer]:
    """A real OAuth authorization server (and protected MCP resource) on loopback: tests/servers/oauth_server.py."""
    async with running(AuthServerState()) as server:
        yield server


@pytest.fixture
def loopback_listener() -> Iterator[tuple[int, list[socket.socket]]]:
    """A live TCP listener on 127.0.0.1 that records every connection it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(2)
    server.close()
    for conn in accepted:
        conn.close()


__all__ = ["CONDUIT"]
