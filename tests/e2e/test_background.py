"""Background executions over Streamable HTTP: started at once, followed from another connection, cancelled,
owned by their principal, kept for ``background.keepMs``, and reported as lost after a restart.

Two API-key principals (alice, bob); foreground runs are limited to 2 s, background ones to 15 s.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from support import (
    CANCEL,
    EXECUTE_TS,
    STATUS,
    ConduitHttp,
    run_status,
    sleeping_program,
    slept,
    start_background,
    write_config,
)

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef0"
SIX_SECONDS = sleeping_program(6000)


def config_for(directory: Path, keep_ms: int = 60_000) -> Path:
    return write_config(
        directory,
        {
            "resourceLimits": {"timeoutMs": 2000},
            "background": {"maxTimeoutMs": 15_000, "keepMs": keep_ms, "maxPerPrincipal": 3},
            "pools": {"typescript": {"min": 1, "max": 4}, "python": {"min": 0, "max": 1}},
            "auth": {
                "principals": [
                    {"id": "alice", "apiKey": ALICE},
                    {"id": "bob", "apiKey": BOB},
                ]
            },
        },
    )


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ConduitHttp]:
    async with ConduitHttp.start(config_for(tmp_path_factory.mktemp("background"))) as started:
        yield started


start = start_background
status = run_status


async def printed(client: Client, execution_id: str) -> tuple[bool, dict[str, Any]]:
    """The status once the run has printed something (polled: the client has no other way to know)."""
    with anyio.fail_after(5):
        while True:
            failed, answer = await status(client, execution_id)
            if answer["stdout"]:
                return failed, answer
            await anyio.sleep(0.1)


async def finished(client: Client, execution_id: str, within_s: float = 20) -> tuple[bool, dict[str, Any]]:
    with anyio.fail_after(within_s):
        while True:
            failed, answer = await status(client, execution_id)
            if answer["status"] != "running":
                return failed, answer
            await anyio.sleep(0.2)


async def test_an_id_at_once_then_output_so_far_then_the_result_from_another_connection(server: ConduitHttp) -> None:
    async with server.client(ALICE) as first:
        started = time.monotonic()
        execution_id = await start(first, SIX_SECONDS)
        assert time.monotonic() - started < 1.0
    async with server.client(ALICE) as second:  # a new connection (and session) of the same principal
        failed, answer = await printed(second, execution_id)
        assert (failed, answer["status"], answer["stdout"]) == (False, "running", "started\n")
        assert answer["elapsedMs"] < 6000
        failed, done = await finished(second, execution_id)
    assert not failed
    assert done == slept(execution_id)


async def test_a_background_run_has_its_own_time_ceiling_and_keeps_its_other_limits(server: ConduitHttp) -> None:
    async with server.client(ALICE) as client:
        foreground = await client.call_tool(EXECUTE_TS, {"code": SIX_SECONDS})
        assert foreground.is_error and foreground.structured_content["error"]["code"] == -32008  # type: ignore[index]
        limited = await start(client, SIX_SECONDS, limits={"timeoutMs": 1000})  # a request still lowers it
        failed, answer = await finished(client, limited)
        assert failed and answer["status"] == "done" and answer["error"]["code"] == -32008
        assert answer["stdout"] == "started\n"  # the partial output, as in the foreground
        flood = await start(client, "for (let i = 0; i < 1e6; i++) console.log('x'.repeat(100));", limits={})
        failed, answer = await finished(client, flood)
        assert failed and answer["error"]["code"] in (-32013, -32014)  # output caps hold in the background too


async def test_cancel_stops_it_with_its_output_so_far(server: ConduitHttp) -> None:
    async with server.client(ALICE) as client:
        execution_id = await start(client, SIX_SECONDS)
        await printed(client, execution_id)
        started = time.monotonic()
        failed, answer = await status(client, execution_id, CANCEL)
        assert time.monotonic() - started < 3
        assert (failed, answer["status"], answer["stdout"]) == (True, "cancelled", "started\n")
        assert (await status(client, execution_id))[1]["status"] == "cancelled"
        _, again = await status(client, execution_id, CANCEL)  # cancelling what is over changes nothing
        assert again["status"] == "cancelled"


async def test_an_unknown_or_another_principals_id_is_a_clear_error(server: ConduitHttp) -> None:
    async with server.client(ALICE) as alice, server.client(BOB) as bob:
        execution_id = await start(alice, "return 1;")
        altered = execution_id[:-1] + ("1" if execution_id.endswith("0") else "0")  # an id one digit off
        for client, wanted in ((bob, execution_id), (alice, "not-an-id"), (alice, altered)):
            for tool in (STATUS, CANCEL):
                with pytest.raises(MCPError) as caught:
                    await client.call_tool(tool, {"executionId": wanted})
                assert caught.value.error.code == -32602
                assert "none of yours has this id" in caught.value.error.message
        assert (await finished(alice, execution_id))[1]["result"] == 1  # bob's cancel did not touch it
        with pytest.raises(MCPError, match="unknown argument"):
            await alice.call_tool(STATUS, {"executionId": execution_id, "extra": 1})
        with pytest.raises(MCPError, match="background must be a boolean"):
            await alice.call_tool(EXECUTE_TS, {"code": "1", "background": "yes"})


async def test_a_principal_has_at_most_max_per_principal_running(server: ConduitHttp) -> None:
    async with server.client(BOB) as bob:
        ids = [await start(bob, SIX_SECONDS) for _ in range(3)]
        refused = await bob.call_tool(EXECUTE_TS, {"code": "return 1;", "background": True})
        assert refused.is_error and refused.structured_content["error"]["code"] == -32000  # type: ignore[index]
        assert "background.maxPerPrincipal" in refused.structured_content["error"]["message"]  # type: ignore[index]
        for execution_id in ids:
            await status(bob, execution_id, CANCEL)


async def test_outcomes_expire_after_keep_ms(tmp_path: Path) -> None:
    async with ConduitHttp.start(config_for(tmp_path, keep_ms=1000)) as server, server.client(ALICE) as client:
        execution_id = await start(client, "return 7;")
        assert (await finished(client, execution_id))[1]["result"] == 7
        await anyio.sleep(1.5)
        with pytest.raises(MCPError, match="none of yours has this id"):
            await status(client, execution_id)


async def test_a_restart_reports_running_executions_as_lost(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    async with ConduitHttp.start(config) as server, server.client(ALICE) as client:
        execution_id = await start(client, SIX_SECONDS)
    async with ConduitHttp.start(config) as restarted, restarted.client(ALICE) as client:
        failed, answer = await status(client, execution_id)
    assert failed and answer["status"] == "lost" and answer["executionId"] == execution_id
    assert "the Conduit process running it ended" in answer["message"]
