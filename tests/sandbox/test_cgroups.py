"""A sandbox's cgroup: killed the moment it meets its memory cap, not when the kernel gives up reclaiming."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from conduit.sandbox.host.process import kill_group, spawn
from conduit.sandbox.walls.cgroups import Cgroup, detect, remove_parents, watch_cap

pytestmark = pytest.mark.anyio

CAP_MB = 96
FILE_MB = 48
GROWER = """
import sys, time
for procs in sys.argv[2:]:
    with open(procs, "w") as f:
        f.write(str(__import__("os").getpid()))
with open(sys.argv[1], "rb") as f:  # page cache charged to this cgroup: memory the kernel can reclaim
    while f.read(1 << 20):
        pass
print("cached", flush=True)
held = []
while True:  # then anonymous memory, slowly, past the cap
    held.append(bytearray(1 << 20))
    time.sleep(0.01)
"""


async def test_meeting_the_cap_kills_before_the_kernel_reclaims_its_way_on(tmp_path: Path) -> None:
    support = detect()
    try:
        if support.memory is None:
            pytest.skip(f"no memory cgroup can be made here: {support.reason}")
        cgroup = Cgroup(support, CAP_MB << 20, 64)
        pages = tmp_path / "pages"
        with pages.open("wb") as file:
            file.write(os.urandom(FILE_MB << 20))
            file.flush()
            os.fsync(file.fileno())
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # not cached: the child's read charges it
        process = await spawn([sys.executable, "-c", GROWER, str(pages), *cgroup.procs_files], env={}, cwd="/")
        killed_at_cap = anyio.Event()

        def at_cap() -> None:
            kill_group(process)
            killed_at_cap.set()

        try:
            with anyio.fail_after(30):
                assert process.stdout is not None
                assert b"cached" in await process.stdout.receive()
                await watch_cap(cgroup, at_cap)
                await process.wait()
        finally:
            kill_group(process)
            await process.aclose()
        assert killed_at_cap.is_set()
        # The kernel had file pages to reclaim, so it had not OOM-killed anything: the watch ended it.
        assert not cgroup.oom_killed()
        await cgroup.remove()
    finally:
        remove_parents(support)
