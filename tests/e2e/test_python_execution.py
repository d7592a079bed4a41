"""Python code mode end to end: official MCP client -> Conduit -> Deno + Pyodide -> upstreams."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from support import EXECUTE_PYTHON, run_code, stdio_client_for, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]

ENGINE = {"name": "pyodide"}


@pytest.fixture(autouse=True, params=["pyodide", "monty"])
def engine(request: pytest.FixtureRequest) -> str:
    """Every test runs on both engines, except where CPython's own behaviour is what is tested."""
    only = request.node.get_closest_marker("pyodide_only")
    if request.param == "monty" and only is not None:
        pytest.skip(f"Pyodide only: {only.args[0]}")
    ENGINE["name"] = request.param
    return str(request.param)


async def run_py(client: Client, code: str, **arguments: Any) -> tuple[bool, dict[str, Any]]:
    is_error, out = await run_code(client, EXECUTE_PYTHON, code, **{"engine": ENGINE["name"], **arguments})
    assert out.pop("engine", None) == arguments.get("engine", ENGINE["name"]), out
    return is_error, out


async def test_trivial_run_with_output_and_last_expression_result(conduit: Client) -> None:
    code = 'import sys\nprint("hello")\nprint("oops", file=sys.stderr)\n{"answer": 6 * 7, "items": [1, None]}'
    is_error, out = await run_py(conduit, code)
    assert not is_error, out
    assert out == {"stdout": "hello\n", "stderr": "oops\n", "exitCode": 0, "result": {"answer": 42, "items": [1, None]}}


async def test_statement_last_means_no_result_and_unserializable_gets_a_note(conduit: Client) -> None:
    is_error, out = await run_py(conduit, "x = 1")
    assert (is_error, "result" in out) == (False, False)
    is_error, out = await run_py(conduit, "{1, 2}")
    assert not is_error
    assert "result" not in out
    assert "not JSON-serialisable" in out["stderr"]


async def test_tool_calls_with_keywords_dict_raw_and_discovery(conduit: Client) -> None:
    code = """
a = await tools.toolbox.add(a=2, b=3)
b = await tools.toolbox.add({"a": 4, "b": 5})
c = await tools.raw("toolbox__echo", {"text": "raw"})
t = await tools.time.get_current_time(timezone="UTC")
names = sorted(tool["name"] for tool in await discover_mcp_tools())
[a["structuredContent"]["sum"], b["structuredContent"]["sum"], c["content"][0]["text"],
 t["timezone"], len(names) >= 9]
"""
    is_error, out = await run_py(conduit, code)
    assert (is_error, out.get("result")) == (False, [5, 9, "raw", "UTC", True]), out


async def test_ten_sequential_and_ten_parallel_tool_calls(conduit: Client) -> None:
    code = """
import asyncio, time
total = 0
for i in range(10):
    total += (await tools.toolbox.add(a=i, b=1))["structuredContent"]["sum"]
started = time.monotonic()
slept = await asyncio.gather(*(tools.toolbox.sleep(seconds=0.5) for _ in range(10)))
{"total": total, "parallel": len(slept), "seconds": time.monotonic() - started}
"""
    is_error, out = await run_py(conduit, code)
    assert not is_error, out
    assert out["result"]["total"] == 55
    assert out["result"]["parallel"] == 10
    assert out["result"]["seconds"] < 4


@pytest.mark.pyodide_only("ToolError and its .code (Monty raises Exception)")
async def test_denied_unknown_and_failed_calls_raise_tool_error_with_code(conduit: Client) -> None:
    code = """
codes = []
for call in (lambda: tools.raw("toolbox__add", {"a": 1, "b": 2}), lambda: tools.raw("time__nope", {}),
             lambda: tools.toolbox.crash()):
    try:
        await call()
        codes.append("ok")
    except ToolError as error:
        codes.append(error.code)
codes
"""
    is_error, out = await run_py(conduit, code, allowedTools=["time.*", "toolbox.crash"])
    assert (is_error, out.get("result")) == (False, [-32003, -32004, -32005]), out
    is_error, out = await run_py(conduit, "hasattr(tools.toolbox, 'add')", allowedTools=["time.*", "toolbox.crash"])
    assert (is_error, out.get("result")) == (False, False), out  # what it may not call, it cannot see


