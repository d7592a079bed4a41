"""Apply OS walls to the current process, then become the sandbox runtime (``execv``).

Run as ``python -I -S confine.py SPEC -- ARGV...`` (``SPEC`` made by :func:`encode_spec`): it joins the
sandbox's cgroups (or makes leaves of its own under the parents ``new_cgroups`` names and joins them),
sets ``RLIMIT_CPU``, sets no-new-privileges, restricts the file system with Landlock to the paths the
runtime needs (read-only, plus its private home read-write), and
then replaces itself with ``ARGV``. Everything it applies is inherited by the runtime and
anything the runtime might start, and none of it can be undone from inside.

Each step is optional in the spec; :mod:`conduit.sandbox.walls.launch` decides which are available
on this machine. A step that was asked for and fails aborts the launch (exit status 121),
so a sandbox never runs with fewer walls than the gateway reports.

It runs once per sandbox start, so it imports only what it needs: the spec is ``marshal`` data in
hex (``json`` would add ~6 ms of imports, ``typing`` ~2 ms), decoded by the same interpreter that
encoded it.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import signal
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any, Final

LAUNCH_FAILED: Final = 121

_SYS_LANDLOCK_CREATE_RULESET: Final = 444
_SYS_LANDLOCK_ADD_RULE: Final = 445
_SYS_LANDLOCK_RESTRICT_SELF: Final = 446
_LANDLOCK_CREATE_RULESET_VERSION: Final = 1
_LANDLOCK_RULE_PATH_BENEATH: Final = 1
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_SET_PDEATHSIG: Final = 1

# Landlock file-system rights, by the ABI version that introduced them.
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_REMOVE_DIR, _REMOVE_FILE, _MAKE_CHAR, _MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
_MAKE_REG, _MAKE_SOCK, _MAKE_FIFO, _MAKE_BLOCK, _MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_ABI1: Final = (1 << 13) - 1
_FILE_RIGHTS: Final = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
READ_ONLY: Final = _EXECUTE | _READ_FILE | _READ_DIR
READ_WRITE: Final = READ_ONLY | _WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE_DIR | _MAKE_REG | _MAKE_SYM | _TRUNCATE


class ConfineError(Exception):
    pass


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    libc = _libc()
    version = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), _LANDLOCK_CREATE_RULESET_VERSION)
    return int(version) if version > 0 else 0


def handled_rights(abi: int) -> int:
    """Every file-system right the kernel's ABI knows (all of them are denied unless a rule grants them)."""
    rights = _ABI1
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def restrict_file_system(read_only: Iterable[str], read_write: Iterable[str]) -> None:
    """Landlock this process: only ``read_only`` paths can be read (and executed), ``read_write`` written.

    Raises:
        ConfineError: Landlock is unavailable or a step failed.
    """
    abi = landlock_abi()
    if abi < 1:
        raise ConfineError("Landlock is not available")
    libc = _libc()
    handled = handled_rights(abi)
    attr = ctypes.c_uint64(handled)
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(8), 0)
    if ruleset < 0:
        raise ConfineError(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for paths, rights in ((read_only, READ_ONLY), (read_write, READ_WRITE)):
            for path in paths:
                _add_rule(libc, int(ruleset), path, rights & handled)
        no_new_privileges()  # landlock_restrict_self requires it of an unprivileged caller
        if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, int(ruleset), 0) != 0:
            raise ConfineError(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(int(ruleset))


def _add_rule(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # a path this machine does not have (/lib64 on some systems) grants nothing
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        rule = _PathBeneath(rights, fd)
        if libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise ConfineError(f"landlock_add_rule({path}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def no_new_privileges() -> None:
    if _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfineError(f"prctl(NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread that started it ends (its process SIGKILLed included).

    Set after any uid change, which clears it.

    Raises:
        ConfineError: it cannot be set, or ``parent`` is already gone.
    """
    if _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise ConfineError(f"prctl(PDEATHSIG): {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:
        raise ConfineError("parent death: the parent exited during the launch")


def apply(spec: dict[str, Any]) -> None:
    """Apply every wall ``spec`` asks for, in the only order that works (cgroups and rlimits while still
    privileged, then no-new-privileges and Landlock, then the uid change, then the parent-death signal).

    Raises:
        ConfineError: a requested wall could not be applied.
    """
    launched_by = os.getppid()
    pid = str(os.getpid())
    made = []
    for parent in spec.get("new_cgroups", []):  # cgroups.launched_leaf: this process's own leaf
        leaf = os.path.join(parent, f"sandbox-pid-{pid}")
        try:
            os.mkdir(leaf, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfineError(f"making cgroup {leaf}: {exc.strerror}") from None
        made.append(os.path.join(leaf, "cgroup.procs"))
    for procs in [*spec.get("cgroups", []), *made]:
        try:
            with open(procs, "w") as handle:
                handle.write(pid)
        except OSError as exc:
            raise ConfineError(f"joining cgroup {procs}: {exc.strerror}") from None
    if spec.get("cpu_seconds"):
        seconds = int(spec["cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    if spec.get("niceness"):
        os.nice(int(spec["niceness"]))  # a pooled sandbox loads in the background; raised again when used
    if spec.get("no_new_privs"):
        no_new_privileges()
    landlock = spec.get("landlock")
    if landlock:
        restrict_file_system(landlock.get("read_only", []), landlock.get("read_write", []))
    uid = spec.get("uid")
    if uid is not None:
        gid = int(spec.get("gid", uid))
        os.setgroups([])
        os.setgid(gid)
        os.setuid(int(uid))
    if spec.get("parent_death"):
        die_with_parent(launched_by)


def encode_spec(spec: dict[str, Any]) -> str:
    """``spec`` (str, int, bool, list and dict values) as the launcher's first argument."""
    return marshal.dumps(spec).hex()


def main(argv: Sequence[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -I -S confine.py SPEC -- ARGV...", file=sys.stderr)
        return 2
    try:
        spec = marshal.loads(bytes.fromhex(argv[0]))
        if not isinstance(spec, dict):
            raise ValueError("the spec is not a mapping")
        apply(spec)
        # The environment the runtime was meant to have: this interpreter may have added to its own
        # (PEP 538 sets LC_CTYPE under the C locale), and nothing of that must leak into the sandbox.
        env = spec.get("env")
        os.execve(argv[2], list(argv[2:]), env if isinstance(env, dict) else os.environ)
    except (ConfineError, OSError, ValueError, EOFError, TypeError) as exc:
        print(f"conduit-confine: {exc}", file=sys.stderr)
    return LAUNCH_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
