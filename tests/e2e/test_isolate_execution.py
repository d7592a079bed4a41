"""JavaScript in V8 isolates end to end: official MCP client -> Conduit -> isolate worker -> upstreams."""

from __future__ import annotations

import time

import anyio
import pytest
from mcp import Client

from support import run_js, run_ts

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_trivial_run_with_console_streams_and_result(conduit: Client) -> None:
    code = 'console.log("a", 1, {b: [2]}); console.info("i"); console.warn("w"); console.error("e"); return 6 * 7;'
    is_error, out = await run_js(conduit, code)
    assert not is_error
    assert out == {"stdout": 'a 1 {"b":[2]}\ni\n', "stderr": "w\ne\n", "exitCode": 0, "result": 42}


async def test_output_conventions_match_the_deno_runtime(conduit: Client) -> None:
    code = 'console.log("x"); console.log("y"); console.error("z"); return {k: null};'
    assert await run_js(conduit, code) == await run_ts(conduit, code)


async def test_one_ten_sequential_and_ten_parallel_tool_calls(conduit: Client) -> None:
    code = """
    const one = (await tools.toolbox.add({a: 2, b: 3})).structuredContent.sum;
    let total = 0;
    for (let i = 0; i < 10; i++) total += (await tools.toolbox.add({a: i, b: 1})).structuredContent.sum;
    const started = Date.now();
    const parallel = await Promise.all(Array.from({length: 10}, () => tools.toolbox.sleep({seconds: 0.5})));
    return {one, total, parallel: parallel.length, ms: Date.now() - started, text: parallel[0].content[0].text};
    """
    is_error, out = await run_js(conduit, code)
    assert not is_error, out
    result = out["result"]
    assert (result["one"], result["total"], result["parallel"], result["text"]) == (5, 55, 10, "slept")
    assert result["ms"] < 4000


async def test_raw_calls_discovery_and_published_upstream(conduit: Client) -> None:
    code = """
    const r = await tools.$raw("time__get_current_time", {timezone: "UTC"});
    const names = (await discoverMCPTools()).map((t) => t.name).sort();
    return [r.structuredContent.timezone, names];
    """
    is_error, out = await run_js(conduit, code, allowedTools=["time.*"])
    assert (is_error, out["result"]) == (False, ["UTC", ["time__convert_time", "time__get_current_time"]])


async def test_denied_and_unknown_calls_throw_sanitised_errors_with_codes(conduit: Client) -> None:
    code = """
    const seen = [];
    for (const call of [() => tools.$raw("toolbox__add", {a: 1, b: 2}), () => tools.$raw("time__nope", {}),
                        () => tools.toolbox.crash({})]) {
      try { await call(); seen.push("ok"); } catch (e) { seen.push([e.name, e.code, e.message]); }
    }
    return seen;
    """
    is_error, out = await run_js(conduit, code, allowedTools=["time.*", "toolbox.crash"])
    assert not is_error, out
    denied, unknown, died = out["result"]
    assert denied[:2] == ["ToolError", -32003]
    assert unknown[:2] == ["ToolError", -32004]
    assert died[:2] == ["ToolError", -32005]
    text = str(out)
    assert "Traceback" not in text and ".py" not in text and "/work" not in text


async def test_spinning_program_ends_at_its_deadline(conduit: Client) -> None:
    is_error, out = await run_js(conduit, 'console.log("before");\nwhile (true) {}', limits={"timeoutMs": 1000})
    assert is_error
    assert out["error"]["code"] == -32008
    assert out["stdout"] == "before\n"


async def test_spin_in_async_continuation_does_not_block_the_server(conduit: Client) -> None:
    answered_while_spinning: list[float] = []
    spin_result: list[tuple[bool, dict[str, object]]] = []

    async def spin() -> None:
        spin_result.append(await run_js(conduit, "await null; while (true) {}", limits={"timeoutMs": 3000}))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(spin)
        await anyio.sleep(0.5)
        for _ in range(3):
            is_error, out = await run_js(conduit, "return 'other';")
            assert (is_error, out["result"]) == (False, "other")
            await conduit.list_tools()
            answered_while_spinning.append(time.monotonic() - started)
    assert all(moment < 3.0 for moment in answered_while_spinning)
    is_error, out = spin_result[0]
    assert is_error and out["error"]["code"] == -32008  # type: ignore[index]
    assert time.monotonic() - started < 8


async def test_heap_bomb_is_a_memory_error(conduit: Client) -> None:
    code = 'console.log("filling");\nconst keep = []; while (true) keep.push(new Array(1_000_000).fill(1.5));'
    is_error, out = await run_js(conduit, code, limits={"memoryLimitMb": 64})
    assert is_error
    assert out["error"]["code"] == -32009
    assert out["stdout"] == "filling\n"


async def test_string_bomb_is_a_memory_error_or_a_range_error(conduit: Client) -> None:
    code = 'let s = "x"; const keep = []; while (true) { s = s + s; keep.push(s); }'
    is_error, out = await run_js(conduit, code, limits={"memoryLimitMb": 64})
    assert is_error
    assert out["error"]["code"] in (-32009, -32001)


