"""The Deno runtime on its own: process hygiene, single use, the environment it gets."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from conduit.config.schema import Limits
from conduit.core.gateway import Gateway
from conduit.errors import TIMEOUT, SandboxStartError
from conduit.sandbox.base import BridgeAddress, Job
from conduit.sandbox.deno.runtime import DenoLauncher, DenoSandbox
from conduit.sandbox.host.pool import PooledRuntime
from conduit.sdk.typescript import generate_deno_sdk
from support import process_alive, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.deno]

LIMITS = Limits(timeout_ms=5000, memory_limit_mb=128, max_output_bytes=100_000, max_log_entries=1000)
SHORT = Limits(timeout_ms=800, memory_limit_mb=128, max_output_bytes=10_000, max_log_entries=100)
SDK = generate_deno_sdk([])


def proc_file(pid: int, name: str) -> list[bytes]:
    return Path(f"/proc/{pid}/{name}").read_bytes().split(b"\0")


async def prepare(gateway: Gateway) -> DenoSandbox:
    pool = gateway.runtimes["typescript"]
    assert isinstance(pool, PooledRuntime) and isinstance(pool.launcher, DenoLauncher)
    return await pool.launcher.prepare(LIMITS.memory_limit_mb)


async def test_sandbox_started_ahead_waits_for_its_job_then_runs_it(gateway: Gateway) -> None:
    sandbox = await prepare(gateway)
    await anyio.sleep(0.5)  # started ahead of demand, idle
    assert process_alive(sandbox.pid)
    outcome = await sandbox.run(Job("return 'ready';", SDK, "no-token", LIMITS))
    assert outcome.result == "ready"
    # Killed when its record arrived; reaped in the background rather than before the run returns.
    await wait_until(lambda: not process_alive(sandbox.pid))


async def test_a_sandbox_runs_exactly_one_program(gateway: Gateway) -> None:
    sandbox = await prepare(gateway)
    await sandbox.run(Job("return 1;", SDK, "t", LIMITS))
    with pytest.raises(SandboxStartError):
        await sandbox.run(Job("return 2;", SDK, "t", LIMITS))


async def test_a_job_larger_than_one_stdin_read_arrives_whole(gateway: Gateway) -> None:
    # The harness reads its job in 64 KiB reads; a program of several reads must arrive intact.
    sandbox = await prepare(gateway)
    text = "".join(chr(0x41 + i % 26) for i in range(200_000))
    outcome = await sandbox.run(Job(f"const s = {text!r}; return [s.length, s.slice(-3)];", SDK, "t", LIMITS))
    assert outcome.error is None
    assert outcome.result == [200_000, text[-3:]]


async def test_discard_kills_an_unused_sandbox(gateway: Gateway) -> None:
    sandbox = await prepare(gateway)
    assert process_alive(sandbox.pid)
    await sandbox.discard()
    assert not process_alive(sandbox.pid)


async def test_timeout_leaves_no_process_behind(gateway: Gateway) -> None:
    sandbox = await prepare(gateway)
    code = "new Worker(URL.createObjectURL(new Blob(['while(true){}'])), {type: 'module'}); while (true) {}"
    outcome = await sandbox.run(Job(code, SDK, "t", SHORT))
    assert outcome.error is not None and outcome.error.code == TIMEOUT
    assert not process_alive(sandbox.pid)


async def test_sandbox_environment_is_empty_but_for_deno_settings(gateway: Gateway) -> None:
    sandbox = await prepare(gateway)
    try:
        # Right after the spawn the child may not have exec'd Deno yet; read its environment once it has.
        await wait_until(lambda: any(arg.startswith(b"--allow-net") for arg in proc_file(sandbox.pid, "cmdline")))
        environ = proc_file(sandbox.pid, "environ")
        names = sorted(entry.split(b"=", 1)[0].decode() for entry in environ if entry)
        assert names == ["DENO_DIR", "DENO_NO_UPDATE_CHECK", "HOME", "NO_COLOR"]
        cmdline = proc_file(sandbox.pid, "cmdline")
        address = gateway.bridge.address
        assert address is not None
        assert f"--allow-net={address.host}:{address.port}".encode() in cmdline
        granted = (b"--allow-read", b"--allow-write", b"--allow-env", b"--allow-run", b"--allow-all", b"-A")
        assert not any(arg.startswith(granted) for arg in cmdline)
    finally:
        await sandbox.discard()


async def test_missing_deno_binary_is_a_start_error(tmp_path: Path) -> None:
    runtime = DenoLauncher(deno_path=str(tmp_path / "no-deno"), bridge=BridgeAddress("127.0.0.1", 9), work_dir=tmp_path)
    with pytest.raises(SandboxStartError, match="cannot start"):
        await runtime.prepare(64)


async def test_sessions_are_gone_after_every_execution(gateway: Gateway) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(gateway.execute, "typescript", "await tools.toolbox.echo({text: 'x'}); return 1;")
    assert gateway.sessions.active == 0
    assert gateway.admission.running == 0


async def test_each_sandbox_has_a_private_home_that_goes_with_it(gateway: Gateway) -> None:
    first, second = await prepare(gateway), await prepare(gateway)
    assert first.home != second.home and first.home.parent == second.home.parent
    await wait_until(lambda: any(arg.startswith(b"--allow-net") for arg in proc_file(first.pid, "cmdline")))
    environ = dict(entry.split(b"=", 1) for entry in proc_file(first.pid, "environ") if entry)
    assert environ[b"DENO_DIR"] == environ[b"HOME"] == str(first.home).encode()
    code = "localStorage.setItem('k', 'v'); await caches.open('c'); return localStorage.getItem('k');"
    outcome = await first.run(Job(code, SDK, "t", LIMITS))
    assert outcome.result == "v"
    await wait_until(lambda: not first.home.exists())  # removed once the process was reaped
    # The other sandbox's home holds Deno's own caches (seeded before it started), nothing of any program.
    names = {path.name for path in second.home.iterdir()}
    assert "v8_code_cache_v2" in names
    assert "location_data" not in names and "gen" not in names, names
    await second.discard()
    assert not second.home.exists()
