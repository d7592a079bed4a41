"""The OS walls around sandbox processes: which are available here, and how each sandbox gets them.

Detected once at start (:meth:`Walls.detect`), reported by ``conduit doctor`` and ``/health`` (as
``isolation``, the public name of the set), and applied to every Deno, Pyodide and isolate-worker
process through a launcher: the native ``conduit-confine`` (``native/conduit_confine.c``, built by
``make setup`` when a C compiler is present; ~1 ms) or else its Python twin
:mod:`conduit.sandbox.walls.confine` (~12 ms per start):

- ``cgroup-memory``: a hard memory cap per sandbox (the runtime's own limit plus its baseline);
  a kill at the cap is reported as the memory error (-32009).
- ``cgroup-pids``: a cap on processes and threads per sandbox (Worker and fork floods).
- ``landlock``: the file system is reduced to what the runtime needs, read-only, plus its private
  home; everything else is invisible.
- ``no-new-privs``: nothing inside can gain privileges (setuid binaries, file capabilities).
- ``rlimit-cpu``: a CPU-time ceiling as a backstop to the host's wall-clock deadline.
- ``unprivileged-uid``: when Conduit runs as root, sandboxes run as ``nobody`` (for each runtime
  whose files that user can reach; checked by starting the runtime once at start).
- ``process-group``: every sandbox leads its own session and is killed as a group (always on).

A wall that is unavailable is reported with the reason; ``isolation.require`` makes Conduit
refuse to start without the walls it names.
"""

from __future__ import annotations

import logging
import math
import os
import pwd
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, get_args

import anyio

import conduit
from conduit.config.schema import WallName
from conduit.errors import SandboxStartError
from conduit.sandbox.walls import confine
from conduit.sandbox.walls.cgroups import Cgroup, CgroupSupport, detect, remove_parents

logger = logging.getLogger(__name__)

WALL_NAMES: Final[tuple[str, ...]] = get_args(WallName)
"""Every wall, in the order ``conduit doctor`` and ``/health`` report them."""
SANDBOX_USER: Final = "nobody"
LATE_UID_KINDS: Final = frozenset({"isolate"})
"""Runtimes that can drop the uid themselves after loading (before any job), if they cannot start as it."""
CONFINE: Final = Path(confine.__file__)
NATIVE_CONFINE: Final = Path(sys.prefix) / "bin" / "conduit-confine"
NATIVE_PROTOCOL: Final = "3"
"""The argument protocol the native launcher must print for ``--protocol`` to be used."""
MAX_PIDS: Final = 128
"""Threads and processes per sandbox: Deno uses ~15, a Worker flood hits this."""
SYSTEM_READ_ONLY: Final = (
    "/lib",
    "/lib64",
    "/lib32",
    "/usr/lib",
    "/usr/lib64",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/usr/share/zoneinfo",
    "/dev/null",
    "/dev/urandom",
)


@dataclass(frozen=True)
class Wall:
    """One wall as it is on this machine: on or off, and what it does or why it is off."""

    name: str
    active: bool
    detail: str


@dataclass(frozen=True)
class Profile:
    """What one kind of sandbox needs from the file system, and its memory beyond the runtime's limit."""

    read_only: tuple[str, ...]
    read_write: tuple[str, ...] = ()
    baseline_mb: int = 128


