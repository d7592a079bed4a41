"""Python sandboxes: CPython (Pyodide, WASM) in a fresh Deno process per program.

The harness loads Pyodide before it is given a job: with read access to Pyodide's own files
(and the memory snapshot) only, it restores the interpreter from the snapshot (~0.2 s; a full
load without one takes ~2 s), caps the WASM memory at the sandbox's limit, connects to the
bridge, revokes every Deno permission, and only then says it is ready (see
``harness/pyodide_harness.js``). A pool of such sandboxes started ahead of demand makes a
Python execution answer in milliseconds while each still runs exactly once.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Final

from conduit.errors import InvalidParamsError, SandboxStartError
from conduit.sandbox.base import BridgeAddress
from conduit.sandbox.deno.runtime import DenoLauncher, DenoSandbox, wait_until_ready
from conduit.sandbox.pyodide.snapshot import PyodideSnapshot

logger = logging.getLogger(__name__)

HARNESS: Final = Path(__file__).parent / "pyodide_harness.js"
LOAD_TIMEOUT: Final = 60.0
MIN_MEMORY_MB: Final = 64
"""Pyodide's WASM module starts at 30 MiB; below this a program has no room to run."""
PYODIDE_BASELINE_MB: Final = 256
"""Memory a loaded Pyodide process holds besides Python's WASM memory (~170 MB measured), for its cgroup cap."""
JS_HEAP_MB: Final = 256
"""V8 heap for the JavaScript side of Pyodide (Python's own memory is the capped WASM memory)."""


def default_pyodide_dir() -> Path:
    """Where ``make setup`` puts Pyodide's npm package: inside Conduit's virtualenv."""
    return Path(sys.prefix) / "pyodide" / "node_modules" / "pyodide"


def check_pyodide_dir(path: Path) -> str | None:
    """Why ``path`` is not a usable Pyodide package, or None when it is."""
    missing = [name for name in ("pyodide.mjs", "pyodide.asm.wasm", "python_stdlib.zip") if not (path / name).is_file()]
    if missing:
        return f"Pyodide files missing in {path} ({', '.join(missing)}): run `make setup`"
    return None


class PyodideLauncher:
    """Starts Python sandboxes: Deno + Pyodide, sealed before any program arrives."""

    name = "python"

    def __init__(self, *, deno: DenoLauncher, pyodide_dir: Path, snapshot: PyodideSnapshot | None = None) -> None:
        self._deno = deno
        self._dir = pyodide_dir
        self._bridge: BridgeAddress = deno.bridge
        self.snapshot = snapshot

    def readable(self, snapshot: Path | None) -> list[str]:
        """What a Python sandbox may read: Pyodide's directory, and the snapshot when it lives elsewhere."""
        if snapshot is None or snapshot.is_relative_to(self._dir):
            return [str(self._dir)]
        return [str(self._dir), str(snapshot)]

    def argv(self, memory_limit_mb: int, snapshot: Path | None = None) -> list[str]:
        return [
            *self._deno.sandbox_flags(JS_HEAP_MB, memory_limit_mb, f"--allow-read={','.join(self.readable(snapshot))}"),
            str(HARNESS),
            str(self._dir),
            str(memory_limit_mb),
            self._bridge.host,
            str(self._bridge.port),
            *([str(snapshot)] if snapshot else []),
        ]

    def uid_probe(self, home: Path) -> tuple[list[str], dict[str, str]]:
        """Deno reading Pyodide's module: exits 0 when Pyodide's files are readable as the sandbox uid."""
        read = f"Deno.readFileSync({json.dumps(str(self._dir / 'pyodide.mjs'))})"
        return [self._deno.deno_path, "eval", read], self._deno.env(home)

    def problem(self) -> str | None:
        """Why Python sandboxes cannot start, or None."""
        return self._deno.problem() or check_pyodide_dir(self._dir)

    async def prepare(self, memory_limit_mb: int, *, niceness: int = 0) -> DenoSandbox:
        if memory_limit_mb < MIN_MEMORY_MB:
            raise InvalidParamsError(f"limits.memoryLimitMb: Python needs at least {MIN_MEMORY_MB}")
        problem = check_pyodide_dir(self._dir)
        if problem:
            raise SandboxStartError(problem)
        snapshot = await self.snapshot.path() if self.snapshot else None
        profile = self._deno.profile(str(HARNESS.parent), *self.readable(snapshot), baseline_mb=PYODIDE_BASELINE_MB)
        argv = self.argv(memory_limit_mb, snapshot)
        started = await self._deno.spawn(argv, profile, memory_limit_mb, "python", niceness)
        head = await wait_until_ready(started, LOAD_TIMEOUT, "Python sandbox")
        return DenoSandbox(started, self._bridge, str, stdout_head=head, reaper=self._deno.reaper)
