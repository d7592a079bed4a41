"""Per-sandbox cgroups: a hard memory cap and a process-count cap, cgroup v1 or v2.

At start, :func:`detect` finds where this process may create cgroups: under its own cgroup
in the v1 ``memory`` and ``pids`` hierarchies, or in the unified (v2) hierarchy when the
``memory`` and ``pids`` controllers can be delegated to a child. Each sandbox then gets
its own leaf (:class:`Cgroup`), which the launcher joins before it becomes the runtime; the
host reads the leaf's OOM-kill counter to tell a memory-cap kill from a crash, and removes
the leaf once the sandbox is gone.

A process held at its cap does not always die: the kernel first reclaims the leaf's file pages
(the runtime's own code among them), and a program that keeps allocating can crawl on refaults
for many seconds before the OOM killer acts. So while a program runs, :func:`watch_cap` reads the
leaf's peak usage and kills the sandbox the first time it reaches the cap.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
CAP_POLL_S: Final = 0.025
"""How often a running sandbox's cgroup is checked for having met its memory cap."""
CAP_SLACK: Final = 1 << 20
"""How close to its cap a cgroup's peak usage counts as at it."""
_counter = itertools.count(1)
_retired: list[Cgroup] = []
"""Leaves whose processes were still exiting when released; removed by the next sweep."""


@dataclass(frozen=True)
class CgroupSupport:
    """Where sandbox cgroups go; ``memory`` / ``pids`` are parent directories (None: unavailable)."""

    version: int
    memory: Path | None
    pids: Path | None
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.memory is not None or self.pids is not None

    @property
    def parents(self) -> list[Path]:
        """The parent directories, each once (v2 has one for both controllers)."""
        return list(dict.fromkeys(path for path in (self.memory, self.pids) if path is not None))


def launched_leaf(pid: int) -> str:
    """The name of the leaf a launcher makes for process ``pid`` (``new_cgroups``; same in both launchers)."""
    return f"sandbox-pid-{pid}"


def _own_path(controller: str) -> str | None:
    """This process's path in the v1 hierarchy holding ``controller``, or in the v2 one for ``""``."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if controller and controller in controllers.split(","):
            return path
        if not controller and hierarchy == "0" and not controllers:
            return path
    return None


def _remove_stale(base: Path) -> None:
    """Remove the parent cgroups (and their empty leaves) of Conduit processes that no longer exist."""
    for parent in base.glob("conduit-*"):
        pid = parent.name.removeprefix("conduit-")
        if not pid.isdigit() or int(pid) == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        _remove_parent(parent)


def _remove_parent(parent: Path) -> None:
    """Remove a parent cgroup and its empty leaves (best effort: a leaf still in use keeps both)."""
    for leaf in parent.glob("sandbox-*"):
        try:
            leaf.rmdir()
        except OSError:
            pass
    try:
        parent.rmdir()
    except OSError:
        pass


def _make_parent(base: Path) -> Path | None:
    _remove_stale(base)  # left behind by Conduit processes that were killed before they could clean up
    parent = base / f"conduit-{os.getpid()}"
    try:
        parent.mkdir(exist_ok=True)
    except OSError:
        return None
    return parent


def detect(root: Path = CGROUP_ROOT) -> CgroupSupport:
    """What this machine lets Conduit do with cgroups, creating this process's parent cgroups."""
    reasons: list[str] = []
    v1: dict[str, Path | None] = {}
    for controller, probe in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max")):
        own = _own_path(controller)
        hierarchy = root / controller
        if own is None or not hierarchy.is_dir():
            v1[controller] = None
            continue
        base = hierarchy / own.lstrip("/")
        parent = _make_parent(base) if os.access(base, os.W_OK) else None
        if parent is None or not (parent / probe).exists():
            reasons.append(f"cgroup v1 {controller}: {base} is not writable")
            v1[controller] = None
        else:
            v1[controller] = parent
    if v1.get("memory") or v1.get("pids"):
        return CgroupSupport(1, v1.get("memory"), v1.get("pids"))
    controllers_file = root / "cgroup.controllers"
    if controllers_file.exists():
        available = set(controllers_file.read_text().split())
        own = _own_path("") or "/"
        base = root / own.lstrip("/")
        if {"memory", "pids"} <= available and os.access(base, os.W_OK):
            parent = _make_parent(base)
            if parent is not None:
                try:
                    (parent / "cgroup.subtree_control").write_text("+memory +pids")
                    return CgroupSupport(2, parent, parent)
                except OSError as exc:
                    reasons.append(f"cgroup v2: cannot delegate memory and pids under {parent}: {exc.strerror}")
        else:
            reasons.append(f"cgroup v2: controllers here are {' '.join(sorted(available)) or 'none'}")
    return CgroupSupport(0, None, None, "; ".join(reasons) or "no cgroup hierarchy is mounted")


