"""Real client addresses behind a proxy: X-Forwarded-For is believed from `http.trustedProxies` only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from support import ConduitHttp, run_ts, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]


@asynccontextmanager
async def client_from(server: ConduitHttp, forwarded_for: str) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {server.token}", "X-Forwarded-For": forwarded_for}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        async with Client(streamable_http_client(server.url, http_client=http)) as client:
            yield client


async def refusal(client: Client) -> str | None:
    """The rate-limit refusal of one execution, or None when it ran."""
    try:
        failed, _ = await run_ts(client, "return 1;")
    except MCPError as exc:
        assert exc.error.code == -32000
        return exc.error.message
    assert not failed
    return None


@pytest.mark.parametrize("trusted", [False, True], ids=["no-trusted-proxies", "loopback-trusted"])
async def test_forwarded_addresses_count_only_from_trusted_proxies(tmp_path: Path, trusted: bool) -> None:
    document: dict[str, Any] = {"rateLimit": "2/minute", "pools": {"python": {"min": 0, "max": 0}}}
    if trusted:
        document["http"] = {"trustedProxies": ["127.0.0.1/32", "::1"]}
    async with ConduitHttp.start(write_config(tmp_path, document)) as server:
        async with client_from(server, "198.51.100.7") as first:
            assert await refusal(first) is None
            assert await refusal(first) is None
        async with client_from(server, "198.51.100.8") as second:
            refused = await refusal(second)
        async with client_from(server, "198.51.100.7") as first_again:
            refused_again = await refusal(first_again)
    if trusted:  # the proxy's word is taken: two clients, each with its own budget
        assert refused is None
        assert refused_again is not None and "198.51.100.7" in refused_again
    else:  # a forged header changes nothing: one peer, 127.0.0.1, one budget
        assert refused is not None and "127.0.0.1" in refused and "198.51.100" not in refused
