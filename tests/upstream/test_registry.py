"""Upstream connections against real stdio MCP servers: lazy, once, timeouts, failures, env."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from conduit.config.schema import UpstreamConfig
from conduit.errors import UPSTREAM_TIMEOUT, UpstreamError
from conduit.upstream.connection import resolve_command, upstream_environment
from conduit.upstream.registry import UpstreamRegistry
from support import TOOLBOX

pytestmark = pytest.mark.anyio


@pytest.fixture
async def task_group() -> AsyncIterator[TaskGroup]:
    async with anyio.create_task_group() as tg:
        yield tg
        tg.cancel_scope.cancel()


def registry(tg: TaskGroup, tmp_path: Path, *upstreams: dict[str, Any]) -> UpstreamRegistry:
    reg = UpstreamRegistry(base_dir=tmp_path, host_env={**os.environ, "SECRET_OF_HOST": "x"}, tg=tg)
    for upstream in upstreams:
        reg.add(UpstreamConfig.model_validate(upstream))
    return reg


TOOLBOX_UPSTREAM = {"id": "toolbox", "command": sys.executable, "args": [TOOLBOX]}


async def test_concurrent_first_requests_connect_once(task_group: TaskGroup, tmp_path: Path) -> None:
    reg = registry(task_group, tmp_path, TOOLBOX_UPSTREAM)
    connection = reg.connections["toolbox"]
    assert not connection.connected
    results: list[int] = []

    async def first_use() -> None:
        results.append(len(await connection.list_tools()))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(first_use)
    assert results == [7] * 10
    assert connection.connects == 1
    pids = set()
    for _ in range(3):
        result = await connection.call_tool("env", {})
        pids.add(result.structured_content["pid"])  # type: ignore[index]
    assert len(pids) == 1
    await reg.aclose()


async def test_per_call_timeout(task_group: TaskGroup, tmp_path: Path) -> None:
    reg = registry(task_group, tmp_path, {**TOOLBOX_UPSTREAM, "timeoutMs": 300})
    entry = await reg.resolve("toolbox__sleep")
    with anyio.fail_after(10), pytest.raises(UpstreamError) as caught:
        await reg.call(entry, {"seconds": 5})
    assert caught.value.code == UPSTREAM_TIMEOUT
    fast = await reg.call(await reg.resolve("toolbox__echo"), {"text": "still fine"})
    assert fast.content[0].text == "still fine"  # type: ignore[union-attr]
    await reg.aclose()


async def test_one_broken_upstream_does_not_hide_the_others(task_group: TaskGroup, tmp_path: Path) -> None:
    reg = registry(
        task_group,
        tmp_path,
        TOOLBOX_UPSTREAM,
        {"id": "missing", "command": str(tmp_path / "no-such-server")},
        {"id": "exits", "command": sys.executable, "args": ["-c", "import sys; sys.exit(4)"], "connectTimeoutMs": 5000},
        {"id": "remote", "type": "sse", "url": "https://example.invalid/sse"},
    )
    with anyio.fail_after(30):
        # The toolbox first: its start (~1 s on a busy machine) must not use up the broken ones' backoff below.
        await reg.connections["toolbox"].list_tools()
        catalog = await reg.catalog()
    assert {entry.upstream for entry in catalog.tools} == {"toolbox"}
    assert set(catalog.failures) == {"missing", "exits", "remote"}
    assert all(reason.startswith(f"upstream {name!r} is unavailable: ") for name, reason in catalog.failures.items())
    assert catalog.failures["missing"].endswith(f"command not found: {str(tmp_path / 'no-such-server')!r}")
    assert "cannot resolve 'example.invalid'" in (reg.connections["remote"].last_error or "")
    # A failed upstream is not retried on every request: within its backoff the next catalog does not try again.
    attempts = {name: reg.connections[name].failures for name in ("missing", "exits", "remote")}
    assert attempts == {"missing": 1, "exits": 1, "remote": 1}
    again = await reg.catalog()
    assert set(again.failures) == {"missing", "exits", "remote"}
    assert {name: reg.connections[name].failures for name in attempts} == attempts
    await reg.aclose()


async def test_stdio_upstream_gets_only_safe_and_configured_env(task_group: TaskGroup, tmp_path: Path) -> None:
    reg = registry(task_group, tmp_path, {**TOOLBOX_UPSTREAM, "env": {"UPSTREAM_TOKEN": "t0k"}})
    result = await reg.call(await reg.resolve("toolbox__env"), {})
    names = set(result.structured_content["names"])  # type: ignore[index]
    assert "UPSTREAM_TOKEN" in names
    assert "SECRET_OF_HOST" not in names
    assert names - {"UPSTREAM_TOKEN"} <= {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "TMPDIR",
        "USER",
        "LOGNAME",
        "SHELL",
        "TERM",
    }
    await reg.aclose()


async def test_closing_the_registry_stops_stdio_upstreams(task_group: TaskGroup, tmp_path: Path) -> None:
    reg = registry(task_group, tmp_path, TOOLBOX_UPSTREAM)
    result = await reg.call(await reg.resolve("toolbox__env"), {})
    pid = result.structured_content["pid"]  # type: ignore[index]
    await reg.aclose()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_environment_helper_drops_shell_functions() -> None:
    env = upstream_environment({}, {"PATH": "/bin", "SHELL": "() { evil; }", "HOME": "/root"})
    assert env == {"PATH": "/bin", "HOME": "/root"}


def test_commands_resolve_beside_conduit_first(tmp_path: Path) -> None:
    assert resolve_command("python", "/usr/bin") == str(Path(sys.executable).parent / "python")
    assert resolve_command("/abs/tool", None) == "/abs/tool"
    assert resolve_command("sh", "/bin:/usr/bin").endswith("/sh")
