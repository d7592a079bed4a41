"""Operators' view: /health and /metrics over real HTTP, progress notifications, cancellation."""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from support import (
    CONDUIT,
    EXECUTE_ISOLATE,
    EXECUTE_PYTHON,
    EXECUTE_TS,
    INITIALIZE,
    ConduitHttp,
    children,
    descendants,
    run_js,
    run_ts,
    scrape,
    stat_fields,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]


@pytest.fixture(scope="module")
async def server(
    anyio_backend: str, tmp_path_factory: pytest.TempPathFactory, toolbox_command: dict[str, Any]
) -> AsyncIterator[ConduitHttp]:
    config = write_config(
        tmp_path_factory.mktemp("ops"),
        {
            "upstreams": [{"id": "toolbox", **toolbox_command}],
            "pools": {"typescript": {"min": 0, "max": 0}, "python": {"min": 0, "max": 0}},
            "maxConcurrent": 2,
        },
    )
    async with ConduitHttp.start(config) as running:
        yield running


async def test_health_reports_runtimes_and_upstreams(server: ConduitHttp) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.get(f"{server.ops_url}/health")
    assert response.status_code == 200
    report = response.json()
    assert report["status"] == "ok"
    assert {name: entry["status"] for name, entry in report["runtimes"].items()} == {
        "typescript": "ok",
        "python": "ok",
        "isolate": "ok",
        "monty": "ok",
    }
    assert report["upstreams"]["toolbox"]["status"] in ("idle", "connected")


async def test_metrics_change_as_executions_run(server: ConduitHttp) -> None:
    before = await scrape(server)
    async with server.client() as client:
        assert not (await run_ts(client, "await tools.toolbox.echo({text: 'x'}); return 1;"))[0]
        assert (await run_ts(client, "while (true) {}", limits={"timeoutMs": 300}))[0]
        assert not (await run_js(client, "return 2;"))[0]
        assert (
            await run_js(
                client,
                "try { await tools.$raw('toolbox__add', {a: 1, b: 2}); } catch (e) { throw e; }",
                allowedTools=["toolbox.echo"],
            )
        )[0]
    after = await scrape(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("conduit_executions_total", runtime="typescript", outcome="ok") == 1
    assert delta("conduit_executions_total", runtime="typescript", outcome="timeout") == 1
    assert delta("conduit_executions_total", runtime="isolate", outcome="ok") == 1
    assert delta("conduit_executions_total", runtime="isolate", outcome="program_error") == 1
    assert delta("conduit_tool_calls_total", upstream="toolbox", outcome="ok") == 1
    assert delta("conduit_tool_calls_total", upstream="toolbox", outcome="denied") == 1
    assert delta("conduit_execution_duration_seconds_count", runtime="typescript") == 2
    assert delta("conduit_tool_call_duration_seconds_count", upstream="toolbox") == 2
    assert after[("conduit_upstream_connected", (("upstream", "toolbox"),))] == 1
    assert after[("conduit_executions_running", ())] == 0
    assert after[("conduit_queue_depth", ())] == 0
    assert ("conduit_sandboxes_pooled", (("runtime", "isolate"),)) in after


async def test_health_is_503_with_reasons_when_a_runtime_or_upstream_fails(
    tmp_path: Path, toolbox_command: dict[str, Any]
) -> None:
    config = write_config(
        tmp_path,
        {
            "pyodidePath": str(tmp_path / "no-pyodide"),
            "pools": {"python": {"min": 0, "max": 0}},
            "upstreams": [{"id": "broken", "command": str(tmp_path / "no-such-server")}],
        },
    )
    async with ConduitHttp.start(config) as running:
        async with running.client() as client:
            await client.list_tools()  # tries the upstream, which fails
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.get(f"{running.ops_url}/health")
    assert response.status_code == 503
    report = response.json()
    assert report["runtimes"]["python"]["status"] == "unavailable"
    assert "make setup" in report["runtimes"]["python"]["reason"]
    assert report["upstreams"]["broken"]["status"] == "failing"
    assert report["runtimes"]["typescript"]["status"] == "ok"


@pytest.mark.parametrize(
    ("tool", "code"),
    [
        (EXECUTE_TS, 'console.log("one");\nawait new Promise((r) => setTimeout(r, 800));\nconsole.error("two");'),
        (
            EXECUTE_PYTHON,
            'import asyncio\nprint("one", flush=True)\nawait asyncio.sleep(0.8)\nimport sys\n'
            'print("two", file=sys.stderr, flush=True)',
        ),
    ],
)
async def test_output_streams_as_progress_notifications(server: ConduitHttp, tool: str, code: str) -> None:
    received: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        received.append((time.monotonic(), message))

    async with server.client() as client:
        result = await client.call_tool(tool, {"code": code}, progress_callback=on_progress)
        finished = time.monotonic()
    assert not result.is_error, result
    assert [message for _, message in received] == ["one", "[stderr] two"]
    assert received[0][0] < finished - 0.5  # the first line arrived while the program was still running


SPIN_CPU_S = 0.5
"""CPU time a process gains while watched that marks it as the spinning program: a pool sandbox that is
starting, an idle one or a checker session gains a few milliseconds."""


class SpinWatch:
    """Finds the child processes of ``parent`` (command line containing ``marker``) that spin: each
    one's CPU time is taken when first seen, and a process is spinning once it has gained
    ``SPIN_CPU_S`` of CPU since then. Being in state R in one or two samples is not enough: on a
    loaded machine a sandbox the pool is starting is running for a while too, then stays alive."""

    def __init__(self, parent: int, marker: str) -> None:
        self.parent, self.marker = parent, marker
        self.first_seen: dict[int, float] = {}

    def sample(self) -> set[int]:
        spinning = set()
        for pid in children(self.parent, self.marker):
            try:
                fields = stat_fields(Path(f"/proc/{pid}/stat"))
                cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError):
                continue
            if cpu - self.first_seen.setdefault(pid, cpu) >= SPIN_CPU_S:
                spinning.add(pid)
        return spinning