class Cgroup:
    """One sandbox's cgroup leaves (one per hierarchy in v1, one in v2)."""

    def __init__(self, support: CgroupSupport, memory_bytes: int, max_pids: int, *, name: str | None = None) -> None:
        """Make the leaves; with ``name``, take over leaves of that name that may already exist (made by a
        launcher for its process) and leave removing released ones to the next :func:`sweep`."""
        if name is None:
            sweep()
        self.support = support
        self.memory_bytes = memory_bytes
        name = name or f"sandbox-{next(_counter)}"
        self.leaves: list[Path] = []
        self._memory_leaf: Path | None = None
        if support.version == 2 and support.memory is not None:
            leaf = support.memory / name
            leaf.mkdir(exist_ok=True)
            (leaf / "memory.max").write_text(str(memory_bytes))
            swap = leaf / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
            (leaf / "pids.max").write_text(str(max_pids))
            self.leaves.append(leaf)
            self._memory_leaf = leaf
            return
        if support.memory is not None:
            leaf = support.memory / name
            leaf.mkdir(exist_ok=True)
            (leaf / "memory.limit_in_bytes").write_text(str(memory_bytes))
            memsw = leaf / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(str(memory_bytes))
            self.leaves.append(leaf)
            self._memory_leaf = leaf
        if support.pids is not None:
            leaf = support.pids / name
            leaf.mkdir(exist_ok=True)
            (leaf / "pids.max").write_text(str(max_pids))
            self.leaves.append(leaf)

    @property
    def procs_files(self) -> list[str]:
        return [str(leaf / "cgroup.procs") for leaf in self.leaves]

    def oom_killed(self) -> bool:
        """Whether the kernel killed something in this cgroup for exceeding its memory cap."""
        if self._memory_leaf is None:
            return False
        name = "memory.events" if self.support.version == 2 else "memory.oom_control"
        try:
            text = (self._memory_leaf / name).read_text()
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit() and int(value) > 0:
                return True
        return False

    @property
    def caps_memory(self) -> bool:
        return self._memory_leaf is not None

    def at_cap(self) -> bool:
        """Whether this cgroup's memory has reached its cap (the kernel then reclaims, and OOM-kills last).

        Read from the peak usage (``memory.max_usage_in_bytes`` in v1, ``memory.peak`` in v2), so a
        peak between two checks is not missed; v2 also counts charges that met the cap in the ``max``
        line of ``memory.events``. Within :data:`CAP_SLACK` of the cap counts as at it: charges come in
        batches of up to 64 pages, so usage stops short of the cap by up to 256 KiB.
        """
        leaf = self._memory_leaf
        if leaf is None:
            return False
        try:
            if self.support.version == 2:
                for line in (leaf / "memory.events").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "max" and int(value) > 0:
                        return True
                peak = leaf / "memory.peak"
                return peak.exists() and int(peak.read_text()) >= self.memory_bytes - CAP_SLACK
            return int((leaf / "memory.max_usage_in_bytes").read_text()) >= self.memory_bytes - CAP_SLACK
        except (OSError, ValueError):
            return False

    def try_remove(self) -> bool:
        """Remove the leaves whose processes are gone; whether none is left."""
        remaining = []
        for leaf in self.leaves:
            try:
                leaf.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                remaining.append(leaf)
        self.leaves = remaining
        return not remaining

    def release(self) -> None:
        """Leave the leaves for the next sweep (when the next sandbox is started, off the request path).

        Removing a memory cgroup costs the kernel milliseconds, and this runs on the path that returns
        an execution's result.
        """
        _retired.append(self)

    async def remove(self) -> None:
        """Remove the leaves, waiting up to half a second for their processes to be gone."""
        for _ in range(50):
            if self.try_remove():
                return
            await anyio.sleep(0.01)
        _retired.append(self)


async def watch_cap(cgroup: Cgroup, at_cap: Callable[[], None]) -> None:
    """Call ``at_cap`` (which kills the sandbox) as soon as ``cgroup`` meets its memory cap; runs until cancelled."""
    if not cgroup.caps_memory:
        return
    while True:
        if cgroup.at_cap():
            at_cap()
            return
        await anyio.sleep(CAP_POLL_S)


def sweep() -> None:
    """Try again to remove released leaves whose processes were still exiting."""
    pending = list(_retired)
    _retired.clear()
    _retired.extend(cgroup for cgroup in pending if not cgroup.try_remove())


def remove_parents(support: CgroupSupport) -> None:
    """Remove this process's parent cgroups at shutdown (best effort: leaves still busy keep them)."""
    for _ in range(50):
        sweep()
        if not _retired:
            break
        time.sleep(0.01)
    for parent in {support.memory, support.pids} - {None}:
        assert parent is not None
        _remove_parent(parent)
