"""Child processes are waited for through pidfds (Python 3.11's default starts a thread per child)."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading

import anyio
import pytest

from conduit.sandbox.process import use_pidfd_child_watcher

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
