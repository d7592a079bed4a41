"""The Pyodide memory snapshot Python sandboxes boot from, made once per Pyodide and Deno build.

Starting CPython in WASM and importing the standard-library modules Conduit uses takes ~2 s
of CPU per sandbox; restoring a snapshot of the interpreter's memory taken right after that
takes ~0.2 s. The snapshot is made by ``harness/pyodide_snapshot.js`` (Pyodide alone: no
program, no bridge, no secret is in it) and kept beside Pyodide's own files, named by a key
of everything it depends on (Pyodide's files, the Deno binary, the snapshot scripts), so a
changed build makes a new one. A sha256 written next to it is checked before it is used; a
missing, stale or damaged snapshot is made again. When Pyodide's directory is not writable
the snapshot goes to Conduit's private work directory and is made once per start.

Only Conduit's own user can write either place; sandboxes read it like Pyodide's files.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Final

import anyio

from conduit.errors import SandboxStartError
from conduit.sandbox.deno.runtime import RUN_FLAGS, DenoLauncher

logger = logging.getLogger(__name__)

MAKER: Final = Path(__file__).parent / "pyodide_snapshot.js"
SCRIPTS: Final = (MAKER, MAKER.parent / "pyodide_common.js")
KEYED_FILES: Final = ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip")
MAKE_TIMEOUT: Final = 120.0
MIN_SIZE: Final = 1 << 20
"""A snapshot is ~30 MiB; anything under this is not one."""


def snapshot_key(pyodide_dir: Path, deno_path: str) -> str:
    """A digest of everything a snapshot depends on: Pyodide's files, Deno's binary, the scripts."""
    digest = hashlib.sha256()
    for path in [*(pyodide_dir / name for name in KEYED_FILES), Path(deno_path)]:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    for script in SCRIPTS:
        digest.update(script.read_bytes())
    return digest.hexdigest()[:20]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path) -> bool:
    """Whether ``path`` is a complete snapshot: present, plausible in size, matching its recorded sha256."""
    try:
        if path.stat().st_size < MIN_SIZE:
            return False
        recorded = path.with_suffix(".sha256").read_text().strip()
    except OSError:
        return False
    return recorded == _sha256(path)


def _store(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``directory/name`` (readable by sandboxes) atomically, with its sha256 beside it."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = directory / name
    suffix = f".{os.getpid()}.{time.monotonic_ns()}.tmp"
    pairs = ((target.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode()), (target, data))
    for final, content in pairs:
        temporary = final.with_name(final.name + suffix)
        try:
            temporary.write_bytes(content)
            temporary.chmod(0o644)
            temporary.replace(final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    return target


class PyodideSnapshot:
    """Finds or makes the snapshot for one Pyodide directory; ``path()`` is safe to await concurrently."""

    def __init__(self, *, deno_path: str, deno_env: dict[str, str], pyodide_dir: Path, work_dir: Path) -> None:
        self._deno = deno_path
        self._env = deno_env
        self._dir = pyodide_dir
        self._places = (pyodide_dir / ".conduit-snapshots", work_dir / "pyodide-snapshots")
        """Where snapshots are looked for and kept, in order: beside Pyodide, else the work directory."""
        self._lock = anyio.Lock()
        self._path: Path | None = None
        self.failed: str | None = None
        """Why no snapshot could be made (sandboxes then load Pyodide in full), or None."""

    @classmethod
    def for_runtime(cls, deno: DenoLauncher, pyodide_dir: Path, work_dir: Path) -> PyodideSnapshot:
        """The snapshot made with ``deno``'s binary and environment."""
        return cls(
            deno_path=deno.deno_path, deno_env=deno.env(deno.own_home), pyodide_dir=pyodide_dir, work_dir=work_dir
        )

    @property
    def ready(self) -> Path | None:
        """The snapshot, if it has been found or made already."""
        return self._path

    async def path(self) -> Path | None:
        """The snapshot file, made first if needed; None when it cannot be made (the reason is logged)."""
        async with self._lock:
            if self._path is not None or self.failed is not None:
                return self._path
            try:
                name = f"snapshot-{snapshot_key(self._dir, self._deno)}.bin"
            except OSError as exc:
                self.failed = f"cannot read Pyodide's files: {exc.strerror or exc}"
                return None
            for directory in self._places:
                candidate = directory / name
                if await anyio.to_thread.run_sync(_verified, candidate):
                    self._path = candidate
                    return candidate
            try:
                data = await self._make()
            except SandboxStartError as exc:
                self.failed = exc.message
                logger.warning("Python sandboxes will load Pyodide in full (~2 s each): %s", exc.message)
                return None
            for directory in self._places:
                try:
                    self._path = await anyio.to_thread.run_sync(_store, directory, name, data)
                    return self._path
                except OSError as exc:
                    logger.info("cannot keep the Pyodide snapshot in %s: %s", directory, exc.strerror or exc)
            self.failed = "no writable place for the Pyodide snapshot"
            return None

    async def _make(self) -> bytes:
        started = time.perf_counter()
        argv = [self._deno, *RUN_FLAGS, "--cached-only", f"--allow-read={self._dir}", str(MAKER), str(self._dir)]
        try:
            with anyio.fail_after(MAKE_TIMEOUT):
                done = await anyio.run_process(argv, env=self._env, check=False, stdin=subprocess.DEVNULL)
        except (OSError, TimeoutError) as exc:
            raise SandboxStartError(f"the Pyodide snapshot could not be made: {exc}") from exc
        if done.returncode != 0 or len(done.stdout) < MIN_SIZE:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            detail = lines[-1] if lines else f"exit status {done.returncode}"
            raise SandboxStartError(f"the Pyodide snapshot could not be made: {detail}")
        logger.info(
            "made the Pyodide memory snapshot (%.1f MiB) in %.1f s",
            len(done.stdout) / 2**20,
            time.perf_counter() - started,
        )
        return bytes(done.stdout)
