"""Sandbox processes: spawned in their own session, killed as a whole group, always reaped.

Each sandbox process leads a new session (so its process group id is its pid): killing the
group takes every descendant with it, and nothing the sandbox starts can outlive it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

from conduit.errors import SandboxStartError

REAP_TIMEOUT: Final = 5.0
"""Bound on waiting for a SIGKILLed group leader to be reaped."""
READ_CHUNK: Final = 64 * 1024
EXIT_POLL_S: Final = 0.002


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


def _close_polled(fd: int | None) -> None:
    """Close a descriptor the event loop may be waiting on (waiters get ClosedResourceError)."""
    if fd is not None:
        anyio.notify_closing(fd)
        os.close(fd)


class _Pipe:
    """Our end of one of a child's pipes, non-blocking, closed once."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd: int | None = fd

    async def aclose(self) -> None:
        fd, self._fd = self._fd, None
        _close_polled(fd)


class _PipeReader(_Pipe, ByteReceiveStream):
    """The read end of a child's stdout or stderr, read when the event loop says it is ready."""

    async def receive(self, max_bytes: int = READ_CHUNK) -> bytes:
        while True:
            if self._fd is None:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if not data:
                raise anyio.EndOfStream
            return data


class _PipeWriter(_Pipe, ByteSendStream):
    """The write end of a child's stdin."""

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            if self._fd is None:
                raise anyio.ClosedResourceError
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
            except BrokenPipeError as exc:
                raise anyio.BrokenResourceError from exc


class SandboxProcess:
    """A child started off the event loop: its pipes as byte streams, its exit seen through a pidfd.

    ``fork``/``vfork`` suspends the calling thread until the child has exec'd, which on a busy two-core
    machine is milliseconds (measured: 4.5 ms median, 13 ms p90, per sandbox start). Starting the child
    from a worker thread keeps the event loop serving every other request meanwhile.
    """

    def __init__(self, popen: subprocess.Popen[bytes], stdin: int, stdout: int, stderr: int) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdin = _PipeWriter(stdin)
        self.stdout = _PipeReader(stdout)
        self.stderr = _PipeReader(stderr)
        self._waiting = anyio.Lock()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError:
            self._pidfd = None

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        """The exit status, once the process has exited (negative: killed by that signal)."""
        async with self._waiting:  # one task at a time waits on the pidfd
            while self._popen.returncode is None:
                if self._pidfd is not None:
                    await anyio.wait_readable(self._pidfd)
                else:
                    await anyio.sleep(0.01)
                self._popen.poll()
            self._close_pidfd()
            return self._popen.returncode

    def kill(self) -> None:
        self._popen.kill()

    def _close_pidfd(self) -> None:
        fd, self._pidfd = self._pidfd, None
        _close_polled(fd)

    async def aclose(self) -> None:
        """Close the pipes (the process itself is the caller's to kill and wait for)."""
        await self.stdin.aclose()
        await self.stdout.aclose()
        await self.stderr.aclose()
        if self._popen.returncode is not None:
            self._close_pidfd()


SandboxProcessParts = tuple["subprocess.Popen[bytes]", int, int, int]


def _start(argv: list[str], env: dict[str, str], cwd: str) -> SandboxProcessParts:
    """``Popen`` with pipes made here: the child gets one end of each, the caller the others."""
    pipes = [os.pipe() for _ in range(3)]
    child = (pipes[0][0], pipes[1][1], pipes[2][1])
    ours = (pipes[0][1], pipes[1][0], pipes[2][0])
    try:
        popen = subprocess.Popen(
            argv, stdin=child[0], stdout=child[1], stderr=child[2], env=env, cwd=cwd, start_new_session=True
        )
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        # Each descriptor is closed exactly once: closing one twice from this worker thread would close
        # whatever another thread had opened under the same number meanwhile (seen: EBADF in an rmtree).
        for fd in child:
            os.close(fd)
    return popen, *ours


SPAWNER: Final = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="conduit-spawn")
"""The threads sandboxes are started from. The launcher's parent-death signal fires when the thread that
forked it ends, not the process: these threads live as long as Conduit (anyio's worker threads end after
idling 10 s, which would kill every sandbox they had started)."""


async def spawn(argv: Sequence[str], *, env: Mapping[str, str], cwd: str) -> SandboxProcess:
    """Start ``argv`` with pipes on all three streams, leading its own session, from a :data:`SPAWNER` thread.

    Raises:
        SandboxStartError: the executable cannot be started.
    """
    try:
        with anyio.CancelScope(shield=True):  # once forked, the process is ours to keep or kill
            started = SPAWNER.submit(_start, list(argv), dict(env), cwd)
            popen, stdin, stdout, stderr = await asyncio.wrap_future(started)
    except OSError as exc:
        raise SandboxStartError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
    return SandboxProcess(popen, stdin, stdout, stderr)


def kill_group(process: SandboxProcess) -> None:
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


async def destroy(process: SandboxProcess) -> None:
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


def has_exited(pid: int) -> bool:
    """Whether process ``pid`` is gone or a zombie (dead, waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


async def wait_exited(pid: int) -> bool:
    """Wait up to ``REAP_TIMEOUT`` for process ``pid`` to exit (a SIGKILL takes a moment on a loaded
    machine); whether it did. Polled: the process may be another's child, with no pidfd of ours."""
    for _ in range(int(REAP_TIMEOUT / EXIT_POLL_S)):
        if has_exited(pid):
            return True
        await anyio.sleep(EXIT_POLL_S)
    return has_exited(pid)


async def pump(stream: ByteReceiveStream | None, sink: Callable[[bytes], None]) -> None:
    """Feed everything ``stream`` yields into ``sink`` until end of stream."""
    if stream is None:
        return
    with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        while True:
            sink(await stream.receive(READ_CHUNK))
