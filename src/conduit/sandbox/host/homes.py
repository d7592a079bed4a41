"""Private directories of Deno sandboxes: a fresh ``HOME`` and ``DENO_DIR`` per sandbox, gone with it.

Deno keeps what a program can store without any file permission under ``DENO_DIR``: Web Storage
(``localStorage``, ``sessionStorage``) and the Cache API (``caches``) in ``location_data/``, and its
own caches of what the program imported (transpiled TypeScript in ``gen/``, the V8 code cache, module
analysis databases). A directory shared by sandboxes would carry all of these from one execution to
the next, and from one tenant to the next. So every sandbox gets a directory of its own, made just
before its process starts and removed once the process is gone.

They live on tmpfs (``/dev/shm``) where the machine has it: what a program stores there is memory
charged to the sandbox's own cgroup (the Cache API cannot fill a disk), and Deno's cache databases
cost no disk I/O. Each directory is seeded with Deno's caches for Conduit's own harness, taken once
from a run of the harness on a fixed job (no program of anyone's), so a fresh directory does not
make every sandbox compile the harness again (~1 ms instead of ~6 ms per start, measured).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

TMPFS: Final = Path("/dev/shm")
PREFIX: Final = "conduit-homes-"
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"


def _stale(root: Path) -> None:
    """Remove the home roots of Conduit processes that no longer exist (killed before they cleaned up)."""
    for path in root.glob(f"{PREFIX}*"):
        pid = path.name.removeprefix(PREFIX).split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _usable_tmpfs(path: Path) -> bool:
    try:
        return path.is_dir() and os.access(path, os.W_OK | os.X_OK) and os.statvfs(path).f_bavail > 0
    except OSError:
        return False


class SandboxHomes:
    """Makes, seeds and removes the private directory of each Deno sandbox."""

    def __init__(self, fallback: Path, tmpfs: Path = TMPFS) -> None:
        """Homes go under ``tmpfs`` when it is usable, else under ``fallback`` (Conduit's work directory)."""
        parent = tmpfs if _usable_tmpfs(tmpfs) else fallback
        if parent == tmpfs:
            _stale(tmpfs)
        self.root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent))
        os.chmod(self.root, 0o711)  # a sandbox running as another uid passes through to its own home
        self.on_tmpfs = parent == tmpfs
        self._counter = itertools.count(1)

    def make(self, owner: int | None = None, seed: Mapping[str, bytes] | None = None) -> Path:
        """A new private directory holding only ``seed`` (file name -> content), owned by uid ``owner``."""
        home = self.root / f"home-{next(self._counter)}"
        home.mkdir(mode=0o700)
        for name, content in (seed or {}).items():
            (home / name).write_bytes(content)
            if owner is not None:
                os.chown(home / name, owner, owner)
        if owner is not None:
            os.chown(home, owner, owner)
        return home

    def remove(self, home: Path) -> None:
        """Remove a home and everything the sandbox left in it (its process must be gone)."""
        shutil.rmtree(home, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def harvest(home: Path) -> dict[str, bytes]:
    """The seed for new homes: the Deno caches a Conduit-owned run left in ``home``.

    Only the SQLite databases at the top of ``home`` are taken (the V8 code cache and Deno's module
    analysis), each checkpointed into one file first; Web Storage and the Cache API
    (``location_data/``) and emitted sources (``gen/``) never are.
    """
    seed: dict[str, bytes] = {}
    for path in sorted(home.iterdir()):
        if not path.is_file() or path.name.endswith(("-wal", "-shm", "-journal")):
            continue
        with path.open("rb") as file:
            if file.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                continue
        try:
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            logger.info("not seeding sandbox homes with %s: %s", path.name, exc)
            continue
        seed[path.name] = path.read_bytes()
    return seed
