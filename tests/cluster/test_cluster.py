"""Three replicas behind haproxy sharing one Redis: nothing lost, limits exact, tokens refreshed once."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest
from harness import Cluster, running_cluster
from mcp.shared.exceptions import MCPError

from support import EXECUTE_TS, TOOLBOX, scrape

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

TOOLBOX_UPSTREAM = {"id": "toolbox", "command": sys.executable, "args": [TOOLBOX], "timeoutMs": 10_000}
PRINCIPAL_KEY = "cluster-principal-key-0123456789"


async def served_by(cluster: Cluster, metric: str) -> list[float]:
    """Each replica's count of ``metric`` (summed over its labels)."""
    counts = []
    for replica in cluster.replicas:
        assert replica.server is not None
        samples = await scrape(replica.server)
        counts.append(sum(value for (name, _), value in samples.items() if name == metric))
    return counts


async def test_a_300_per_minute_limit_admits_exactly_300_of_450_spread_over_the_replicas(tmp_path: Path) -> None:
    document = {
        "upstreams": [TOOLBOX_UPSTREAM],
        "auth": {"principals": [{"id": "team", "apiKey": PRINCIPAL_KEY, "rateLimit": "300/minute"}]},
    }
    async with running_cluster(tmp_path, document) as cluster, cluster.client(PRINCIPAL_KEY) as client:
        outcomes: list[bool] = []

        async def call(_: int) -> None:
            try:
                result = await client.call_tool("toolbox__echo", {"text": "x"})
                outcomes.append(not result.is_error)
            except MCPError as exc:
                assert "rate limit 300/minute exceeded" in exc.error.message, exc.error.message
                outcomes.append(False)

        limiter = anyio.CapacityLimiter(12)

        async def limited(index: int) -> None:
            async with limiter:
                await call(index)

        async with anyio.create_task_group() as tg:
            for index in range(450):
                tg.start_soon(limited, index)
        served = await served_by(cluster, "conduit_principal_tool_calls_total")
    assert len(outcomes) == 450
    assert sum(outcomes) == 300
    assert all(count > 0 for count in served), served  # the balancer spread them: every replica counted some


async def test_a_handshake_era_client_round_robined_across_replicas_never_loses_its_session(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, {"upstreams": [TOOLBOX_UPSTREAM]}) as cluster:
        async with cluster.client() as client:  # initialize, then every request to the next replica
            for round_ in range(9):
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert EXECUTE_TS in names
                result = await client.call_tool(EXECUTE_TS, {"code": f"console.log('step {round_}'); return {round_};"})
                assert not result.is_error, result
                assert result.structured_content is not None and result.structured_content["result"] == round_
        served = await served_by(cluster, "conduit_executions_total")
    assert all(count >= 1 for count in served), served