@pytest.mark.parametrize(
    ("tool", "code", "marker"),
    [
        (EXECUTE_TS, "while (true) {}", "deno_harness.js"),
        (EXECUTE_PYTHON, "while True:\n    pass", "pyodide_harness.js"),
        (EXECUTE_PYTHON, "while True:\n    pass", "monty"),
        (EXECUTE_ISOLATE, "while (true) {}", "isolate_worker"),
    ],
    ids=["typescript", "pyodide", "monty", "isolate"],
)
async def test_cancelling_a_spinning_program_kills_its_sandbox_and_frees_the_slot(
    server: ConduitHttp, tool: str, code: str, marker: str
) -> None:
    arguments: dict[str, Any] = {"code": code, "limits": {"timeoutMs": 60_000}}
    if tool == EXECUTE_PYTHON:
        arguments["engine"] = "monty" if marker == "monty" else "pyodide"
    async with server.client() as client:
        spinning: set[int] = set()
        with anyio.move_on_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, tool, arguments)
                watch = SpinWatch(server.process.pid, marker)
                while not spinning:
                    await anyio.sleep(0.05)
                    spinning = await anyio.to_thread.run_sync(watch.sample)
                cancelled_at = time.monotonic()
                tg.cancel_scope.cancel()
        assert spinning, "the program never started spinning"

        def still_alive() -> set[int]:
            return {pid for pid in spinning if Path(f"/proc/{pid}").exists()}

        await wait_until(lambda: not still_alive(), interval=0.01)
        gone_after = time.monotonic() - cancelled_at
        assert gone_after < 1.0, f"sandbox still alive {gone_after:.3f} s after cancellation"
        # Both slots are free again: two executions run at once without queueing behind the cancelled one.
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(run_ts, client, "return 1;")
    samples = await scrape(server)
    assert samples[("conduit_executions_running", ())] == 0


async def test_a_dropped_http_client_gets_its_execution_killed_and_its_slot_freed(server: ConduitHttp) -> None:
    headers = {
        "Authorization": f"Bearer {server.token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    spin = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": EXECUTE_TS, "arguments": {"code": "while (true) {}", "limits": {"timeoutMs": 60_000}}},
    }
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(server.url, headers=headers, json=INITIALIZE)
        headers["mcp-session-id"] = response.headers["mcp-session-id"]
        await http.post(server.url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    spinning: set[int] = set()
    watch = SpinWatch(server.process.pid, "deno_harness.js")
    dropping = httpx2.AsyncClient(timeout=30)
    async with dropping.stream("POST", server.url, headers=headers, json=spin) as streaming:
        assert streaming.status_code == 200
        with anyio.fail_after(20):
            while not spinning:
                await anyio.sleep(0.05)
                spinning = await anyio.to_thread.run_sync(watch.sample)
    await dropping.aclose()  # the connection goes away without a response or a cancellation
    dropped_at = time.monotonic()
    await wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in spinning), interval=0.01)
    gone_after = time.monotonic() - dropped_at
    assert gone_after < 1.0, f"sandbox still alive {gone_after:.3f} s after the client went away"
    async with server.client() as client:
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(run_ts, client, "return 1;")
    samples = await scrape(server)
    assert samples[("conduit_executions_running", ())] == 0
    assert samples[("conduit_executions_total", (("outcome", "cancelled"), ("runtime", "typescript")))] >= 1