async def test_exception_gives_a_clean_traceback_and_exit_code_1(conduit: Client) -> None:
    code = 'def inner():\n    raise ValueError("kaput")\n\nprint("before")\ninner()'
    is_error, out = await run_py(conduit, code)
    assert is_error
    assert (out["exitCode"], out["stdout"]) == (1, "before\n")
    assert out["error"] == {"code": -32001, "message": "ValueError: kaput"}
    assert 'File "program.py", line 5' in out["stderr"] and 'File "program.py", line 2, in inner' in out["stderr"]
    assert "/work" not in out["stderr"] and "_conduit" not in out["stderr"] and "pyodide" not in out["stderr"]


async def test_syntax_error_points_at_the_program(conduit: Client) -> None:
    is_error, out = await run_py(conduit, "x = 1\ny = (")
    assert is_error
    assert out["error"]["code"] == -32001
    assert "SyntaxError" in out["error"]["message"]
    assert 'File "program.py", line 2' in out["stderr"]


async def test_timeout(conduit: Client) -> None:
    is_error, out = await run_py(
        conduit, 'print("spinning", flush=True)\nwhile True:\n    pass', limits={"timeoutMs": 1500}
    )
    assert is_error
    assert out["error"]["code"] == -32008
    assert out["stdout"] == "spinning\n"


@pytest.mark.pyodide_only("bytearray (Monty's bombs: tests/e2e/test_monty_engine.py)")
async def test_bytearray_bomb_is_a_memory_error_near_the_limit(conduit: Client) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(8 * 1024 * 1024))"
    started = anyio.current_time()
    is_error, out = await run_py(conduit, code, limits={"memoryLimitMb": 128})
    assert is_error
    assert out["error"]["code"] == -32009
    assert "MemoryError" in out["stderr"]
    assert anyio.current_time() - started < 10  # cold start included; the bomb itself ends in well under 1 s


async def test_output_and_log_floods_are_cut(conduit: Client) -> None:
    is_error, out = await run_py(conduit, 'while True:\n    print("z" * 999)', limits={"maxOutputBytes": 30_000})
    assert (is_error, out["error"]["code"]) == (True, -32013)
    assert len(out["stdout"]) == 30_000
    is_error, out = await run_py(conduit, "i = 0\nwhile True:\n    print(i)\n    i += 1", limits={"maxLogEntries": 40})
    assert (is_error, out["error"]["code"]) == (True, -32014)
    assert out["stdout"].splitlines() == [str(i) for i in range(40)]


@pytest.mark.parametrize(
    "code",
    [
        "import js\njs.Deno.readTextFileSync('/etc/passwd')",
        "import js\njs.process.getBuiltinModule('fs').readFileSync('/etc/passwd', 'utf8')",
        "from pyodide.code import run_js\n"
        '(await run_js(\'import("file:///etc/passwd", {with: {type: "text"}})\')).default',
        "import js\nawait (await js.fetch('file:///etc/passwd')).text()",
        "from pyodide.code import run_js\nrun_js('Deno.readTextFileSync(\"/etc/passwd\")')",
        "import js\njs.Function.new('return Deno.readTextFileSync(\"/etc/passwd\")')()",
        "open('/etc/passwd').read()",
    ],
)
async def test_host_files_are_unreachable_from_python_and_js(conduit: Client, code: str) -> None:
    is_error, out = await run_py(conduit, code)
    assert is_error, out
    assert "root:" not in str(out)


