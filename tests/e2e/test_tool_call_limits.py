"""A program's own tool calls are bounded: ``maxToolCalls`` per run, and ``toolCallRateLimit`` per caller and upstream.

Attacked as a caller with one valid credential would: a loop that calls an upstream far more often than a
run may. Past ``maxToolCalls`` each call throws -32017 in the program (the upstream never sees it) and the
program goes on to decide what to do; past the caller's ``toolCallRateLimit`` for an upstream, each call
throws -32000 with when to retry, while other callers, and the caller's other upstreams, are unaffected.
Every runtime, through a real server over HTTP with the official client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from support import EXECUTE_ISOLATE, EXECUTE_PYTHON, EXECUTE_TS, ConduitHttp, run_code, scrape, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

ALICE_KEY = "alice-key-0123456789abcdef"
CAROL_KEY = "carol-key-0123456789abcdef"
DAVE_KEY = "dave-key-0123456789abcdefg"

JS_LOOP = """
const outcomes = [];
for (let i = 0; i < CALLS; i++) {
  try { await tools.toolbox.echo({text: String(i)}); outcomes.push("ok"); }
  catch (e) { outcomes.push(e.code); }
}
return outcomes;
"""
PY_LOOP = """
outcomes = []
for i in range(CALLS):
    try:
        await tools.toolbox.echo(text=str(i))
        outcomes.append("ok")
    except ToolError as e:
        outcomes.append(e.code)
outcomes
"""
MONTY_LOOP = """
outcomes = []
for i in range(CALLS):
    try:
        await tools.toolbox.echo(text=str(i))
        outcomes.append("ok")
    except Exception as e:  # Monty has no ToolError: a failed call raises Exception with the bridge's message
        outcomes.append(str(e))
