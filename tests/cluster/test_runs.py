"""Runs across replicas: a background run followed and cancelled through any replica, approval rounds that
land on another replica than the run's, and a run whose replica died reported as lost."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from cluster_harness import running_cluster
from conduit.cluster.run_mirror import HEARTBEAT_TTL_S
from support import CANCEL, EXECUTE_TS, STATUS, TOOLBOX, run_status, sleeping_program, slept, start_background

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

TOOLBOX_UPSTREAM = {"id": "toolbox", "command": sys.executable, "args": [TOOLBOX], "timeoutMs": 10_000}
FOUR_SECONDS = sleeping_program(4000)


start = start_background


async def status(client: Client, execution_id: str, tool: str = STATUS) -> dict[str, Any]:
    return (await run_status(client, execution_id, tool))[1]


async def until(
    client: Client, execution_id: str, done: Callable[[dict[str, Any]], bool], within_s: float = 5
) -> dict[str, Any]:
    """The first status that is ``done`` (polled: a client has no other way to know)."""
    with anyio.fail_after(within_s):
        while True:
            answer = await status(client, execution_id)
            if done(answer):
                return answer
            await anyio.sleep(0.1)


async def test_a_background_run_is_followed_and_cancelled_through_any_replica(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, {"upstreams": [TOOLBOX_UPSTREAM]}) as cluster, cluster.client() as client:
        execution_id = await start(client, FOUR_SECONDS)
        answers = []
        with anyio.fail_after(20):
            while not answers or answers[-1]["status"] == "running":
                answers.append(await status(client, execution_id))  # round robin: each to the next replica
                await anyio.sleep(0.1)
        running = [a for a in answers if a["status"] == "running" and a["stdout"] == "started\n"]
        assert len(running) >= 3  # the output so far, from the replica running it and from the others
        assert answers[-1] == slept(execution_id)
        stopped = await start(client, FOUR_SECONDS)
        await until(client, stopped, lambda answer: answer["stdout"] != "")
        for _ in range(3):  # the cancel lands wherever the balancer sends it; the run's replica carries it out
            cancelled = await status(client, stopped, CANCEL)
        assert cancelled["status"] == "cancelled" and cancelled["stdout"] == "started\n"


async def test_approval_rounds_may_land_on_another_replica_than_the_run(tmp_path: Path) -> None:
    asked: list[str] = []
    decisions = iter([True, True, True, False, True, True])

    async def person(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"approve": next(decisions)})

    document = {"upstreams": [TOOLBOX_UPSTREAM], "approvals": [{"tools": ["toolbox.echo"]}]}
    program = """
try { return (await tools.toolbox.echo({ text: "hi" })).content[0].text; }
catch (e) { return e.code; }
"""
    async with running_cluster(tmp_path, document) as cluster, cluster.client(elicitation_callback=person) as client:
        results = []
        for _ in range(6):  # each round a new POST: round robin sends the answer to another replica
            result = await client.call_tool(EXECUTE_TS, {"code": program})
            assert not result.is_error, result
            results.append(result.structured_content["result"])  # type: ignore[index]
    assert results == ["hi", "hi", "hi", -32015, "hi", "hi"]
    assert len(asked) == 6 and all("toolbox__echo" in message for message in asked)


async def test_a_run_whose_replica_died_is_reported_lost_by_the_replica_that_replaced_it(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, {"upstreams": [TOOLBOX_UPSTREAM]}) as cluster:
        async with cluster.client() as client:
            execution_id = await start(client, sleeping_program(30_000))
            assert (await status(client, execution_id))["status"] == "running"
        for replica in cluster.replicas:  # every replica dies at once: SIGKILL, no drain
            assert replica.server is not None
            replica.server.process.kill()
            await replica.stop()
        await cluster.replicas[0].start()
        await cluster.wait_all_up(cluster.replicas[:1])
        async with cluster.client() as client:
            # Running until the dead replica's heartbeat expires (HEARTBEAT_TTL_S), then lost: never pending.
            answer = await until(
                client, execution_id, lambda answer: answer["status"] != "running", HEARTBEAT_TTL_S + 3
            )
    assert answer["status"] == "lost" and "ended" in answer["message"], answer