@pytest.mark.parametrize(
    "code",
    [
        "return new ArrayBuffer(2 ** 31).byteLength;",
        "return new Uint8Array(2 ** 31).length;",
        "return new SharedArrayBuffer(2 ** 31).byteLength;",
        "return new WebAssembly.Memory({initial: 65536}).buffer.byteLength;",
        "return Atomics.wait;",
    ],
)
async def test_memory_escaping_globals_are_gone(conduit: Client, code: str) -> None:
    is_error, out = await run_js(conduit, code)
    assert is_error
    assert out["error"]["code"] == -32001
    assert "ReferenceError" in out["error"]["message"]


async def test_output_and_log_floods_are_cut(conduit: Client) -> None:
    is_error, out = await run_js(
        conduit, 'const l = "y".repeat(1000); while (true) console.log(l);', limits={"maxOutputBytes": 20_000}
    )
    assert (is_error, out["error"]["code"]) == (True, -32013)
    assert len(out["stdout"]) == 20_000
    is_error, out = await run_js(conduit, "let i = 0; while (true) console.log(i++);", limits={"maxLogEntries": 50})
    assert (is_error, out["error"]["code"]) == (True, -32014)
    assert out["stdout"].splitlines() == [str(i) for i in range(50)]


async def test_host_facilities_are_absent(conduit: Client) -> None:
    code = """
    const kinds = [typeof require, typeof process, typeof fetch, typeof Deno, typeof module, typeof XMLHttpRequest,
                   typeof WebSocket, typeof Worker];
    let dynamicImport;
    try { await import("fs"); dynamicImport = "loaded"; } catch (e) { dynamicImport = "refused"; }
    const chains = [];
    for (const chain of ["return typeof process", "return typeof require", "return Object.keys(globalThis)"]) {
      try { chains.push(this.constructor.constructor(chain)()); } catch (e) { chains.push("threw"); }
    }
    chains.push((() => {}).constructor("return typeof process")());
    chains.push(Function.prototype.constructor("return typeof require")());
    return {kinds, dynamicImport, chains};
    """
    is_error, out = await run_js(conduit, code)
    assert not is_error, out
    result = out["result"]
    assert set(result["kinds"]) == {"undefined"}
    assert result["dynamicImport"] == "refused"
    assert result["chains"][:2] == ["undefined", "undefined"]
    assert result["chains"][3:] == ["undefined", "undefined"]
    visible = set(result["chains"][2]) if isinstance(result["chains"][2], list) else set()
    assert not visible & {"process", "require", "__conduitRunner", "__conduitWrite", "__conduitCall"}


async def test_pollution_and_patching_do_not_survive_between_runs(conduit: Client) -> None:
    code = """
    Object.prototype.polluted = 1;
    JSON.parse = () => "patched";
    Array.prototype.map = () => "patched";
    globalThis.leak = "secret";
    try { tools.toolbox = null; } catch (e) {}
    try { tools.toolbox.echo = () => "patched"; } catch (e) {}
    return 1;
    """
    is_error, _ = await run_js(conduit, code)
    assert not is_error
    check = """
    const echo = await tools.toolbox.echo({text: "real"});
    return [({}).polluted, JSON.parse("[1]"), [1].map((x) => x + 1), typeof leak, echo.content[0].text];
    """
    is_error, out = await run_js(conduit, check)
    assert (is_error, out["result"]) == (False, [None, [1], [2], "undefined", "real"])


async def test_syntax_errors_point_at_the_program(conduit: Client) -> None:
    is_error, out = await run_js(conduit, "const a = 1;\nreturn (;")
    assert is_error
    assert out["error"]["code"] == -32001
    assert "program.js:2" in out["error"]["message"]


async def test_uncaught_error_has_a_clean_stack(conduit: Client) -> None:
    is_error, out = await run_js(conduit, 'console.log("before");\nthrow new RangeError("nope");')
    assert is_error
    message = 'RangeError: nope (at program.js:2:7: throw new RangeError("nope");)'
    assert (out["exitCode"], out["error"]) == (1, {"code": -32001, "message": message})
    assert "program.js:2" in out["stderr"]
    assert ".py" not in out["stderr"] and "<anonymous>" not in out["stderr"]


async def test_timers_work(conduit: Client) -> None:
    code = """
    const order = [];
    setTimeout(() => order.push("late"), 60);
    const id = setTimeout(() => order.push("cancelled"), 10);
    clearTimeout(id);
    await new Promise((r) => setTimeout(r, 100));
    return order;
    """
    is_error, out = await run_js(conduit, code)
    assert (is_error, out["result"]) == (False, ["late"])


async def test_a_program_written_as_a_module_runs_in_strict_mode(conduit: Client) -> None:
    code = (
        "export {};\nexport const f = () => 2;\nlet sloppy = 'allowed';\n"
        "try { undeclared = 1; } catch (e) { sloppy = e.name; }\nreturn [f(), sloppy];"
    )
    is_error, out = await run_js(conduit, code)
    assert (is_error, out.get("result")) == (False, [2, "ReferenceError"]), out
    is_error, out = await run_js(conduit, 'import x from "./x.js";\nreturn x;')
    assert is_error
    assert 'program.js:1: cannot import "./x.js"' in out["error"]["message"]
