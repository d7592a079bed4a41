"""Sandbox processes: spawned in their own session, killed as a whole group, always reaped.

Each sandbox process leads a new session (so its process group id is its pid): killing the
group takes every descendant with it, and nothing the sandbox starts can outlive it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import anyio
from anyio.abc import ByteReceiveStream, Process

from conduit.errors import SandboxStartError

REAP_TIMEOUT: Final = 5.0
"""Bound on waiting for a SIGKILLed group leader to be reaped."""
READ_CHUNK: Final = 64 * 1024


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
