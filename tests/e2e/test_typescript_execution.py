"""TypeScript code mode end to end: official MCP client -> Conduit (stdio and HTTP) -> Deno -> upstreams."""

from __future__ import annotations

import json

import pytest
from mcp import Client

from support import run_ts

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]


async def test_lists_execute_tool_and_proxied_upstream_tools(conduit: Client) -> None:
    names = {tool.name for tool in (await conduit.list_tools()).tools}
    assert "conduit__mcp_execute_typescript" in names
    assert {"toolbox__echo", "toolbox__add", "time__get_current_time", "time__convert_time"} <= names


async def test_trivial_program_returns_output_and_result(conduit: Client) -> None:
    is_error, out = await run_ts(conduit, 'console.log("hello"); console.error("oops"); return 6 * 7;')
    assert not is_error
    assert out == {"stdout": "hello\n", "stderr": "oops\n", "exitCode": 0, "result": 42}


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ('return {a: [1, "x", null], b: {c: true}};', {"a": [1, "x", None], "b": {"c": True}}),
        ('return "text";', "text"),
        ("return null;", None),
        ("return [];", []),
    ],
)
async def test_return_value_becomes_result(conduit: Client, code: str, expected: object) -> None:
    is_error, out = await run_ts(conduit, code)
    assert not is_error
    assert out["result"] == expected


async def test_no_return_means_no_result_key(conduit: Client) -> None:
    is_error, out = await run_ts(conduit, "const x = 1;")
    assert not is_error
    assert "result" not in out


async def test_unserializable_return_value_gets_a_note_not_a_crash(conduit: Client) -> None:
    is_error, out = await run_ts(conduit, "return 10n;")
    assert not is_error
    assert "result" not in out
    assert "not JSON-serialisable" in out["stderr"]


async def test_typescript_syntax_and_top_level_await(conduit: Client) -> None:
    code = """
    interface Point { x: number; y: number }
    const p: Point = { x: 1, y: 2 };
    await new Promise((resolve) => setTimeout(resolve, 10));
    return p.x + p.y;
    """
    is_error, out = await run_ts(conduit, code)
    assert (is_error, out["result"]) == (False, 3)


async def test_one_tool_call_returns_the_upstream_call_tool_result(conduit: Client) -> None:
    code = """
    const r = await tools.toolbox.add({a: 2, b: 3});
    return {structured: r.structuredContent, text: r.content[0].text, isError: r.isError ?? false};
    """
    is_error, out = await run_ts(conduit, code)
    assert not is_error, out
    assert out["result"] == {"structured": {"sum": 5}, "text": "5", "isError": False}


async def test_real_published_upstream_mcp_server_time(conduit: Client) -> None:
    code = 'const r = await tools.time.get_current_time({timezone: "UTC"}); return r.timezone;'
    is_error, out = await run_ts(conduit, code)
    assert (is_error, out["result"]) == (False, "UTC")


async def test_ten_sequential_tool_calls(conduit: Client) -> None:
    code = """
    let total = 0;
    for (let i = 0; i < 10; i++) total += (await tools.toolbox.add({a: i, b: 1})).structuredContent.sum;
    return total;
    """
    is_error, out = await run_ts(conduit, code)
    assert (is_error, out["result"]) == (False, 55)


async def test_ten_parallel_tool_calls_run_concurrently(conduit: Client) -> None:
    # Ten calls that each sleep 0.5 s upstream: run one after another they would take 5 s.
    code = """
    const started = Date.now();
    const results = await Promise.all(Array.from({length: 10}, (_, i) => tools.toolbox.sleep({seconds: 0.5})));
    return {n: results.filter((r) => r.content[0].text === "slept").length, ms: Date.now() - started};
    """
    is_error, out = await run_ts(conduit, code)
    assert not is_error, out
    assert out["result"]["n"] == 10
    assert out["result"]["ms"] < 4000


async def test_raw_call_and_dotted_names(conduit: Client) -> None:
    code = """
    const a = await tools.$raw("toolbox__echo", {text: "one"});
    const b = await tools.$raw("toolbox.echo", {text: "two"});
    return [a.content[0].text, b.content[0].text];
    """
    is_error, out = await run_ts(conduit, code)
    assert (is_error, out["result"]) == (False, ["one", "two"])


