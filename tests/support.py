"""Helpers for tests that run Conduit as a real process."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

CONDUIT = str(Path(sys.executable).parent / "conduit")
EXECUTE_TS = "conduit__mcp_execute_typescript"
EXECUTE_ISOLATE = "conduit__mcp_execute_isolate"
EXECUTE_PYTHON = "conduit__mcp_execute_python"
STATUS = "conduit__mcp_execution_status"
CANCEL = "conduit__mcp_cancel_execution"


def sleeping_program(ms: int) -> str:
    """A TypeScript program that prints, sleeps ``ms``, prints again and returns 42."""
    return (
        f'console.log("started");\nawait new Promise((resolve) => setTimeout(resolve, {ms}));\n'
        'console.log("finished");\nreturn 42;\n'
    )


def slept(execution_id: str) -> dict[str, Any]:
    """The status of a finished :func:`sleeping_program` run: exactly its foreground answer, and its id."""
    stdout = "started\nfinished\n"
    return {"executionId": execution_id, "status": "done", "stdout": stdout, "stderr": "", "exitCode": 0, "result": 42}


async def start_background(client: Client, code: str, **arguments: Any) -> str:
    """Start a background TypeScript run; its execution id."""
    result = await client.call_tool(EXECUTE_TS, {"code": code, "background": True, **arguments})
    assert not result.is_error, result
    answer = result.structured_content
    assert answer is not None and answer["status"] == "running", answer
    return str(answer["executionId"])


async def run_status(client: Client, execution_id: str, tool: str = STATUS) -> tuple[bool, dict[str, Any]]:
    """A run's status (or, with ``tool=CANCEL``, what cancelling it answered): (isError, structuredContent)."""
    result = await client.call_tool(tool, {"executionId": execution_id})
    assert result.structured_content is not None, result
    return bool(result.is_error), dict(result.structured_content)


MASTER = "bridge-test-master-token-abcdef0123456789"
TOOLBOX = str(Path(__file__).parent / "servers" / "toolbox.py")
HTTP_UPSTREAM = str(Path(__file__).parent / "servers" / "http_upstream.py")
ISSUER = str(Path(__file__).parent / "servers" / "issuer.py")
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}
"""A raw MCP initialize request, for tests that speak the wire themselves."""


