"""The concurrency cap and bounded queue, over real MCP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from support import run_ts, stdio_client_for, write_config

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