@dataclass
class Walls:
    """The walls this machine offers, and the launcher argv that puts a sandbox behind them."""

    cgroups: CgroupSupport
    landlock_abi: int
    cpu_seconds: int
    report: list[Wall] = field(default_factory=list)
    uid: int | None = None
    """The uid sandboxes drop to (None: Conduit is not root, or the wall is off)."""
    uid_off: str | None = None
    """Why the unprivileged-uid wall is off for every sandbox (None: it is on, or Conduit is not root)."""
    uid_kinds: dict[str, bool] = field(default_factory=dict)
    """Per kind of sandbox: whether its runtime works as ``uid`` (probed once)."""
    native: str | None = None
    """The native launcher, when it is built and speaks this protocol; else the Python one is used."""

    @classmethod
    def detect(cls, timeout_ms: int, *, enabled: bool = True) -> Walls:
        """Find what is available (``enabled=False``: only the process group, for comparison runs)."""
        if not enabled or not sys.platform.startswith("linux"):
            reason = "disabled by isolation.enabled: false" if sys.platform.startswith("linux") else "not Linux"
            walls = cls(CgroupSupport(0, None, None, reason), 0, 0)
            walls.uid_off = reason if os.geteuid() == 0 else None
        else:
            walls = cls(detect(), confine.landlock_abi(), math.ceil(timeout_ms / 1000) + 60)
            walls.uid = _sandbox_uid()
            if os.geteuid() == 0 and walls.uid is None:
                walls.uid_off = f"root for every sandbox: no '{SANDBOX_USER}' user on this machine"
            walls.native = native_launcher()
        walls.report = walls._describe(enabled)
        return walls

    async def probe_uid(
        self, kind: str, argv: Sequence[str], *, env: dict[str, str], read_write: Sequence[str] = ()
    ) -> None:
        """Find out once whether sandboxes of ``kind`` can run as the unprivileged uid (``argv`` must exit 0).

        ``read_write`` (the sandbox's private directories) are given to that uid first.
        """
        if self.uid is None or kind in self.uid_kinds:
            return
        for path in read_write:
            os.chown(path, self.uid, self.uid)
        try:
            with anyio.fail_after(30):
                done = await anyio.run_process(
                    self.command({"uid": self.uid, "env": env}, argv), cwd="/", env=env, check=False
                )
            works = done.returncode == 0
        except (OSError, TimeoutError):
            works = False
        if not works:
            for path in read_write:
                os.chown(path, 0, 0)
        self.uid_kinds[kind] = works
        self.report = [wall for wall in self.report if wall.name != "unprivileged-uid"] + [self.uid_wall()]

    def uid_for(self, kind: str) -> int | None:
        """The uid sandboxes of ``kind`` run as, when they drop to one from the start."""
        return self.uid if self.uid is not None and self.uid_kinds.get(kind) else None

    def late_uid(self, kind: str) -> bool:
        """Whether sandboxes of ``kind`` start as root and drop the uid themselves once loaded."""
        return self.uid is not None and kind in LATE_UID_KINDS and self.uid_kinds.get(kind) is False

    def uid_account(self, kind: str) -> str:
        """What the unprivileged-uid wall is for sandboxes of ``kind``, in one phrase: the one account of it
        that the log, ``/health`` and ``conduit doctor`` give.

        >>> Walls(CgroupSupport(0, None, None), 0, 0, uid=65534, uid_kinds={"isolate": False}).uid_account("isolate")
        'uid 65534 before any program (it starts as root to load its runtime, then drops)'
        """
        if self.uid_off is not None:
            return f"off: {self.uid_off}"
        if self.uid is None:  # and not off: Conduit is not root
            return f"uid {os.geteuid()} (Conduit itself is not root)"
        works = self.uid_kinds.get(kind)
        if works is None:
            return f"uid {self.uid} if its runtime starts as it (not checked yet: checked when Conduit starts)"
        if works:
            return f"uid {self.uid} from the start"
        if self.late_uid(kind):
            return f"uid {self.uid} before any program (it starts as root to load its runtime, then drops)"
        return f"off: runs as root (its runtime did not start as uid {self.uid} when checked at start)"

    def uid_wall(self) -> Wall:
        """The unprivileged-uid wall: on when no sandbox runs programs as root, with each runtime's account."""
        if self.uid_off is not None or not self.uid_kinds:
            return Wall("unprivileged-uid", self.uid_off is None, self.uid_account(""))
        active = all(works or self.late_uid(kind) for kind, works in self.uid_kinds.items())
        return Wall("unprivileged-uid", active, "; ".join(f"{k}: {self.uid_account(k)}" for k in self.uid_kinds))

    def _describe(self, enabled: bool) -> list[Wall]:
        off = "disabled by isolation.enabled: false"
        cg = self.cgroups
        version = f"cgroup v{cg.version}" if cg.version else ""
        landlock = f"Landlock ABI {self.landlock_abi}" if self.landlock_abi else "the kernel has no Landlock"
        return [
            Wall("process-group", True, "own session and process group, killed as a whole"),
            Wall(
                "cgroup-memory",
                cg.memory is not None,
                f"{version} memory cap per sandbox" if cg.memory else (off if not enabled else cg.reason),
            ),
            Wall(
                "cgroup-pids",
                cg.pids is not None,
                f"{version} pids.max={MAX_PIDS} per sandbox" if cg.pids else (off if not enabled else cg.reason),
            ),
            Wall("landlock", enabled and self.landlock_abi > 0, landlock if enabled else off),
            Wall("no-new-privs", enabled, "prctl(PR_SET_NO_NEW_PRIVS)" if enabled else off),
            Wall("rlimit-cpu", self.cpu_seconds > 0, f"RLIMIT_CPU {self.cpu_seconds} s" if enabled else off),
            self.uid_wall(),
        ]

    def missing(self, required: Iterable[str]) -> list[str]:
        """The required walls that are not active here."""
        active = {wall.name for wall in self.report if wall.active}
        return [name for name in required if name not in active]

    def check_required(self, required: Iterable[str]) -> None:
        """Raises:
        SandboxStartError: a required wall is unavailable (the message says why).
        """
        missing = self.missing(required)
        if missing:
            reasons = "; ".join(f"{wall.name}: {wall.detail}" for wall in self.report if wall.name in missing)
            raise SandboxStartError(f"required isolation layers are unavailable: {reasons}")

    def launch(
        self,
        argv: Sequence[str],
        profile: Profile,
        memory_limit_mb: int,
        kind: str = "",
        env: Mapping[str, str] | None = None,
        niceness: int = 0,
        *,
        cgroup_by_launcher: bool = False,
    ) -> tuple[list[str], Cgroup | None]:
        """``argv`` behind every available wall, and the sandbox's cgroup (to check and remove afterwards).

        ``cgroup_by_launcher``: the launcher makes the process's leaves itself (``new_cgroups``: one
        :func:`~conduit.sandbox.walls.cgroups.launched_leaf` per hierarchy) and joins them, for processes
        started by someone else before their program is known (Monty's workers); the host caps them
        when a program arrives. No cgroup is returned then.

        Raises:
            SandboxStartError: the cgroup could not be created.
        """
        spec: dict[str, object] = {}
        cgroup: Cgroup | None = None
        if self.cgroups.available and cgroup_by_launcher:
            spec["new_cgroups"] = [str(path) for path in self.cgroups.parents]
        elif self.cgroups.available:
            try:
                cgroup = Cgroup(self.cgroups, (memory_limit_mb + profile.baseline_mb) << 20, MAX_PIDS)
            except OSError as exc:
                raise SandboxStartError(f"cannot create the sandbox's cgroup: {exc}") from exc
            spec["cgroups"] = cgroup.procs_files
        if self.cpu_seconds:
            spec["cpu_seconds"] = self.cpu_seconds
        if niceness:
            spec["niceness"] = niceness
        if self.landlock_abi:
            read_only = [*SYSTEM_READ_ONLY, *profile.read_only]
            spec["landlock"] = {"read_only": read_only, "read_write": list(profile.read_write)}
            spec["no_new_privs"] = True
        elif any(wall.name == "no-new-privs" and wall.active for wall in self.report):
            spec["no_new_privs"] = True
        if self.uid_for(kind) is not None:
            spec["uid"] = self.uid
        # Not a wall but the sandbox's lifetime: it dies with the thread that started it (see
        # conduit.sandbox.process.spawn), even when Conduit is SIGKILLed.
        spec["parent_death"] = True
        if env is not None:
            spec["env"] = dict(env)
        return self.command(spec, argv), cgroup

    @property
    def launcher(self) -> str:
        """Which launcher applies the walls, for ``conduit doctor``."""
        return f"native ({self.native})" if self.native else f"Python ({CONFINE}); build the native one: make setup"

    def command(self, spec: Mapping[str, Any], argv: Sequence[str]) -> list[str]:
        """The launcher command that applies ``spec`` (the keys :func:`confine.apply` knows) and runs ``argv``."""
        if self.native is None:
            return [sys.executable, "-I", "-S", str(CONFINE), confine.encode_spec(dict(spec)), "--", *argv]
        command = [self.native]
        for procs in spec.get("cgroups", []):
            command += ["--cgroup", procs]
        for parent in spec.get("new_cgroups", []):
            command += ["--cgroup-new", parent]
        for key, flag in (("cpu_seconds", "--cpu"), ("niceness", "--nice")):
            if spec.get(key):
                command += [flag, str(spec[key])]
        if spec.get("no_new_privs"):
            command.append("--nnp")
        if spec.get("parent_death"):
            command.append("--parent-death")
        landlock = spec.get("landlock")
        if landlock:
            command.append("--landlock")
            for flag, paths in (("--ro", landlock.get("read_only", [])), ("--rw", landlock.get("read_write", []))):
                for path in paths:
                    command += [flag, path]
        if spec.get("uid") is not None:
            command += ["--uid", str(spec["uid"]), "--gid", str(spec.get("gid", spec["uid"]))]
        if spec.get("env") is not None:
            command.append("--clear-env")
            for name, value in spec["env"].items():
                command += ["--env", f"{name}={value}"]
        return [*command, "--", *argv]

    def close(self) -> None:
        remove_parents(self.cgroups)


def native_launcher(path: Path = NATIVE_CONFINE) -> str | None:
    """``path`` if it is the native launcher for this protocol, else None (the Python launcher is used)."""
    try:
        answer = subprocess.run([str(path), "--protocol"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return str(path) if answer.returncode == 0 and answer.stdout.strip() == NATIVE_PROTOCOL else None


def _sandbox_uid() -> int | None:
    """The uid sandboxes drop to when Conduit runs as root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SANDBOX_USER).pw_uid
    except KeyError:
        return None


def python_profile(read_write: Sequence[str], baseline_mb: int) -> Profile:
    """What a Python worker process needs: its interpreter, the standard library, and Conduit's packages."""
    import site

    roots = {sys.base_prefix, sys.prefix, os.path.realpath(sys.executable), *site.getsitepackages()}
    roots.add(str(Path(conduit.__file__).resolve().parents[1]))  # the directory holding the `conduit` package
    return Profile(tuple(sorted(roots)), tuple(read_write), baseline_mb)
