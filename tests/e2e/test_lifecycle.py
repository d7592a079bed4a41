"""Conduit leaves nothing behind: upstream and sandbox processes end with it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from conduit.transport.http import SHUTDOWN_GRACE_S
from support import (
    CONDUIT,
    EXECUTE_ISOLATE,
    EXECUTE_PYTHON,
    EXECUTE_TS,
    INITIALIZE,
    ConduitHttp,
    command_names,
    descendants,
    process_alive,
    run_ts,
    stdio_client_for,
    wait_until,
)

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


def error_records(log: str) -> list[str]:
    """Lines of a server log that are errors or tracebacks."""
    return [line for line in log.splitlines() if "Traceback" in line or '"level": "error"' in line]


SERVE_STDIO = [CONDUIT, "serve", "--stdio", "--config"]
ENV = {**os.environ, "IPC_BEARER_TOKEN": "test-master-token-0123456789"}


async def test_stdio_session_end_shuts_down_cleanly_with_the_ops_server_beside(e2e_config: Path) -> None:
    # The ops server is cancelled when the stdio session ends; it used to log its lifespan's
    # CancelledError as an error with a traceback.
    async with await anyio.open_process([*SERVE_STDIO, str(e2e_config)], env=ENV, stderr=subprocess.PIPE) as process:
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        await process.stdin.send((json.dumps(INITIALIZE) + "\n").encode())
        with anyio.fail_after(30):
            answer = await process.stdout.receive()
        assert json.loads(answer.splitlines()[0])["id"] == 1
        await process.stdin.aclose()
        log = b""
        with anyio.fail_after(20):
            async for chunk in process.stderr:
                log += chunk
            assert await process.wait() == 0
    text = log.decode()
    assert "Conduit ops on" in text
    assert error_records(text) == []


async def test_stdio_from_and_to_files_answers_every_line_then_stops_at_the_end(
    e2e_config: Path, tmp_path: Path
) -> None:
    # Neither end is a pipe: stdin is read by a thread, stdout written directly.
    requests = tmp_path / "requests.jsonl"
    requests.write_text("{not json\n" + json.dumps(INITIALIZE) + "\n")
    answers, log = tmp_path / "answers.jsonl", tmp_path / "log.txt"
    with requests.open("rb") as stdin, answers.open("wb") as stdout, log.open("wb") as stderr:
        process = await anyio.open_process(
            [*SERVE_STDIO, str(e2e_config)], env=ENV, stdin=stdin, stdout=stdout, stderr=stderr
        )
    async with process:
        with anyio.fail_after(30):
            assert await process.wait() == 0
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [line.get("id") for line in lines] == [None, 1]
    assert lines[0]["error"]["code"] == -32700 and lines[1]["result"]["serverInfo"]["name"] == "conduit"
    assert error_records(log.read_text()) == []


@pytest.mark.parametrize("stdout_kind", ["pipe", "file"])
async def test_sigterm_stops_a_stdio_server_whose_client_keeps_stdin_open(
    e2e_config: Path, tmp_path: Path, stdout_kind: str
) -> None:
    # Stopping must not wait for the next line on stdin (with stdout a file, a thread reads stdin).
    log, answers = tmp_path / "log.txt", tmp_path / "answers.jsonl"
    with answers.open("wb") as answer_file, log.open("wb") as stderr:
        process = await anyio.open_process(
            [*SERVE_STDIO, str(e2e_config)],
            env=ENV,
            stdout=subprocess.PIPE if stdout_kind == "pipe" else answer_file,
            stderr=stderr,
        )
    async with process:
        assert process.stdin is not None
        env_call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "toolbox__env"}}
        for message in (INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}, env_call):
            await process.stdin.send((json.dumps(message) + "\n").encode())
        received = b""
        with anyio.fail_after(30):
            while b'"id":2' not in received:
                if process.stdout is not None:
                    received += await process.stdout.receive()
                else:
                    await anyio.sleep(0.05)
                    received = await anyio.Path(answers).read_bytes()
        line = next(line for line in received.splitlines() if b'"id":2' in line)
        upstream = json.loads(line)["result"]["structuredContent"]["pid"]
        process.terminate()  # stdin stays open: the client has not gone away
        with anyio.fail_after(15):
            assert await process.wait() == 0
    assert "stopping on SIGTERM" in log.read_text()
    assert error_records(log.read_text()) == []
    await wait_gone(upstream)  # the gateway closed: its upstreams were stopped, not orphaned


async def test_http_server_stop_shuts_down_cleanly(e2e_config: Path) -> None:
    # uvicorn re-raised SIGTERM after its own shutdown: the process died by the signal before the
    # gateway closed.
    async with ConduitHttp.start(e2e_config) as server:
        process = server.process
    assert process.returncode == 0
    assert "stopping on SIGTERM" in server.log.read_text()
    assert error_records(server.log.read_text()) == []


async def test_a_sigkilled_server_takes_its_sandboxes_with_it_running_and_pooled(e2e_config: Path) -> None:
    # PR_SET_PDEATHSIG, set by the launcher after the uid drop: nobody is left to kill the sandboxes
    # when Conduit itself is SIGKILLed (an OOM kill, a node drain's last step), so they must die alone.
    spin = {"code": "while (true) {}", "limits": {"timeoutMs": 60_000}}
    async with ConduitHttp.start(e2e_config) as server:
        try:
            async with server.client() as client, anyio.create_task_group() as tg:
                for tool, code in (
                    (EXECUTE_TS, "while (true) {}"),
                    (EXECUTE_ISOLATE, "while (true) {}"),
                    (EXECUTE_PYTHON, "while True:\n    pass"),
                ):
                    tg.start_soon(lambda t=tool, c=code: client.call_tool(t, {**spin, "code": c}))
                await anyio.sleep(3)  # the three are spinning; the pools hold idle sandboxes beside them
                below = descendants(server.process.pid)
                names = command_names(below)
                assert {"deno", "monty"} <= names, names
                server.process.kill()
                killed_at = time.monotonic()
                tg.cancel_scope.cancel()
        except* (httpx2.TransportError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the test's own client, cut off mid-request by the SIGKILL it sent
    await wait_until(lambda: not any(process_alive(pid) for pid in below))
    assert time.monotonic() - killed_at < 5


async def test_sigterm_with_an_event_stream_open_exits_without_waiting_out_the_drain(e2e_config: Path) -> None:
    # A client may hold its session's event stream (GET /mcp) open for as long as it likes: that is no
    # work in flight, so the drain does not wait for it (drainTimeoutMs is 30 s by default).
    async with ConduitHttp.start(e2e_config) as server:
        headers = {
            "Authorization": f"Bearer {server.token}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        async with httpx2.AsyncClient(timeout=30) as http:
            opened = await http.post(server.url, headers=headers, json=INITIALIZE)
            session = {**headers, "mcp-session-id": opened.headers["mcp-session-id"], "Accept": "text/event-stream"}
            async with http.stream("GET", server.url, headers=session) as stream:
                assert stream.status_code == 200
                server.process.terminate()
                started = time.monotonic()
                with anyio.fail_after(15):
                    await server.process.wait()
                took = time.monotonic() - started
    assert server.process.returncode == 0
    assert took < SHUTDOWN_GRACE_S + 3, took  # uvicorn's grace for open connections, not the 30 s drain
