"""The Monty engine for Python: which engine runs a program, its contract, its walls and its freshness.

Through a real server over MCP (stdio and HTTP) with the official client, and in-process where the
host's view is needed (worker processes, their cgroups and walls).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from conduit.assembly import open_gateway
from conduit.config.schema import Config
from conduit.core.gateway import Gateway
from conduit.sandbox.host.process import has_exited
from conduit.sandbox.monty.runtime import MontyRuntime, MontySandbox
from conduit.security.callers import MASTER as MASTER_CALLER
from support import EXECUTE_PYTHON, EXECUTE_TS, MASTER, TOOLBOX, process_alive, run_code, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ORCHESTRATION = """
report = []
for a, b in [(1, 2), (3, 4), (5, 6)]:
    r = await tools.toolbox.add(a=a, b=b)
    report.append({"pair": [a, b], "sum": r["structuredContent"]["sum"]})
print(f"{len(report)} sums, last {report[-1]['sum']}")
report
"""


async def run_py(client: Client, code: str, **arguments: Any) -> tuple[bool, dict[str, Any]]:
    return await run_code(client, EXECUTE_PYTHON, code, **arguments)


# -- which engine ---------------------------------------------------------------------------------------


@pytest.mark.deno
async def test_auto_runs_an_orchestration_program_on_monty(conduit: Client) -> None:
    is_error, out = await run_py(conduit, ORCHESTRATION)
    assert not is_error, out
    assert out["engine"] == "monty"
    assert out["stdout"] == "3 sums, last 11\n"
    assert out["result"] == [{"pair": [1, 2], "sum": 3}, {"pair": [3, 4], "sum": 7}, {"pair": [5, 6], "sum": 11}]


@pytest.mark.deno
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import sqlite3\nsqlite3.connect(':memory:').execute('select 40 + 2').fetchone()[0]", 42),
        ("class Meta(type):\n    pass\nclass A(metaclass=Meta):\n    pass\ntype(A).__name__", "Meta"),
        ("class Base:\n    x = 40\nclass B(Base):\n    pass\nB.x + 2", 42),
        ("def gen():\n    yield 21\n    yield 21\nsum(gen())", 42),
        ("len(dir(tools)) > 0", True),
        ("import textwrap\ntextwrap.dedent('  a b')", "a b"),
        ("try:\n    await tools.raw('nope__x')\nexcept ToolError as e:\n    r = e.code\nr", -32004),
        ("(await tools.toolbox.add(a=1, b=2)).upper()", None),
    ],
    ids=["sqlite3", "metaclass", "inheritance", "yield", "dir", "textwrap", "ToolError", "missing-method"],
)
async def test_auto_runs_what_monty_cannot_keep_on_pyodide(conduit: Client, code: str, expected: Any) -> None:
    is_error, out = await run_py(conduit, code)
    assert out.get("engine") == "pyodide", out
    if expected is None:  # fails as CPython fails
        assert is_error and "AttributeError" in out["error"]["message"], out
    else:
        assert (is_error, out.get("result")) == (False, expected), out


@pytest.mark.deno
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("x: int = 'not an int'\nx", "not an int"),
        (
            "rows = []\nrows.append({'name': 'a', 'n': 2})\nrows.append({'name': 'b', 'n': 3})\n"
            "sum(r['n'] for r in rows)",
            5,
        ),
    ],
    ids=["annotation", "mixed-dict"],
)
async def test_plain_type_errors_still_run_on_monty(conduit: Client, code: str, expected: Any) -> None:
    is_error, out = await run_py(conduit, code)
    assert (is_error, out.get("engine"), out.get("result")) == (False, "monty", expected), out


@pytest.mark.deno
async def test_a_program_is_never_run_twice(conduit: Client) -> None:
    """A program that prints and tool-calls before using what Monty lacks is decided up front: it runs once."""
    code = "print('ran')\nawait tools.toolbox.echo(text='x')\nimport sqlite3\nsqlite3.sqlite_version > ''"
    is_error, out = await run_py(conduit, code)
    assert (is_error, out["engine"], out["stdout"], out.get("result")) == (False, "pyodide", "ran\n", True), out


@pytest.mark.deno
async def test_explicit_engines_and_bad_engine_values(conduit: Client) -> None:
    for engine in ("monty", "pyodide"):
        is_error, out = await run_py(conduit, "6 * 7", engine=engine)
        assert (is_error, out["engine"], out["result"]) == (False, engine, 42), out
    is_error, out = await run_py(conduit, "import sqlite3", engine="monty")
    assert is_error and out["engine"] == "monty"
    assert "ModuleNotFoundError" in out["error"]["message"]
    with pytest.raises(MCPError, match="engine"):
        await run_py(conduit, "1", engine="cpython")
    with pytest.raises(MCPError, match="unknown argument"):
        await run_code(conduit, EXECUTE_TS, "return 1", engine="monty")


# -- the same contract -----------------------------------------------------------------------------------


@pytest.mark.deno
async def test_sdk_on_monty_keywords_dict_raw_discovery_and_failures(conduit: Client) -> None:
    code = """