@pytest.mark.pyodide_only("Pyodide's js module and Emscripten's environment")
async def test_host_environment_is_unreachable(conduit: Client) -> None:
    is_error, out = await run_py(conduit, "import js\njs.Deno.env.toObject()")
    assert is_error and "NotCapable" in out["stderr"]
    is_error, out = await run_py(conduit, "import os\ndict(os.environ)")
    assert not is_error
    seen = out["result"]  # Emscripten's own stand-in environment, not the host's
    assert "IPC_BEARER_TOKEN" not in seen and seen.get("HOME") == "/home/pyodide"
    assert seen.get("PATH") != os.environ.get("PATH")


@pytest.mark.pyodide_only("Pyodide's js module")
async def test_subprocess_is_refused(conduit: Client) -> None:
    code = "import js\njs.Deno.Command.new('/bin/sh', js.Object.fromEntries([['args', ['-c', 'id']]])).outputSync()"
    is_error, out = await run_py(conduit, code)
    assert is_error and "NotCapable" in out["stderr"]


async def test_loopback_listener_is_unreachable(conduit: Client) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0)
        port = server.getsockname()[1]
        for code in (
            f"import js\nawait js.Deno.connect(js.Object.fromEntries([['hostname', '127.0.0.1'], ['port', {port}]]))",
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
            f"import js\nawait js.fetch('http://127.0.0.1:{port}/')",
        ):
            is_error, out = await run_py(conduit, code)
            assert is_error, (code, out)
        with pytest.raises(BlockingIOError):
            server.accept()


@pytest.mark.pyodide_only("the builtins module (Monty's state: tests/e2e/test_monty_engine.py)")
async def test_state_does_not_survive_between_runs(conduit: Client) -> None:
    code = """
import sys, builtins, json
sys.modules["json"] = "patched"
builtins.len = lambda x: -1
builtins.leaked = "secret"
COUNTER = 1
1
"""
    await run_py(conduit, code)  # may fail: the program broke its own interpreter; only the next run matters
    check = "import json, builtins\n[json.dumps([1]), len([1, 2]), hasattr(builtins, 'leaked'), 'COUNTER' in globals()]"
    is_error, out = await run_py(conduit, check)
    assert (is_error, out.get("result")) == (False, ["[1]", 2, False, False]), out


@pytest.mark.pyodide_only("Pyodide needs 64 MB; Monty runs in less")
async def test_memory_limit_below_what_python_needs_is_invalid_params(conduit: Client) -> None:
    with pytest.raises(MCPError) as caught:
        await conduit.call_tool(EXECUTE_PYTHON, {"code": "1", "limits": {"memoryLimitMb": 32}, "engine": "pyodide"})
    assert caught.value.error.code == -32602
    assert "at least 64" in caught.value.error.message


@pytest.mark.pyodide_only("sys.exit with a code (Monty's SystemExit takes none)")
async def test_program_exit_codes(conduit: Client) -> None:
    is_error, out = await run_py(conduit, "import sys\nprint('bye')\nsys.exit(3)")
    assert is_error and out["exitCode"] == 3 and out["stdout"] == "bye\n"
    is_error, out = await run_py(conduit, "import sys\nsys.exit(0)")
    assert not is_error and out["exitCode"] == 0


async def test_six_concurrent_executions_with_a_pool_of_two(tmp_path: Path, toolbox_command: dict[str, Any]) -> None:
    config = write_config(
        tmp_path, {"pools": {"python": {"min": 2}}, "upstreams": [{"id": "toolbox", **toolbox_command}]}
    )
    results: list[tuple[bool, dict[str, Any]]] = []
    async with Client(stdio_client_for(config)) as client:

        async def run(index: int) -> None:
            code = f"r = await tools.toolbox.add(a={index}, b=1)\nr['structuredContent']['sum']"
            results.append(await run_py(client, code))

        async with anyio.create_task_group() as tg:
            for index in range(6):
                tg.start_soon(run, index)
    assert sorted(out.get("result") for _, out in results) == [1, 2, 3, 4, 5, 6]
    assert not any(is_error for is_error, _ in results)