async def test_invalid_arguments_stay_invalid_params_when_progress_is_requested(server: ConduitHttp) -> None:
    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        return None

    async with server.client() as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool(
                EXECUTE_TS, {"code": "return 1", "allowedTools": ["bad!"]}, progress_callback=on_progress
            )
    assert caught.value.error.code == -32602
    assert "invalid allowlist pattern" in caught.value.error.message


async def test_each_tool_call_gets_one_audit_record_without_arguments_or_results(server: ConduitHttp) -> None:
    canary = "audit-canary-7f3a9c"
    code = f'await tools.toolbox.echo({{text: "{canary}"}});\ntry {{ await tools.toolbox.fail({{}}); }} catch {{}}\n'
    async with server.client() as client:
        is_error, out = await run_ts(client, code + "return 1;", allowedTools=["toolbox.echo", "toolbox.fail"])
        assert not is_error, out
        forbidden = "try { await tools.$raw('toolbox__add', {a: 1, b: 2}); } catch {}"
        denied, _ = await run_ts(client, forbidden, allowedTools=[])
    log = server.log.read_text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    started = [r for r in records if r["message"] == "execution started"][-2:]
    audit = [
        r
        for r in records
        if r["logger"] == "conduit.audit"
        and r["message"] == "tool call"
        and r["execution_id"] in {s["execution_id"] for s in started}
    ]
    assert [(r["tool"], r["outcome"]) for r in audit] == [
        ("toolbox__echo", "ok"),
        ("toolbox__fail", "tool_error"),
        ("toolbox__add", "denied"),
    ]
    assert audit[0]["execution_id"] == started[0]["execution_id"]
    assert audit[2]["execution_id"] == started[1]["execution_id"]
    assert all(isinstance(r["duration_ms"], float | int) for r in audit)
    assert canary not in log


@pytest.mark.parametrize("endpoint", ["ops", "mcp"])
async def test_requests_on_a_kept_alive_connection_do_not_wait_for_delayed_acks(
    server: ConduitHttp, endpoint: str
) -> None:
    # Without TCP_NODELAY on the accepted connections, every request after a connection's first waited
    # ~40 ms for the client's delayed ACK before the rest of the response was sent.
    url = f"{server.ops_url}/health" if endpoint == "ops" else server.url
    headers = {"Authorization": f"Bearer {server.token}"}
    async with httpx2.AsyncClient(timeout=10, headers=headers) as http:
        taken = []
        for _ in range(15):
            started = time.perf_counter()
            await http.get(url)  # one connection, kept alive
            taken.append(time.perf_counter() - started)
    assert sorted(taken)[len(taken) // 2] < 0.02, taken


async def test_the_uid_wall_has_one_truthful_account_in_the_log_health_and_doctor(server: ConduitHttp) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        health = (await http.get(f"{server.ops_url}/health")).json()
    wall = health["isolation"]["unprivileged-uid"]
    records = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    logged = [record["message"] for record in records if record["message"].startswith("sandbox uids: ")]
    assert logged == [f"sandbox uids: {wall['detail']}"]
    config = server.log.parent / "conduit.yaml"
    doctor = await anyio.run_process([CONDUIT, "doctor", "--config", str(config)], check=False)
    said = [line for line in doctor.stdout.decode().splitlines() if "isolation unprivileged-uid" in line]
    assert len(said) == 1, doctor.stdout.decode()
    assert said[0].split(": ", 1)[1] == wall["detail"]
    assert said[0].startswith("ok ") == wall["active"]
    assert "run as root" not in server.log.read_text()  # the false line it once logged at every start
    if os.geteuid() != 0:
        assert "not root" in wall["detail"]
        return
    # Root: what the account says is what the processes are. Isolate workers start as root, load V8 and
    # drop to the sandbox uid before they report ready; the one running a program (the spinning one, with
    # by far the most CPU time after a while) runs as that uid.
    assert "isolate: uid 65534 before any program" in wall["detail"], wall
    async with server.client() as client, anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(run_js, client, "while (true) {}", limits={"timeoutMs": 4000}))
        await anyio.sleep(2.5)
        workers = [pid for pid in descendants(server.process.pid) if "isolate_worker" in _cmdline(pid)]
        busiest = max(workers, key=_cpu_ticks)
        assert _cpu_ticks(busiest) > 100  # > 1 s of CPU: the program's worker
        assert _uids(busiest) == ["65534"] * 4


def _cpu_ticks(pid: int) -> int:
    try:
        fields = stat_fields(Path(f"/proc/{pid}/stat"))
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def _uids(pid: int) -> list[str]:
    """Real, effective, saved and file-system uid of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(line for line in status if line.startswith("Uid:")).split()[1:]


def _state(pid: int) -> str:
    try:
        return stat_fields(Path(f"/proc/{pid}/stat"))[0]
    except OSError:
        return "gone"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