a = await tools.toolbox.add(a=2, b=3)
b = await tools.toolbox.add({"a": 4, "b": 5})
c = await tools.raw("toolbox__echo", {"text": "raw"})
names = sorted(tool["name"] for tool in await discover_mcp_tools())
failures = []
for name in ("toolbox__crash", "nope__x"):
    try:
        await tools.raw(name, {})
        failures.append("ok")
    except Exception as error:
        failures.append(str(error))
[a["structuredContent"]["sum"], b["structuredContent"]["sum"], c["content"][0]["text"], names, failures]
"""
    is_error, out = await run_py(conduit, code, engine="monty", allowedTools=["toolbox.echo", "toolbox.add"])
    assert not is_error, out
    assert out["result"][:4] == [5, 9, "raw", ["toolbox__add", "toolbox__echo"]]
    denied, unknown = out["result"][4]
    assert "toolbox__crash" in denied and "nope__x" in unknown


@pytest.mark.deno
async def test_forbidden_tool_fails_exactly_like_an_unknown_one_on_monty(conduit: Client) -> None:
    code = "try:\n    await tools.raw(NAME, {})\nexcept Exception as e:\n    r = str(e)\nr"
    _, forbidden = await run_py(
        conduit, code.replace("NAME", "'toolbox__echo'"), engine="monty", allowedTools=["time.*"]
    )
    _, unknown = await run_py(conduit, code.replace("NAME", "'toolbox__nope'"), engine="monty", allowedTools=["time.*"])
    assert forbidden["result"].replace("echo", "X") == unknown["result"].replace("nope", "X")
    _, out = await run_py(conduit, "hasattr(tools, 'toolbox')", engine="monty", allowedTools=["time.*"])
    assert out["result"] is False


@pytest.mark.deno
async def test_traceback_limits_and_exit_codes_on_monty(conduit: Client) -> None:
    is_error, out = await run_py(conduit, 'def inner():\n    raise ValueError("kaput")\n\nprint("before")\ninner()')
    assert (is_error, out["engine"], out["stdout"]) == (True, "monty", "before\n")
    assert out["error"] == {"code": -32001, "message": "ValueError: kaput"}
    assert 'File "program.py", line 5' in out["stderr"] and 'File "program.py", line 2, in inner' in out["stderr"]
    assert "prelude" not in out["stderr"] and "python-input" not in out["stderr"]
    is_error, out = await run_py(
        conduit, 'print("spin")\nwhile True:\n    pass', engine="monty", limits={"timeoutMs": 800}
    )
    assert (is_error, out["error"]["code"], out["stdout"]) == (True, -32008, "spin\n")
    is_error, out = await run_py(conduit, "x = []\nwhile True:\n    x.append('a' * 100000)", engine="monty")
    assert (is_error, out["error"]["code"]) == (True, -32009)
    flood = 'while True:\n    print("z" * 999)'
    is_error, out = await run_py(conduit, flood, engine="monty", limits={"maxOutputBytes": 30_000})
    assert (is_error, out["error"]["code"], len(out["stdout"])) == (True, -32013, 30_000)
    lines = "i = 0\nwhile True:\n    print(i)\n    i += 1"
    is_error, out = await run_py(conduit, lines, engine="monty", limits={"maxLogEntries": 40})
    assert (is_error, out["error"]["code"]) == (True, -32014)
    assert out["stdout"].splitlines() == [str(i) for i in range(40)]
    is_error, out = await run_py(conduit, "x = (", engine="monty")
    assert is_error and "SyntaxError" in out["error"]["message"] and "program.py" in out["stderr"]


# -- attacks ---------------------------------------------------------------------------------------------

ATTACKS = {
    "open": "open('/etc/passwd').read()",
    "pathlib": "from pathlib import Path\nPath('/etc/passwd').read_text()",
    "listdir": "import os\nos.listdir('/')",
    "environ": "import os\ndict(os.environ)",
    "getenv": "import os\nos.getenv('CONDUIT_TEST_SECRET')",
    "socket": "import socket\nsocket.create_connection(('127.0.0.1', 22))",
    "subprocess": "import subprocess\nsubprocess.run(['id'])",
    "urllib": "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:1')",
    "import-hook": "__import__('os').system('id')",
    "register-upstream": "r = await _conduit_call('mcp_register_upstream', {'id': 'x', 'command': 'id'})\n"
    "raise RuntimeError(str(r))",
    "execute": "r = await _conduit_call('mcp_execute_python', {'code': '1'})\nraise RuntimeError(str(r))",
}


@pytest.mark.deno
@pytest.mark.parametrize("name", sorted(ATTACKS))
async def test_attacks_fail_on_monty(conduit: Client, name: str) -> None:
    is_error, out = await run_py(conduit, ATTACKS[name], engine="monty")
    text = repr(out)
    assert "root:x:0:0" not in text and "uid=" not in text and "canary" not in text
    assert is_error, out
    if name in ("execute", "register-upstream"):  # the host function carries the execution's token: no more
        assert "a session token may not call" in out["error"]["message"], out


BOMBS = {
    "list": "x = []\nwhile True:\n    x.append('a' * 100000)",
    "string-doubling": "s = 'x'\nwhile True:\n    s = s + s",
    "dict": "d = {}\ni = 0\nwhile True:\n    d[i] = str(i) * 20\n    i += 1",
    "list-repeat": "[0] * (10 ** 9)",
    "bytes-repeat": "b'x' * (10 ** 9)",
    "str-join": "''.join(['y' * 1000000 for _ in range(1000)])",
}


@pytest.mark.deno
@pytest.mark.parametrize("name", sorted(BOMBS))
async def test_memory_bombs_end_with_the_memory_error_on_monty(conduit: Client, name: str) -> None:
    started = anyio.current_time()
    is_error, out = await run_py(conduit, BOMBS[name], engine="monty", limits={"memoryLimitMb": 64})
    assert (is_error, out["error"]["code"]) == (True, -32009), out
    assert anyio.current_time() - started < 5


@pytest.mark.deno
async def test_nothing_survives_from_one_monty_run_to_the_next(conduit: Client) -> None:
    writer = "leak = 'secret-from-run-1'\ndef helper():\n    return leak\nclass Kept:\n    value = leak\n1"
    assert (await run_py(conduit, writer, engine="monty"))[1]["result"] == 1
    is_error, out = await run_py(conduit, "import json\njson.leak = 'secret-from-run-1'", engine="monty")
    assert is_error, out  # modules cannot be changed at all
    for probe in ("leak", "helper()", "Kept.value", "import json\njson.leak", "_MISSING.leak"):
        is_error, out = await run_py(conduit, probe, engine="monty")
        assert is_error, out
        assert "secret-from-run-1" not in repr(out)


# -- the host's view -------------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


async def test_each_program_gets_a_fresh_walled_worker_that_dies_with_it(gateway: Gateway) -> None:
    runtime = gateway.runtimes["monty"]
    assert isinstance(runtime, MontyRuntime)
    walls = gateway.walls
    seen: list[int] = []
    for _ in range(3):
        sandbox = await runtime.prepare(gateway.limits.memory_limit_mb)
        pid = sandbox._pid  # type: ignore[attr-defined]
        seen.append(pid)
        view = _host_view(pid)
        assert view["environ"] == ""  # an empty environment
        if walls is not None and walls.landlock_abi:
            assert view["NoNewPrivs"] == "1"
        if walls is not None and walls.cgroups.available:
            assert f"sandbox-pid-{pid}" in view["cgroup"]  # born in its own cgroup
        outcome = await gateway.execute("python", "1", engine="monty")
        assert outcome.result == 1
        await sandbox.discard()
        with anyio.fail_after(5):
            await wait_until(lambda pid=pid: not process_alive(pid))
    assert len(set(seen)) == 3


async def test_a_cancelled_run_kills_its_worker(gateway: Gateway) -> None:
    before = _monty_pids()
    with anyio.move_on_after(1.0):
        await gateway.execute("python", "while True:\n    pass", engine="monty")
    with anyio.fail_after(5):
        await wait_until(lambda: not any(_spinning(pid) for pid in _monty_pids() - before))


def _host_view(pid: int) -> dict[str, str]:
    view = _status(pid)
    view["environ"] = Path(f"/proc/{pid}/environ").read_text()
    view["cgroup"] = Path(f"/proc/{pid}/cgroup").read_text()
    return view


def _monty_pids() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.path.basename(os.readlink(f"/proc/{entry}/exe")) == "monty":
                    pids.add(int(entry))
            except OSError:
                continue
    return pids


def _spinning(pid: int) -> bool:
    try:
        return _status(pid).get("State", "").startswith("R")
    except OSError:
        return False


async def test_the_checker_decides_without_running_the_program(gateway: Gateway) -> None:
    runtime, sdk = await _monty_and_sdk(gateway)
    # Were these run, they would fail; checked, they fit Monty (a type checker cannot know 1/0 fails).
    for program in ("1 / 0", "raise ValueError('ran')", "await tools.toolbox.crash()"):
        verdict = await runtime.check(program, sdk)
        assert verdict.fits, (program, verdict)
    for program, reason in (
        ("import sqlite3", "sqlite3"),
        ("dir(tools)", "dir"),
        ("await tools.toolbox.nope()", "nope"),
        ("(await tools.toolbox.add(a=1, b=2)).upper()", "upper"),
        ("def f():\n    yield 1", "yield"),
        ("x = (", "not parsed"),
    ):
        verdict = await runtime.check(program, sdk)
        assert not verdict.fits and reason in verdict.reason, (program, verdict)


async def test_replaced_checker_sessions_leave_no_worker_behind(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("conduit.sandbox.monty.check.CHECKS_PER_SESSION", 3)
    runtime, sdk = await _monty_and_sdk(gateway)

    async def check(index: int) -> None:
        assert (await runtime.check(f"{index} + 1", sdk)).fits

    for round_ in range(4):  # checks waiting while their session is replaced (every 3 checks)
        async with anyio.create_task_group() as tg:
            for index in range(5):
                tg.start_soon(check, 10 * round_ + index)
    # One SDK: one checker session, so one checker worker at most once the pool is full again.
    await wait_until(lambda: runtime.full and runtime.starting == 0 and len(_checker_workers(runtime)) <= 1)


async def _monty_and_sdk(gateway: Gateway) -> tuple[MontyRuntime, str]:
    """The gateway's Monty runtime, and the SDK of an execution that may call every tool."""
    runtime = gateway.runtimes["monty"]
    assert isinstance(runtime, MontyRuntime)
    return runtime, gateway._sdk("python", await gateway.visible_catalog(gateway.parse_allowlist(["*"]), MASTER_CALLER))


