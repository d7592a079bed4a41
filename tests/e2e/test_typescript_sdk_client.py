"""A second, independent MCP client: the official TypeScript SDK (from npm) over stdio and HTTP."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from support import CONDUIT, ConduitHttp

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

CLIENT = Path(__file__).parents[1] / "clients" / "typescript" / "client.cjs"
SDK_DIR = Path(sys.executable).parents[1] / "mcp-ts-client"  # installed by `make test`


async def run_client(*args: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "Node.js is required (it is one of the machine's prerequisites)"
    assert (SDK_DIR / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir(), (
        f"run `make test` to install {SDK_DIR}"
    )
    with anyio.fail_after(90):
        done = await anyio.run_process([node, str(CLIENT), str(SDK_DIR), *args], check=False)
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def check(report: dict[str, Any]) -> None:
    assert "conduit__mcp_execute_typescript" in report["tools"]
    assert "toolbox__add" in report["tools"]
    assert report["isError"] is False
    assert report["result"]["stdout"] == "sum 42\n"
    assert report["result"]["result"] == {"sum": 42}


async def test_typescript_sdk_client_over_stdio(e2e_config: Path) -> None:
    check(await run_client("stdio", CONDUIT, "serve", "--stdio", "--config", str(e2e_config)))


async def test_typescript_sdk_client_over_streamable_http(e2e_config: Path) -> None:
    async with ConduitHttp.start(e2e_config) as server:
        check(await run_client("http", server.url, server.token))
