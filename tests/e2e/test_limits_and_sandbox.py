"""Limits and sandbox walls, attacked through the real server over MCP (stdio and HTTP)."""

from __future__ import annotations

import socket

import pytest
from mcp import Client

from support import run_ts

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]


async def test_timeout_kills_the_program_and_keeps_partial_output(conduit: Client) -> None:
    is_error, out = await run_ts(conduit, 'console.log("started");\nwhile (true) {}', limits={"timeoutMs": 1000})
    assert is_error
    assert out["error"]["code"] == -32008
    assert out["stdout"] == "started\n"
    assert out["exitCode"] != 0


async def test_timeout_inside_async_continuation(conduit: Client) -> None:
    is_error, out = await run_ts(conduit, "await null; while (true) {}", limits={"timeoutMs": 800})
    assert (is_error, out["error"]["code"]) == (True, -32008)


async def test_requested_limits_cannot_raise_the_ceiling(conduit: Client) -> None:
    # The server's ceiling is 10 s; asking for an hour still ends at the ceiling, not later.
    is_error, out = await run_ts(
        conduit, "await new Promise((r) => setTimeout(r, 60_000));", limits={"timeoutMs": 3_600_000}
    )
    assert (is_error, out["error"]["code"]) == (True, -32008)
    assert "10000 ms" in out["error"]["message"]


async def test_heap_bomb_is_a_memory_error(conduit: Client) -> None:
    code = 'console.log("filling");\nconst keep = []; while (true) keep.push(new Array(1_000_000).fill(Math.random()));'
    is_error, out = await run_ts(conduit, code, limits={"memoryLimitMb": 64})
    assert is_error
    assert out["error"]["code"] == -32009
    assert out["stdout"] == "filling\n"


async def test_output_byte_flood_is_cut_at_the_limit(conduit: Client) -> None:
    code = 'const line = "x".repeat(1000); while (true) console.log(line);'
    is_error, out = await run_ts(conduit, code, limits={"maxOutputBytes": 50_000})
    assert is_error
    assert out["error"]["code"] == -32013
    assert len(out["stdout"].encode()) + len(out["stderr"].encode()) == 50_000
    assert out["stdout"].startswith("x" * 1000 + "\n")


async def test_log_line_flood_is_cut_at_the_limit(conduit: Client) -> None:
    code = 'let i = 0; while (true) { console.log(i++); console.error("e"); }'
    is_error, out = await run_ts(conduit, code, limits={"maxLogEntries": 100})
    assert is_error
    assert out["error"]["code"] == -32014
    assert out["stdout"].count("\n") + out["stderr"].count("\n") == 100
    # stdout and stderr are separate pipes read concurrently: either may fill the budget first
    printed = out["stdout"].splitlines()
    assert printed == [str(i) for i in range(len(printed))]


async def test_output_within_limits_is_complete(conduit: Client) -> None:
    code = "for (let i = 0; i < 100; i++) console.log(i);"
    is_error, out = await run_ts(conduit, code, limits={"maxLogEntries": 100})
    assert not is_error
    assert out["stdout"].splitlines() == [str(i) for i in range(100)]


async def test_reading_etc_passwd_is_refused(conduit: Client) -> None:
    is_error, out = await run_ts(conduit, 'return Deno.readTextFileSync("/etc/passwd");')
    assert is_error
    assert "NotCapable" in out["stderr"]
    assert "root:" not in str(out)


@pytest.mark.parametrize("specifier", ["file:///etc/passwd", "/etc/passwd", "../../../../etc/passwd"])
async def test_static_text_import_of_etc_passwd_is_refused(conduit: Client, specifier: str) -> None:
    code = f'import secret from "{specifier}" with {{ type: "text" }};\nreturn secret;'
    is_error, out = await run_ts(conduit, code)
    assert is_error
    assert "root:" not in str(out)


async def test_dynamic_import_of_a_file_is_refused(conduit: Client) -> None:
    code = 'const m = await import("file:///etc/passwd", { with: { type: "text" } }); return m.default;'
    is_error, out = await run_ts(conduit, code)
    assert is_error
    assert "root:" not in str(out)


async def test_fetching_a_file_url_is_refused(conduit: Client) -> None:
    is_error, out = await run_ts(conduit, 'return await (await fetch("file:///etc/passwd")).text();')
    assert is_error
    assert "root:" not in str(out)


async def test_environment_is_unreadable(conduit: Client) -> None:
    is_error, out = await run_ts(conduit, "return Deno.env.toObject();")
    assert is_error
    assert "NotCapable" in out["stderr"]


async def test_subprocess_is_refused(conduit: Client) -> None:
    is_error, out = await run_ts(conduit, 'return new Deno.Command("/bin/sh", {args: ["-c", "id"]}).outputSync().code;')
    assert is_error
    assert "NotCapable" in out["stderr"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_another_loopback_port_is_unreachable(
    conduit: Client, loopback_listener: tuple[int, list[socket.socket]], host: str
) -> None:
    port, accepted = loopback_listener
    code = f'const c = await Deno.connect({{hostname: "{host}", port: {port}}}); c.close(); return "connected";'
    is_error, out = await run_ts(conduit, code)
    assert is_error
    assert "NotCapable" in out["stderr"]
    assert accepted == []


async def test_http_fetch_to_loopback_listener_is_refused(
    conduit: Client, loopback_listener: tuple[int, list[socket.socket]]
) -> None:
    port, accepted = loopback_listener
    is_error, out = await run_ts(conduit, f'return (await fetch("http://127.0.0.1:{port}/")).status;')
    assert is_error
    assert accepted == []


async def test_global_state_does_not_survive_between_runs(conduit: Client) -> None:
    is_error, _ = await run_ts(conduit, "globalThis.leak = 'secret'; Object.prototype.polluted = 1; return 1;")
    assert not is_error
    is_error, out = await run_ts(conduit, "return [typeof globalThis.leak, typeof ({}).polluted];")
    assert (is_error, out["result"]) == (False, ["undefined", "undefined"])


async def test_program_cannot_replace_the_tools_global(conduit: Client) -> None:
    code = 'try { globalThis.tools = 1; } catch (e) { return "refused"; } return typeof tools;'
    is_error, out = await run_ts(conduit, code)
    assert not is_error
    assert out["result"] in ("refused", "object")