def conduit(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``conduit`` command to completion (two minutes at most), capturing its text output."""
    return subprocess.run(
        [CONDUIT, *args], input=stdin, capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def write_config(directory: Path, document: Mapping[str, Any], name: str = "conduit.yaml") -> Path:
    """A config file; the ops endpoints get a free port unless the document names one."""
    path = directory / name
    path.write_text(yaml.safe_dump({"opsPort": 0, **document}), encoding="utf-8")
    return path


def stdio_client_for(config: Path, env: Mapping[str, str] | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=CONDUIT, args=["serve", "--stdio", "--config", str(config)], env=dict(env or {})
    )


@dataclass
class ConduitHttp:
    """A ``conduit serve`` process on a free loopback port."""

    url: str
    token: str
    process: anyio.abc.Process
    log: Path
    ops_url: str | None = None

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        config: Path,
        token: str = "test-master-token-0123456789",
        extra_env: Mapping[str, str] | None = None,
        port: int = 0,
    ) -> AsyncIterator[ConduitHttp]:
        log = config.parent / "conduit-http.log"
        env = {**os.environ, "IPC_BEARER_TOKEN": token, **(extra_env or {})}
        with log.open("wb") as sink:
            process = await anyio.open_process(
                [CONDUIT, "serve", "--config", str(config), "--port", str(port)], stdout=sink, stderr=sink, env=env
            )
        try:
            url = await _wait_for_url(log, process, "Conduit listening on ")
            ops_url = await _wait_for_url(log, process, "Conduit ops on ")
            yield cls(url=url, token=token, process=process, log=log, ops_url=ops_url.split()[0])
        finally:
            await stop_process(process, grace=10)

    @asynccontextmanager
    async def client(self, token: str | None = None, **options: Any) -> AsyncIterator[Client]:
        """An official client (``options``: the ``Client``'s, e.g. ``elicitation_callback``)."""
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            async with Client(streamable_http_client(self.url, http_client=http), **options) as client:
                yield client


@asynccontextmanager
async def connected(transport: str, config: Path, **options: Any) -> AsyncIterator[Client]:
    """An official MCP client connected to a real Conduit process, over ``transport`` (stdio or http);
    ``options`` are the ``Client``'s (``elicitation_callback``...)."""
    if transport == "stdio":
        async with Client(stdio_client_for(config), **options) as client:
            yield client
    else:
        async with ConduitHttp.start(config) as server, server.client(**options) as client:
            yield client


async def scrape(server: ConduitHttp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, keyed by name and sorted labels."""
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.get(f"{server.ops_url}/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def stop_process(process: anyio.abc.Process, grace: float) -> None:
    """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL; always closes the pipes."""
    if process.returncode is None:
        process.terminate()
    with anyio.move_on_after(grace):
        await process.wait()
    if process.returncode is None:
        process.kill()
    await process.aclose()


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out by itself (``bind`` to port 0, ``connect``)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server that is told its port (and may be restarted on it).

    Chosen below the kernel's ephemeral range: a port from that range, once released, can be taken at
    any moment by some other process's ``bind(0)`` or outgoing connection, and the server (or a replica
    restarted on its old port) then finds it in use. Never the same port twice in one test session."""
    low = _ephemeral_low()
    for _ in range(1000):
        port = random.randrange(10_000, low) if low > 11_000 else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen = int(sock.getsockname()[1])
        _HANDED_OUT.add(chosen)
        return chosen
    raise RuntimeError("no free port below the ephemeral range")


async def wait_until(predicate: Callable[[], bool], interval: float = 0.05) -> None:
    """Poll ``predicate`` until it holds, for at most 15 s (conditions with no event to wait on: process exit)."""
    with anyio.fail_after(15):
        while True:
            if predicate():
                return
            await anyio.sleep(interval)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stat_fields(path: Path) -> list[str]:
    """The fields of a ``/proc/<pid>/stat`` file after the command name: state, ppid, ..."""
    stat = path.read_text()
    return stat[stat.rindex(")") + 2 :].split()


def children(parent: int, marker: str) -> set[int]:
    """Child processes of ``parent`` whose command line contains ``marker``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(stat_fields(entry / "stat")[1]) != parent:
                continue
            if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.add(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def descendants(root: int) -> set[int]:
    """Every process below ``root`` (children, their children, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(stat_fields(entry / "stat")[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def command_names(pids: set[int]) -> set[str]:
    """The command names (``comm``) of those of ``pids`` still running."""
    names = set()
    for pid in pids:
        try:
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return names


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


async def _wait_for_url(log: Path, process: anyio.abc.Process, prefix: str) -> str:
    with anyio.fail_after(30):
        while True:
            for line in _read(log).splitlines():
                if line.startswith(prefix):
                    return line.removeprefix(prefix).strip()
            if process.returncode is not None:
                raise RuntimeError(f"conduit exited early:\n{_read(log)}")
            await anyio.sleep(0.05)


async def run_ts(client: Client, code: str, **arguments: Any) -> tuple[bool, dict[str, Any]]:
    """Execute TypeScript; returns (isError, structuredContent) and checks the text twin agrees."""
    return await run_code(client, EXECUTE_TS, code, **arguments)


async def run_js(client: Client, code: str, **arguments: Any) -> tuple[bool, dict[str, Any]]:
    """Execute JavaScript in a V8 isolate; returns (isError, structuredContent)."""
    return await run_code(client, EXECUTE_ISOLATE, code, **arguments)


async def conduit_credentials(config: Path, store_key: str, *arguments: str) -> tuple[int, str, str]:
    """``conduit credentials ARGUMENTS`` for ``config`` whose store key is in ``STORE_KEY``: exit code, stdout,
    stderr."""
    done = await anyio.run_process(
        [CONDUIT, "credentials", *arguments, "--config", str(config)],
        env={"PATH": "/usr/bin:/bin", "STORE_KEY": store_key},
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def run_code(client: Client, tool: str, code: str, **arguments: Any) -> tuple[bool, dict[str, Any]]:
    result = await client.call_tool(tool, {"code": code, **arguments})
    assert result.structured_content is not None
    text = result.content[0]
    assert text.type == "text"
    assert json.loads(text.text) == result.structured_content
    return bool(result.is_error), result.structured_content


@asynccontextmanager
async def http_upstream(*args: str) -> AsyncIterator[str]:
    """A real remote MCP server process on a free loopback port; yields its base URL."""
    async with loopback_server(HTTP_UPSTREAM, *args) as url:
        yield url


@asynccontextmanager
async def loopback_server(script: str, *args: str) -> AsyncIterator[str]:
    """A test server process (one of tests/servers/) that prints ``listening on URL``; yields the URL."""
    process = await anyio.open_process([sys.executable, script, *args], stderr=None)
    try:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(20):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive()
        yield line.decode().split()[-1]
    finally:
        await stop_process(process, grace=5)


async def authorization_url(process: anyio.abc.Process) -> str:
    """The URL ``conduit auth`` asks the user to open (read from its stderr)."""
    assert process.stderr is not None
    seen = b""
    with anyio.fail_after(30):
        while b"/authorize?" not in seen or not seen.rstrip(b" ").endswith(b"\n"):
            seen += await process.stderr.receive()
    return next(line.strip() for line in seen.decode().splitlines() if "/authorize?" in line)


_MARKED = re.compile(r"<!-- (snippet|output): ([\w-]+) -->\n```\w*\n(.*?)\n```", re.S)


def marked_blocks(path: Path) -> dict[tuple[str, str], str]:
    """The fenced blocks of the doc ``path`` that a ``<!-- snippet: NAME -->`` or ``<!-- output: NAME -->`` line
    names, by (kind, name): what tests run as written, and what they compare the output with."""
    return {(kind, name): body for kind, name, body in _MARKED.findall(path.read_text())}