def _checker_workers(runtime: MontyRuntime) -> set[int]:
    """Monty processes of this test process that are not ready sandboxes of the pool: the checker's."""
    ready = {entry.sandbox._pid for entry in runtime._ready}  # type: ignore[attr-defined]
    me = str(os.getpid())
    return {pid for pid in _monty_pids() - ready if _status(pid).get("PPid") == me}


async def test_a_used_up_checker_session_is_replaced_by_a_warmed_spare(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("conduit.sandbox.monty.check.CHECKS_PER_SESSION", 6)
    monkeypatch.setattr("conduit.sandbox.monty.check.WARM_AHEAD", 3)
    runtime, sdk = await _monty_and_sdk(gateway)
    sdk += "\n# an SDK of its own: a checker session of its own\n"
    assert (await runtime.check("0", sdk)).fits
    checker = runtime.workers.checker
    assert checker is not None
    first = checker._sessions[sdk]  # type: ignore[attr-defined]
    assert first.checks == 1
    while first.checks < 5:
        assert (await runtime.check(f"{first.checks} + 1", sdk)).fits
    # The spare was opened in the background at 3 checks and warmed by one check of its own.
    await wait_until(lambda: sdk in checker._spares and checker._spares[sdk].ready)  # type: ignore[attr-defined]
    spare = checker._spares[sdk]  # type: ignore[attr-defined]
    assert (await runtime.check("6", sdk)).fits  # the sixth: the session is used up and replaced
    assert checker._sessions[sdk] is spare and first.session is None  # type: ignore[attr-defined]
    assert (await runtime.check("7", sdk)).fits
    assert spare.checks == 2  # the warming check and this one


# -- late stops and dead workers ----------------------------------------------------------------------------

WAITS = {
    "asyncio-sleep": "import asyncio\nawait asyncio.sleep(10**6)",
    "time-sleep": "import time\ntime.sleep(10**6)",
    "slow-tool-call": "await tools.toolbox.sleep(seconds=60)",
    "spin": "while True:\n    pass",
}


@pytest.fixture(scope="module")
async def pooled(anyio_backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """An in-process gateway whose Monty pool keeps workers ready, and a slow toolbox upstream."""
    config = Config.model_validate(
        {
            "upstreams": [{"id": "toolbox", "command": sys.executable, "args": [TOOLBOX], "timeoutMs": 120_000}],
            "maxConcurrent": 1,
            "pools": {
                "typescript": {"min": 0, "max": 0},
                "python": {"min": 0, "max": 0},
                "monty": {"min": 2, "max": 4},
            },
        }
    )
    base = tmp_path_factory.mktemp("pooled")
    async with open_gateway(config, master_token=MASTER, base_dir=base, host_env=dict(os.environ)) as gw:
        yield gw


def _monty(gateway: Gateway) -> MontyRuntime:
    runtime = gateway.runtimes["monty"]
    assert isinstance(runtime, MontyRuntime)
    return runtime


@pytest.mark.parametrize("wait", list(WAITS))
async def test_a_timed_out_run_answers_at_its_limit_whatever_it_waits_on(pooled: Gateway, wait: str) -> None:
    """The answer does not wait for the killed worker's current step (it once waited 5 s more for
    every wait but a spin); the precise figure is in ``bench/limit_ends.py``, this bound only tells a
    run that waits for the reap from one that does not, on a busy machine too."""
    outcome = await pooled.execute("python", WAITS[wait], engine="monty", limits={"timeoutMs": 2000})
    assert outcome.error is not None and outcome.error.code == -32008, outcome
    assert outcome.duration_ms < 2000 + 1500, outcome.duration_ms
    # maxConcurrent is 1: the slot is free again at once (a run that held it for the reap would queue this one)
    with anyio.fail_after(3):
        follow = await pooled.execute("python", "1 + 1", engine="monty")
    assert follow.result == 2


async def test_a_worker_killed_while_idle_is_never_handed_out(pooled: Gateway) -> None:
    runtime = _monty(pooled)
    with anyio.fail_after(30):
        await wait_until(lambda: runtime.idle >= 2)
    for entry in list(runtime._ready):  # type: ignore[attr-defined]
        os.kill(entry.sandbox._pid, signal.SIGKILL)  # dead, and a zombie until the library reaps it
    for _ in range(3):
        outcome = await pooled.execute("python", "40 + 2", engine="monty")
        assert (outcome.error, outcome.result) == (None, 42), outcome


async def test_a_worker_found_dead_before_its_program_started_runs_it_on_a_fresh_one(
    pooled: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that dies between the pool's check and the program's start (nothing of the program ran):
    the program runs once, on a fresh worker."""
    runtime = _monty(pooled)
    with anyio.fail_after(30):  # none starting: the next program takes one of the workers killed below
        await wait_until(lambda: runtime.idle >= 1 and runtime.starting == 0)
    monkeypatch.setattr(MontySandbox, "alive", property(lambda self: True))  # the race: dead after the check
    for entry in list(runtime._ready):  # type: ignore[attr-defined]
        os.kill(entry.sandbox._pid, signal.SIGKILL)
        with anyio.fail_after(5):
            await wait_until(lambda pid=entry.sandbox._pid: has_exited(pid))
    outcome = await pooled.execute("python", "print('once')\n40 + 2", engine="monty")
    assert (outcome.error, outcome.result, outcome.stdout) == (None, 42, "once\n"), outcome
    assert "dead before its program started" in caplog.text


async def test_runs_after_quiet_spells_find_a_live_worker(pooled: Gateway) -> None:
    """The first program after a quiet spell once met a worker killed while it waited (SIGKILL)."""
    for quiet in (0.5, 3, 11, 1):
        await anyio.sleep(quiet)
        outcome = await pooled.execute("python", "1 + 1", engine="monty")
        assert (outcome.error, outcome.result) == (None, 2), (quiet, outcome)
