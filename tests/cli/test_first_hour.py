"""A new user's first hour: what each mistake they make is told, through the real CLI and server.

Each test makes one mistake a new user made (a busy port, a misspelt upstream command, no token, no config
file, a tool name the run does not have, ...) and asserts the exact line they see, so that a traceback or
a message that points at Conduit instead of at what to do cannot come back.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest

from support import (
    CANCEL,
    CONDUIT,
    EXECUTE_TS,
    INITIALIZE,
    TOOLBOX,
    ConduitHttp,
    run_code,
    start_background,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.deno, pytest.mark.e2e]

EXAMPLES = Path(__file__).parents[2] / "examples"
TOKEN_ENV = {**os.environ, "IPC_BEARER_TOKEN": "first-hour-token-0123456789"}


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CONDUIT, *args], capture_output=True, text=True, cwd=cwd, env=env or TOKEN_ENV, input=stdin, timeout=120
    )


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# 1. a port in use -------------------------------------------------------------------------------------------


def test_a_busy_mcp_port_is_one_line_naming_it_and_the_flag(tmp_path: Path, busy_port: int) -> None:
    write_config(tmp_path, {"upstreams": []})
    done = cli("serve", "--port", str(busy_port), "--ops-port", "0", cwd=tmp_path)
    assert done.returncode == 2
    assert last_line(done.stderr) == (
        f"conduit: cannot listen on 127.0.0.1:{busy_port} for the MCP endpoint: address already in use; "
        "move it with --port N (port: in the config, PORT in the environment; 0 picks a free port)"
    )
    assert "Traceback" not in done.stderr


def test_a_busy_ops_port_names_ops_port_and_no_ops(tmp_path: Path, busy_port: int) -> None:
    write_config(tmp_path, {"upstreams": []})
    done = cli("serve", "--port", "0", "--ops-port", str(busy_port), cwd=tmp_path)
    assert done.returncode == 2
    assert last_line(done.stderr) == (
        f"conduit: cannot listen on 127.0.0.1:{busy_port} for the ops endpoints (/live, /ready, /health, /metrics): "
        "address already in use; move it with --ops-port N (opsPort: in the config, OPS_PORT in the environment), "
        "or turn them off: --no-ops"
    )
    assert "Traceback" not in done.stderr


@pytest.mark.anyio
async def test_no_ops_serves_mcp_with_the_ops_port_busy(tmp_path: Path, busy_port: int) -> None:
    write_config(tmp_path, {"upstreams": [], "opsPort": busy_port})
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = await anyio.open_process(
            [CONDUIT, "serve", "--port", "0", "--no-ops"], cwd=tmp_path, env=TOKEN_ENV, stderr=sink
        )
    try:
        with anyio.fail_after(60):
            await wait_until(lambda: "Conduit listening on " in log.read_text())
        url = log.read_text().split("Conduit listening on ", 1)[1].split()[0]
        server = ConduitHttp(url=url, token=TOKEN_ENV["IPC_BEARER_TOKEN"], process=process, log=log)
        async with server.client() as client:
            failed, outcome = await run_code(client, EXECUTE_TS, "return 1;")
        assert (failed, outcome["result"]) == (False, 1)
        assert "Conduit ops on" not in log.read_text()
    finally:
        process.terminate()
        await process.wait()


# 2. an upstream that cannot start ---------------------------------------------------------------------------


def test_a_misspelt_upstream_keeps_its_namespace_and_says_why(tmp_path: Path) -> None:
    write_config(tmp_path, {"upstreams": [{"id": "time", "command": "mcp-server-tyme"}]})
    caught = "try { await tools.time.get_current_time({}); } catch (e) { return [e.code, e.message]; }"
    done = cli("run", "-", "--lang", "ts", cwd=tmp_path, stdin=caught)
    assert json.loads(done.stdout) == [-32005, "upstream 'time' is unavailable: command not found: 'mcp-server-tyme'"]
    done = cli("run", "-", "--lang", "py", cwd=tmp_path, stdin="await tools.time.get_current_time()")
    assert last_line(done.stderr).startswith(
        "conduit: package 'time' is unavailable: upstream 'time' is unavailable: command not found: 'mcp-server-tyme'"
    )


def test_an_upstream_that_exits_at_start_is_quoted(tmp_path: Path) -> None:
    script = "import sys; print('fatal: no API key set', file=sys.stderr); sys.exit(4)"
    write_config(tmp_path, {"upstreams": [{"id": "quitter", "command": sys.executable, "args": ["-c", script]}]})
    caught = "try { await tools.quitter.anything({}); } catch (e) { return e.message; }"
    done = cli("run", "-", "--lang", "js", cwd=tmp_path, stdin=caught)
    assert (
        json.loads(done.stdout)
        == "upstream 'quitter' is unavailable: exited with status 4; its stderr: fatal: no API key set"
    )


def test_conduit_tools_shows_an_upstreams_stderr_under_its_id(tmp_path: Path) -> None:
    chatty = (
        "import runpy, sys; print('chatty: starting up', file=sys.stderr, flush=True); "
        f"runpy.run_path({TOOLBOX!r}, run_name='__main__')"
    )
    write_config(tmp_path, {"upstreams": [{"id": "chatty", "command": sys.executable, "args": ["-c", chatty]}]})
    listed = cli("tools", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "[chatty] chatty: starting up" in listed.stderr


KILLED = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"


@pytest.mark.anyio
async def test_why_an_upstream_is_down_is_in_the_packages_health_and_tools(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"upstreams": [{"id": "killed", "command": sys.executable, "args": ["-c", KILLED]}]}
    )
    why = "upstream 'killed' is unavailable: was killed by SIGKILL"  # not the shell's "Killed" as its stderr
    listed = cli("tools", cwd=tmp_path)
    assert listed.returncode == 1 and listed.stdout.strip() == "killed  (unavailable)"
    assert "conduit: upstream 'killed' could not be listed: was killed by SIGKILL" in listed.stderr.splitlines()
    async with ConduitHttp.start(config) as server, server.client() as client:
        packages = await client.call_tool("conduit__mcp_list_tool_packages", {})
        assert packages.structured_content is not None
        [package] = [p for p in packages.structured_content["packages"] if p["packageId"] == "killed"]
        assert (package["status"], package["reason"]) == ("unavailable", why)
        async with httpx2.AsyncClient() as http:
            health = (await http.get(f"{server.ops_url}/health")).json()
        assert health["upstreams"]["killed"] == {"status": "failing", "reason": "was killed by SIGKILL"}


# 4. no token --------------------------------------------------------------------------------------------------


def test_run_against_a_server_without_a_token_says_how_to_give_one(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "IPC_BEARER_TOKEN"}
    done = cli("run", "-", "--lang", "js", "--url", "http://127.0.0.1:9/mcp", cwd=tmp_path, env=env, stdin="return 1")
    assert done.returncode == 2
    assert done.stderr.strip() == "conduit: no token: set IPC_BEARER_TOKEN or pass --token"


@pytest.mark.anyio
async def test_a_generated_token_is_printed_with_how_to_use_it(tmp_path: Path) -> None:
    write_config(tmp_path, {"upstreams": [], "opsEnabled": False})
    env = {key: value for key, value in os.environ.items() if key != "IPC_BEARER_TOKEN"}
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = await anyio.open_process([CONDUIT, "serve", "--port", "0"], cwd=tmp_path, env=env, stderr=sink)
    try:
        with anyio.fail_after(60):
            await wait_until(lambda: "Conduit listening on" in log.read_text())
    finally:
        process.terminate()
        await process.wait()
    lines = log.read_text().splitlines()
    first = next(index for index, line in enumerate(lines) if line.startswith("Conduit master token: "))
    assert (
        lines[first + 1]
        == "  send it as 'Authorization: Bearer <token>' (conduit run --url: IPC_BEARER_TOKEN or --token);"
    )
    assert lines[first + 2] == "  it changes at every start: set IPC_BEARER_TOKEN or ipcBearerToken to keep one"


# 5. no config file; a pattern that matches nothing ------------------------------------------------------------


def test_no_config_file_is_said_and_an_unmatched_pattern_warned(tmp_path: Path) -> None:
    done = cli("run", str(EXAMPLES / "stock_report.py"), "--allow", "catalog.*", cwd=tmp_path)
    lines = done.stderr.splitlines()
    assert lines[0] == (
        f"conduit: no config file found (conduit.yaml, conduit.yml, conduit.json in {tmp_path}; CONFIG_FILE unset): "
        "no upstreams, so programs see no tools; pass --config PATH"
    )
    assert (
        "conduit: warning: allowedTools pattern 'catalog.*' matches no upstream this run can use (upstreams here: none)"
        in lines
    )
    assert "conduit: no package 'catalog' for this run" in done.stderr


# 6. help and docs that run as written ----------------------------------------------------------------------


# The help texts' examples and the README's tour, each run as written: tests/cli/test_docs_commands.py.


# 8. every started execution ends with one record -------------------------------------------------------------


SPIN = {"name": EXECUTE_TS, "arguments": {"code": "while (true) {}"}}
HEADERS = {"Accept": "application/json, text/event-stream"}


def ends(log: str) -> tuple[list[str], list[str], list[str]]:
    """The execution ids started, and the outcomes of the end records and audit records, in ``log``."""
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    started = [r["execution_id"] for r in records if r["message"] == "execution started"]
    ended = [r["outcome"] for r in records if r["message"] == "execution ended"]
    audited = [r["outcome"] for r in records if r["message"] == "execution" and r["logger"] == "conduit.audit"]
    return started, ended, audited


async def raw_session(http: httpx2.AsyncClient, url: str) -> dict[str, str]:
    """Headers of a fresh MCP session over raw HTTP (initialized)."""
    opened = await http.post(url, json=INITIALIZE, headers=HEADERS)
    headers = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
    await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    return headers


async def spin_then(server: ConduitHttp, end: str) -> None:
    """Start a spinning program on a raw session, then end it the way ``end`` says."""
    token = {"Authorization": f"Bearer {server.token}"}
    async with httpx2.AsyncClient(headers=token, timeout=60) as http:
        headers = await raw_session(http, server.url)
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": SPIN}
        async with anyio.create_task_group() as tg:

            async def calling() -> None:
                async with httpx2.AsyncClient(headers=token, timeout=60) as own:  # its own connection, to drop
                    await own.post(server.url, json=call, headers=headers)

            tg.start_soon(calling)
            with anyio.fail_after(30):
                await wait_until(lambda: "execution started" in server.log.read_text())
            if end == "client gone":
                tg.cancel_scope.cancel()  # the connection of the call is dropped mid-run
            else:
                notice = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}
                await http.post(server.url, json=notice, headers=headers)


@pytest.mark.anyio
@pytest.mark.parametrize("approvals", [False, True], ids=["direct", "as a run"])  # a rule: every run is attended
@pytest.mark.parametrize(("end", "outcome"), [("client gone", "client_gone"), ("cancel", "cancelled")])
async def test_a_run_ended_over_http_logs_one_end_and_one_audit_record(
    tmp_path: Path, end: str, outcome: str, approvals: bool
) -> None:
    rules = [{"tools": ["payments.refund"]}] if approvals else []
    config = write_config(tmp_path, {"upstreams": [], "approvals": rules})
    async with ConduitHttp.start(config) as server:
        await spin_then(server, end)
        with anyio.fail_after(30):
            await wait_until(lambda: "execution ended" in server.log.read_text())
        await anyio.sleep(0.3)  # a second end record would come now
        started, ended, audited = ends(server.log.read_text())
    assert len(started) == 1 and ended == audited == [outcome]


@pytest.mark.anyio
@pytest.mark.parametrize(("end", "outcome"), [("stdin closed", "client_gone"), ("SIGTERM", "stopped")])
async def test_a_run_ended_over_stdio_logs_one_end_and_one_audit_record(tmp_path: Path, end: str, outcome: str) -> None:
    config = write_config(tmp_path, {"upstreams": []})
    log = tmp_path / "stderr.log"
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": SPIN}
    with log.open("wb") as sink:
        process = await anyio.open_process(
            [CONDUIT, "serve", "--stdio", "--config", str(config)], env=TOKEN_ENV, stderr=sink
        )
    async with process:
        assert process.stdin is not None
        for message in (INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}, call):
            await process.stdin.send((json.dumps(message) + "\n").encode())
        with anyio.fail_after(30):
            await wait_until(lambda: "execution started" in log.read_text())
        if end == "stdin closed":
            await process.stdin.aclose()
        else:
            process.terminate()
        with anyio.fail_after(30):
            await process.wait()
    started, ended, audited = ends(log.read_text())
    assert len(started) == 1 and ended == audited == [outcome]


@pytest.mark.anyio
async def test_a_cancelled_background_run_logs_one_end_and_one_audit_record(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"upstreams": []})
    async with ConduitHttp.start(config) as server, server.client() as client:
        execution_id = await start_background(client, "while (true) {}")
        with anyio.fail_after(30):
            await wait_until(lambda: "execution started" in server.log.read_text())
        await client.call_tool(CANCEL, {"executionId": execution_id})
        with anyio.fail_after(30):
            await wait_until(lambda: "execution ended" in server.log.read_text())
        started, ended, audited = ends(server.log.read_text())
    assert len(started) == 1 and ended == audited == ["cancelled"]


# 9. a tool the run does not have -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lang", "code", "expected"),
    [
        (
            "js",
            "return await tools.catalog.get_stok({sku: 'x'});",
            "conduit: no tool 'get_stok' in package 'catalog' for this run (unknown or not allowed); "
            "see conduit__mcp_search_tools; closest: tools.catalog.get_stock",
        ),
        (
            "ts",
            "return await tools.katalog.get_stock({sku: 'x'});",
            "conduit: no package 'katalog' for this run (no such upstream, or not allowed); "
            "see conduit__mcp_search_tools; closest: catalog",
        ),
        (
            "py",
            "await tools.catalog.get_stok(sku='x')",
            "conduit: no tool 'get_stok' in package 'catalog' for this run (unknown or not allowed); "
            "see conduit__mcp_search_tools; closest: tools.catalog.get_stock",
        ),
    ],
)
def test_a_missing_tool_says_so_with_the_closest_names(lang: str, code: str, expected: str) -> None:
    done = cli("run", "-", "--lang", lang, "--config", str(EXAMPLES / "demo.yaml"), stdin=code)
    assert last_line(done.stderr).startswith(expected + " (")


def test_a_forbidden_tool_is_told_apart_from_nothing_and_named_nowhere() -> None:
    code = "return await tools.catalog.get_stock({sku: 'x'});"
    done = cli("run", "-", "--lang", "js", "--config", str(EXAMPLES / "demo.yaml"), "--allow", "time.*", stdin=code)
    assert last_line(done.stderr).startswith(
        "conduit: no package 'catalog' for this run (no such upstream, or not allowed)"
    )
    assert "get_stock'" not in last_line(done.stderr).split(" (", 1)[0]


# 10. the smaller things ------------------------------------------------------------------------------------------


def test_version_and_completion() -> None:
    assert cli("--version").stdout.startswith("conduit ")
    script = cli("completion", "bash").stdout
    probe = f'{script}\nCOMP_WORDS=(conduit se); COMP_CWORD=1; _conduit; echo "${{COMPREPLY[@]}}"\n'
    probe += 'COMP_WORDS=(conduit serve --no); COMP_CWORD=2; _conduit; echo "${COMPREPLY[@]}"\n'
    completed = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert completed.stdout.splitlines() == ["serve", "--no-ops"]
    assert "complete -c conduit -n '__fish_seen_subcommand_from serve' -l ops-port" in cli("completion", "fish").stdout
    assert cli("completion", "zsh").stdout.startswith("autoload -U +X bashcompinit && bashcompinit\n")


@pytest.mark.anyio
async def test_the_ops_root_links_the_endpoints(tmp_path: Path) -> None:
    async with ConduitHttp.start(write_config(tmp_path, {"upstreams": []})) as server:
        async with httpx2.AsyncClient(timeout=10) as http:
            page = await http.get(f"{server.ops_url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for path in ("/health", "/metrics", "/ready", "/live"):
        assert f'href="{path}"' in page.text


# 3. errors point at the program ---------------------------------------------------------------------------------

FAULTY = {
    "syntax": {"ts": "const a = 1;\nconst x = {;\n", "js": "const a = 1;\nconst x = {;\n", "py": "a = 1\nx = {;\n"},
    "thrown": {
        "ts": "const a = 1;\nthrow new Error('boom');\n",
        "js": "const a = 1;\nthrow new Error('boom');\n",
        "py": "a = 1\nraise ValueError('boom')\n",
    },
    "first line": {"ts": "nope();\n", "js": "nope();\n", "py": "nope()\n"},
    "tool error": {  # thrown by the SDK when the call's answer comes: the program's line, not the SDK's
        "ts": "const a = 1;\nawait tools.$raw('catalog__nope', {});\n",
        "js": "const a = 1;\nawait tools.$raw('catalog__nope', {});\n",
        "py": "a = 1\nawait tools.raw('catalog__nope', {})\n",
    },
}
RUNTIMES = {
    "ts": ["--lang", "ts"],
    "js": ["--lang", "js"],
    "monty": ["--lang", "py", "--engine", "monty"],
    "pyodide": ["--lang", "py", "--engine", "pyodide"],
}


@pytest.mark.parametrize("runtime", list(RUNTIMES))
@pytest.mark.parametrize("fault", list(FAULTY))
def test_errors_name_the_programs_own_line_and_nothing_of_the_wrapper(fault: str, runtime: str) -> None:
    lang = runtime if runtime in ("ts", "js") else "py"
    code = FAULTY[fault][lang]
    done = cli("run", "-", *RUNTIMES[runtime], "--config", str(EXAMPLES / "demo.yaml"), stdin=code)
    assert done.returncode != 0
    row = 1 if fault == "first line" else 2
    wanted = {"ts": f"program.ts:{row}:", "js": f"program.js:{row}", "py": f'File "program.py", line {row}'}[lang]
    assert wanted in done.stderr, done.stderr
    for wrapper in (
        "export default (async",
        "__conduitRunner",
        "TypeError: SyntaxError",
        "program.ts:4",
        "program.js:4",
        "tools.ts",  # the SDK's frames
        "tools.js",
        "prelude",
        "<exec>",
        "_pyodide",
    ):
        assert wrapper not in done.stderr, (wrapper, done.stderr)
    source_line = code.split("\n")[row - 1].strip()
    if lang != "py" and fault != "syntax":
        assert f"(at {wanted}" in last_line(done.stderr) and f": {source_line})" in last_line(done.stderr)
    elif lang == "py":  # a traceback that quotes the line, under its place
        lines = done.stderr.splitlines()
        assert lines[lines.index(next(line for line in lines if wanted in line)) + 1].strip() == source_line