outcomes
"""
RUNTIMES = [
    pytest.param(EXECUTE_TS, JS_LOOP, {}, id="typescript"),
    pytest.param(EXECUTE_ISOLATE, JS_LOOP, {}, id="javascript"),
    pytest.param(EXECUTE_PYTHON, MONTY_LOOP, {"engine": "monty"}, id="monty"),
    pytest.param(EXECUTE_PYTHON, PY_LOOP, {"engine": "pyodide"}, id="pyodide"),
]


def loop(program: str, calls: int) -> str:
    return program.replace("CALLS", str(calls))


@pytest.fixture(scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory, toolbox_command: dict[str, Any], anyio_backend: str
) -> AsyncIterator[ConduitHttp]:
    config = write_config(
        tmp_path_factory.mktemp("tool-calls"),
        {
            "upstreams": [
                {"id": "toolbox", **toolbox_command},
                {"id": "time", "command": "mcp-server-time", "args": ["--local-timezone", "Etc/UTC"]},
            ],
            "resourceLimits": {"timeoutMs": 20_000, "memoryLimitMb": 128},
            "toolCallRateLimit": "1000/minute",
            "auth": {
                "principals": [
                    {"id": "alice", "apiKey": ALICE_KEY, "limits": {"maxToolCalls": 3}},
                    {"id": "carol", "apiKey": CAROL_KEY, "toolCallRateLimit": "5/minute"},
                    {"id": "dave", "apiKey": DAVE_KEY},
                ]
            },
        },
    )
    async with ConduitHttp.start(config) as running:
        yield running


async def test_the_execution_tools_list_the_fifth_limit(server: ConduitHttp) -> None:
    async with server.client() as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    described = tools[EXECUTE_TS].input_schema["properties"]["limits"]["description"]
    for limit in ("timeoutMs", "memoryLimitMb", "maxOutputBytes", "maxLogEntries", "maxToolCalls"):
        assert limit in described, described
    for name in (EXECUTE_ISOLATE, EXECUTE_PYTHON):  # listed after TypeScript's, they refer to it (the surface's budget)
        assert "as for TypeScript" in (tools[name].description or ""), name


@pytest.mark.parametrize(("tool", "program", "options"), RUNTIMES)
async def test_calls_past_max_tool_calls_throw_and_the_program_goes_on(
    server: ConduitHttp, tool: str, program: str, options: dict[str, Any]
) -> None:
    before = await scrape(server)
    async with server.client() as client:
        failed, outcome = await run_code(client, tool, loop(program, 7), limits={"maxToolCalls": 4}, **options)
    assert not failed, outcome
    if options.get("engine") == "monty":
        assert outcome["result"][:4] == ["ok"] * 4
        assert all("maxToolCalls" in message for message in outcome["result"][4:]), outcome["result"]
        assert len(outcome["result"]) == 7
    else:
        assert outcome["result"] == ["ok"] * 4 + [-32017] * 3
    after = await scrape(server)
    made = ("conduit_tool_calls_total", (("outcome", "ok"), ("upstream", "toolbox")))
    refused = ("conduit_tool_calls_total", (("outcome", "call_limit"), ("upstream", "toolbox")))
    assert after[made] - before.get(made, 0) == 4  # the upstream was called four times, not seven
    assert after[refused] - before.get(refused, 0) == 3


async def test_the_message_says_which_limit_and_that_the_call_was_not_made(server: ConduitHttp) -> None:
    code = """
    await tools.toolbox.echo({text: 'a'});
    try { await tools.toolbox.echo({text: 'b'}); } catch (e) { return e.message; }
    """
    async with server.client() as client:
        failed, outcome = await run_code(client, EXECUTE_TS, code, limits={"maxToolCalls": 1})
    assert not failed, outcome
    assert "maxToolCalls" in outcome["result"] and "not made" in outcome["result"]


async def test_a_principals_policy_lowers_max_tool_calls_and_a_request_cannot_raise_it(server: ConduitHttp) -> None:
    async with server.client(token=ALICE_KEY) as alice:
        failed, outcome = await run_code(alice, EXECUTE_TS, loop(JS_LOOP, 5), limits={"maxToolCalls": 100})
    assert not failed, outcome
    assert outcome["result"] == ["ok"] * 3 + [-32017] * 2


async def test_a_loop_cannot_flood_an_upstream_others_share(server: ConduitHttp) -> None:
    async with server.client(token=CAROL_KEY) as carol:
        failed, outcome = await run_code(carol, EXECUTE_TS, loop(JS_LOOP, 8))
        assert not failed, outcome
        assert outcome["result"] == ["ok"] * 5 + [-32000] * 3
        code = "try { await tools.toolbox.echo({text: 'x'}); } catch (e) { return e.message; }"
        failed, outcome = await run_code(carol, EXECUTE_TS, code)
        assert "carol's calls to toolbox" in outcome["result"] and "retry" in outcome["result"].lower()
        # Per upstream: carol's calls to another upstream are counted apart.
        time_call = "return (await tools.time.get_current_time({timezone: 'Etc/UTC'})).isError ?? false;"
        failed, outcome = await run_code(carol, EXECUTE_TS, time_call)
        assert (failed, outcome["result"]) == (False, False), outcome
    # Per caller: dave shares the upstream and is not slowed by carol's loop.
    async with server.client(token=DAVE_KEY) as dave:
        failed, outcome = await run_code(dave, EXECUTE_TS, loop(JS_LOOP, 8))
    assert (failed, outcome["result"]) == (False, ["ok"] * 8)


async def test_the_rate_limit_counts_across_runs_of_every_runtime(
    tmp_path: Path, toolbox_command: dict[str, Any]
) -> None:
    config = write_config(
        tmp_path, {"upstreams": [{"id": "toolbox", **toolbox_command}], "toolCallRateLimit": "6/minute"}
    )
    async with ConduitHttp.start(config) as small, small.client() as client:
        seen: list[Any] = []
        for tool, program, options in [(EXECUTE_TS, JS_LOOP, {}), (EXECUTE_PYTHON, PY_LOOP, {"engine": "pyodide"})]:
            failed, outcome = await run_code(client, tool, loop(program, 4), **options)
            assert not failed, outcome
            seen += outcome["result"]
        assert seen == ["ok"] * 6 + [-32000] * 2
        metrics = (await scrape(small)).get(("conduit_rate_limited_total", ()), 0)
        assert metrics == 2
