"""Three replicas on one PostgreSQL: a principal's workspace and skills are the same on every replica at once,
writes racing across replicas leave one whole, and a database that dies mid-run fails only the work that
needs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from cluster_harness import Cluster, Replica, running_cluster
from support import EXECUTE_TS, run_code

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

KEY = "cluster-state-principal-0123456789"
DOCUMENT = {"auth": {"principals": [{"id": "team", "apiKey": KEY}]}, "codeModeOnly": False}


async def on(replica: Replica, code: str) -> dict[str, Any]:
    assert replica.server is not None
    async with replica.server.client(KEY) as client:
        _, result = await run_code(client, EXECUTE_TS, code)
    return result


async def test_every_replica_sees_the_workspace_and_skills_written_through_another_at_once(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, DOCUMENT) as cluster:
        first, second, third = cluster.replicas
        written = await on(first, 'return await tools.workspace.write({ path: "shared/plan.md", text: "v1" });')
        assert written["result"]["size"] == 2
        for replica in (second, third):
            read = await on(replica, 'return (await tools.workspace.read({ path: "shared/plan.md" })).text;')
            assert read["result"] == "v1", (replica.name, read)
        assert second.server is not None
        async with second.server.client(KEY) as client:
            saved = await client.call_tool(
                "conduit__mcp_save_skill",
                {"name": "double", "description": "Twice n.", "language": "typescript", "code": "return args.n * 2;"},
            )
            assert not saved.is_error, saved
        for replica in (first, third):
            assert (await on(replica, "return await tools.skills.double({ n: 21 });"))["result"] == 42
        await _racing_writes_leave_one_whole(cluster)


async def _racing_writes_leave_one_whole(cluster: Cluster) -> None:
    contents = {replica.name: replica.name * 3000 for replica in cluster.replicas}

    async def write(replica: Replica) -> None:
        text = json.dumps(contents[replica.name])
        for _ in range(5):
            answer = await on(replica, f'await tools.workspace.write({{ path: "race.txt", text: {text} }}); return 1;')
            assert answer["result"] == 1, answer

    async with anyio.create_task_group() as tg:
        for replica in cluster.replicas:
            tg.start_soon(write, replica)
    kept = (await on(cluster.replicas[0], 'return (await tools.workspace.read({ path: "race.txt" })).text;'))["result"]
    assert kept in contents.values()


async def test_the_database_dying_fails_only_workspace_work_and_it_comes_back(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, {**DOCUMENT, "upstreams": []}) as cluster:
        replica = cluster.replicas[0]
        await on(replica, 'await tools.workspace.write({ path: "kept.md", text: "before" }); return 1;')
        assert cluster.postgres is not None
        cluster.postgres.stop("immediate")
        plain = await on(replica, "return 6 * 7;")
        assert plain["result"] == 42 and "error" not in plain
        code = 'try { await tools.workspace.read({ path: "kept.md" }); } catch (e) { return [e.code, e.message]; }'
        failed = (await on(replica, code))["result"]
        assert failed[0] == -32000 and "the state store (state.url: [url]) is unavailable" in failed[1], (
            failed
        )  # no address for programs
        cluster.postgres.start()
        for _ in range(100):
            answer = await on(replica, 'return (await tools.workspace.read({ path: "kept.md" })).text;')
            if answer.get("result") == "before":
                break
            await anyio.sleep(0.1)
        else:
            pytest.fail(f"the workspace did not come back: {answer}")
