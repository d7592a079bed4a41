"""Child processes: sandboxes started off the event loop and waited for through pidfds (Python 3.11's default
starts a thread per child)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

import anyio
import pytest

from conduit.errors import SandboxStartError
from conduit.sandbox.host.process import _start, destroy, kill_group, spawn, use_pidfd_child_watcher

pytestmark = [pytest.mark.anyio]


async def test_exit_statuses_arrive_without_a_thread_per_child() -> None:
    use_pidfd_child_watcher()
    if sys.version_info < (3, 12):
        assert type(asyncio.get_event_loop_policy().get_child_watcher()).__name__ == "_PidfdChildWatcher"
    threads = threading.active_count()
    processes = [await anyio.open_process([sys.executable, "-c", f"import sys; sys.exit({code})"]) for code in (0, 3)]
    sleeper = await anyio.open_process(["sleep", "30"])
    assert threading.active_count() == threads  # no waiter thread per child
    sleeper.send_signal(signal.SIGKILL)
    with anyio.fail_after(10):
        codes = [await process.wait() for process in [*processes, sleeper]]
    assert codes == [0, 3, -signal.SIGKILL]
    for process in [*processes, sleeper]:
        await process.aclose()


def test_it_serves_every_loop_not_only_the_first() -> None:
    async def run_one(code: int) -> int:
        use_pidfd_child_watcher()
        done = await anyio.run_process([sys.executable, "-c", f"import sys; sys.exit({code})"], check=False)
        return done.returncode

    assert [anyio.run(run_one, code) for code in (5, 6)] == [5, 6]


ECHO = (
    "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data.upper()); "
    "sys.stderr.write('err'); sys.exit(3)"
)


async def test_a_sandbox_process_speaks_through_its_pipes_and_reports_its_exit() -> None:
    process = await spawn([sys.executable, "-c", ECHO], env={}, cwd="/")
    try:
        with anyio.fail_after(10):
            await process.stdin.send(b"hello " * 20_000)  # larger than a pipe's buffer
            await process.stdin.aclose()
            out, err = b"", b""
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    out += await process.stdout.receive()
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    err += await process.stderr.receive()
            codes = await asyncio.gather(process.wait(), process.wait())  # two waiters see the same status
        assert out == b"HELLO " * 20_000 and err == b"err"
        assert codes == [3, 3] and process.returncode == 3
    finally:
        await destroy(process)


async def test_a_killed_group_is_reaped_with_its_signal_and_its_pipes_close() -> None:
    process = await spawn(["sh", "-c", "sleep 30 & exec sleep 30"], env={"PATH": "/usr/bin:/bin"}, cwd="/")
    with anyio.fail_after(10):
        kill_group(process)
        assert await process.wait() == -signal.SIGKILL
        with pytest.raises(anyio.EndOfStream):
            await process.stdout.receive()  # the background sleep, in the same group, died too
    await destroy(process)
    with pytest.raises(anyio.ClosedResourceError):
        await process.stdout.receive()


async def test_a_missing_executable_is_a_sandbox_start_error() -> None:
    with pytest.raises(SandboxStartError, match="cannot start /no/such/runtime"):
        await spawn(["/no/such/runtime"], env={}, cwd="/")


def test_a_failed_start_closes_each_descriptor_exactly_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A second close of a pipe end, from the starting thread, would close what another thread opened
    under the same number meanwhile (an rmtree on the event loop saw EBADF)."""
    opened: list[int] = []
    closed: list[int] = []
    real_close, real_pipe = os.close, os.pipe

    def close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    def pipe() -> tuple[int, int]:
        ends = real_pipe()
        opened.extend(ends)
        return ends

    monkeypatch.setattr(os, "close", close)
    monkeypatch.setattr(os, "pipe", pipe)
    with pytest.raises(OSError):
        _start([str(tmp_path / "missing")], {}, str(tmp_path))
    assert len(opened) >= 6
    assert sorted(fd for fd in closed if fd in opened) == sorted(opened), (opened, closed)
