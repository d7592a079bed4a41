"""Conduit leaves nothing behind: upstream and sandbox processes end with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from support import ConduitHttp, process_alive, run_ts, stdio_client_for, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]


async def wait_gone(pid: int) -> None:
    await wait_until(lambda: not process_alive(pid))


async def upstream_pid(client: Client) -> int:
    result = await client.call_tool("toolbox__env", {})
    return int(result.structured_content["pid"])  # type: ignore[index]


async def test_stdio_session_end_stops_upstreams(e2e_config: Path) -> None:
    async with Client(stdio_client_for(e2e_config)) as client:
        pid = await upstream_pid(client)
    await wait_gone(pid)


async def test_http_server_stop_stops_upstreams(e2e_config: Path) -> None:
    async with ConduitHttp.start(e2e_config) as server, server.client() as client:
        pid = await upstream_pid(client)
        is_error, _ = await run_ts(client, "return 1;")
        assert not is_error
    await wait_gone(pid)