async def test_identifier_unsafe_tool_names_are_reachable(conduit: Client) -> None:
    code = """
    try { await tools.toolbox.protocol_error({}); } catch (e) { return {code: e.code, message: e.message}; }
    """
    is_error, out = await run_ts(conduit, code)
    assert not is_error
    assert out["result"]["code"] == -32099
    assert "the toolbox refuses" in out["result"]["message"]


async def test_upstream_tool_error_result_is_returned_not_thrown(conduit: Client) -> None:
    code = 'const r = await tools.toolbox.fail({reason: "bad"}); return [r.isError, r.content[0].text];'
    is_error, out = await run_ts(conduit, code)
    assert (is_error, out["result"]) == (False, [True, "failed: bad"])


async def test_discover_lists_only_allowed_tools(conduit: Client) -> None:
    code = "return (await discoverMCPTools()).map((t) => t.name).sort();"
    is_error, out = await run_ts(conduit, code, allowedTools=["toolbox.echo", "time.*"])
    assert not is_error
    assert out["result"] == ["time__convert_time", "time__get_current_time", "toolbox__echo"]


async def test_uncaught_error_gives_exit_code_1_and_clean_stack(conduit: Client) -> None:
    is_error, out = await run_ts(conduit, 'console.log("before");\nthrow new TypeError("kaput");')
    assert is_error
    assert out["exitCode"] == 1
    assert out["stdout"] == "before\n"
    # where it was thrown, in the program as written, with the line's text
    assert out["error"] == {
        "code": -32001,
        "message": 'TypeError: kaput (at program.ts:2:7: throw new TypeError("kaput");)',
    }
    assert "program.ts:2" in out["stderr"]
    assert "data:" not in out["stderr"] and "harness" not in out["stderr"] and "/work" not in out["stderr"]


async def test_unhandled_rejection_is_reported(conduit: Client) -> None:
    code = 'Promise.reject(new Error("late")); await new Promise(r => setTimeout(r, 50));'
    is_error, out = await run_ts(conduit, code)
    assert is_error
    assert out["error"]["message"].startswith("Error: late (at program.ts:1:16: Promise.reject(")


async def test_syntax_error_is_a_program_error(conduit: Client) -> None:
    is_error, out = await run_ts(conduit, "return (;")
    assert is_error
    assert out["error"]["code"] == -32001
    assert "data:" not in json.dumps(out)


async def test_proxied_upstream_tool_called_directly(conduit: Client) -> None:
    result = await conduit.call_tool("toolbox__add", {"a": 1, "b": 2})
    assert result.structured_content == {"sum": 3}
    assert not result.is_error


MODULE_PROGRAM = """export {};
import type { CallToolResult } from "./types.ts";
export interface Sum { sum: number }
export const twice = (n: number): number => 2 * n;
const result: CallToolResult = await tools.toolbox.add({ a: 20, b: 1 });
export default twice((result.structuredContent as Sum).sum);
"""


async def test_a_program_written_as_a_module_runs_with_top_level_await_and_its_default_as_result(
    conduit: Client,
) -> None:
    is_error, out = await run_ts(conduit, MODULE_PROGRAM)
    assert (is_error, out.get("result")) == (False, 42), out


async def test_a_module_program_returns_and_keeps_its_line_numbers(conduit: Client) -> None:
    is_error, out = await run_ts(conduit, 'export {};\nexport const x = 2;\n\nthrow new Error("at line four");')
    assert is_error
    assert "program.ts:4" in out["stderr"], out
    is_error, out = await run_ts(conduit, "export {};\nconst r = await Promise.resolve(7);\nreturn r;")
    assert (is_error, out.get("result")) == (False, 7)


async def test_a_value_import_is_a_clear_error_before_anything_runs(conduit: Client) -> None:
    code = 'console.log("never printed");\nimport { helper } from "./helpers.ts";\nreturn helper();'
    is_error, out = await run_ts(conduit, code)
    assert is_error
    assert out["stdout"] == ""
    assert out["error"]["code"] == -32001
    assert 'program.ts:2: cannot import "./helpers.ts"' in out["error"]["message"]
    assert "tools" in out["error"]["message"]
