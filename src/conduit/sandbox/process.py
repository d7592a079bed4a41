"""Sandbox processes: spawned in their own session, killed as a whole group, always reaped.

Each sandbox process leads a new session (so its process group id is its pid): killing the
group takes every descendant with it, and nothing the sandbox starts can outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import anyio
from anyio.abc import ByteReceiveStream, Process

from conduit.errors import SandboxStartError

REAP_TIMEOUT: Final = 5.0
"""Bound on waiting for a SIGKILLed group leader to be reaped."""
READ_CHUNK: Final = 64 * 1024


class _PidfdChildWatcher(asyncio.AbstractChildWatcher):
    """What Python 3.12 does by default: wait for each child through a pidfd on the loop running when it
    started (no thread per child, no loop to attach)."""

    def add_child_handler(self, pid: int, callback: Callable[..., object], *args: object) -> None:
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(pid)
        loop.add_reader(pidfd, self._do_wait, loop, pid, pidfd, callback, args)

    @staticmethod
    def _do_wait(
        loop: asyncio.AbstractEventLoop, pid: int, pidfd: int, callback: Callable[..., object], args: tuple[object, ...]
    ) -> None:
        loop.remove_reader(pidfd)
        try:
            _, status = os.waitpid(pid, 0)
            returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            returncode = 255  # reaped elsewhere: the same report asyncio's own watchers give
        finally:
            os.close(pidfd)
        callback(pid, returncode, *args)

    def remove_child_handler(self, pid: int) -> bool:
        return True

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        pass

    def is_active(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def __enter__(self) -> _PidfdChildWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


def use_pidfd_child_watcher() -> None:
    """On Python 3.11, wait for child processes through pidfds instead of a thread per child.

    3.11's default (``ThreadedChildWatcher``) starts a thread for every subprocess to wait for it:
    ~1 ms of the event loop's time per sandbox start. Linux 5.3+ offers pidfds, which the running
    loop polls like any file descriptor (3.12 does this by default). Process-wide; it serves
    whichever asyncio loop is running when a child starts.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    policy = asyncio.get_event_loop_policy()
    if isinstance(policy.get_child_watcher(), _PidfdChildWatcher):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # the kernel has no pidfds: keep the default
    policy.set_child_watcher(_PidfdChildWatcher())


async def spawn(argv: Sequence[str], *, env: Mapping[str, str], cwd: str) -> Process:
    """Start ``argv`` with pipes on all three streams, leading its own session.

    Raises:
        SandboxStartError: the executable cannot be started.
    """
    try:
        return await anyio.open_process(list(argv), env=dict(env), cwd=cwd, start_new_session=True)
    except OSError as exc:
        raise SandboxStartError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc


def kill_group(process: Process) -> None:
    """SIGKILL the process's whole group; a group already gone is fine.

    The leader is signalled directly only if the group cannot be: ``Popen.kill`` polls the process
    first, and reaping it there would steal the exit status from the event loop's child watcher
    (which then reports 255).
    """
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()


async def destroy(process: Process) -> None:
    """Kill the group, reap the leader and close the pipes; bounded and shielded from cancellation."""
    with anyio.CancelScope(shield=True):
        kill_group(process)
        with anyio.move_on_after(REAP_TIMEOUT):
            await process.wait()
        with contextlib.suppress(Exception):
            await process.aclose()


def set_niceness(pid: int, niceness: int) -> None:
    """Best effort: give every thread of process ``pid`` the CPU niceness ``niceness``.

    Linux keeps niceness per thread, so each one is set. Lowering it needs privilege
    (CAP_SYS_NICE); without it the process keeps the niceness it has.
    """
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        threads = [str(pid)]
    for tid in threads:
        with contextlib.suppress(OSError, ValueError):
            os.setpriority(os.PRIO_PROCESS, int(tid), niceness)


def private_memory_bytes(pid: int) -> int:
    """Resident memory process ``pid`` holds for itself (anonymous and shared-memory pages), 0 if unknown."""
    total = 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(("RssAnon:", "RssShmem:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


async def pump(stream: ByteReceiveStream | None, sink: Callable[[bytes], None]) -> None:
    """Feed everything ``stream`` yields into ``sink`` until end of stream."""
    if stream is None:
        return
    with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        while True:
            sink(await stream.receive(READ_CHUNK))
