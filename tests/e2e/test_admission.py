"""The concurrency cap and bounded queue, over real MCP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from support import ConduitHttp, run_ts, stdio_client_for, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]


async def test_beyond_the_queue_executions_are_refused_as_busy_and_queued_ones_complete(
    tmp_path: Path, toolbox_command: dict[str, Any]
) -> None:
    config = write_config(
        tmp_path, {"maxConcurrent": 1, "maxQueue": 1, "upstreams": [{"id": "toolbox", **toolbox_command}]}
    )
    results: list[tuple[bool, dict[str, Any]]] = []
    async with Client(stdio_client_for(config)) as client:

        async def run(code: str) -> None:
            results.append(await run_ts(client, code))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "await new Promise((r) => setTimeout(r, 1500)); return 'first';")
            await anyio.sleep(0.5)
            tg.start_soon(run, "return 'queued';")
            await anyio.sleep(0.2)
            tg.start_soon(run, "return 'refused';")
        busy = [out for is_error, out in results if is_error]
        done = sorted(out["result"] for is_error, out in results if not is_error)
        assert done == ["first", "queued"]
        assert len(busy) == 1 and busy[0]["error"]["code"] == -32000
        assert "busy" in busy[0]["error"]["message"]
        is_error, out = await run_ts(client, "return 'after';")
        assert (is_error, out["result"]) == (False, "after")


async def test_http_clients_are_rate_limited_on_work_only_and_stdio_never(
    tmp_path: Path, toolbox_command: dict[str, Any]
) -> None:
    config = write_config(
        tmp_path,
        {
            "rateLimit": "3/minute",
            "upstreams": [{"id": "toolbox", **toolbox_command}],
            "pools": {"typescript": {"min": 0, "max": 0}, "python": {"min": 0, "max": 0}},
        },
    )
    async with ConduitHttp.start(config) as server, server.client() as client:
        await run_ts(client, "return 1;")
        await client.call_tool("toolbox__add", {"a": 1, "b": 2})
        await run_ts(client, "return 3;")
        with pytest.raises(MCPError) as caught:
            await run_ts(client, "return 4;")
        assert caught.value.error.code == -32000
        assert "rate limit 3/minute exceeded for 127.0.0.1; retry in" in caught.value.error.message
        for _ in range(5):  # discovery is not work: an interactive session keeps going
            assert (await client.list_tools()).tools
            await client.call_tool("conduit__mcp_search_tools", {"query": "add"})
        async with httpx2.AsyncClient() as http:
            metrics = (await http.get(f"{server.ops_url}/metrics")).text
        assert "conduit_rate_limited_total 1.0" in metrics
    async with Client(stdio_client_for(config)) as local:
        for index in range(5):
            is_error, out = await run_ts(local, f"return {index};")
            assert (is_error, out["result"]) == (False, index)
