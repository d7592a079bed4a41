"""Python sandboxes: CPython (Pyodide, WASM) in a fresh Deno process per program.

Loading Pyodide takes about two seconds, so the harness does it before it is given a job:
it loads Pyodide with read access to Pyodide's own files only, caps the WASM memory at the
sandbox's limit, connects to the bridge, revokes every Deno permission, and only then says
it is ready (see ``harness/pyodide_harness.js``). A pool of such sandboxes started ahead of
demand makes a Python execution answer in milliseconds while each still runs exactly once.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Final

from conduit.errors import INVALID_PARAMS, ConduitError, SandboxStartError
from conduit.sandbox.base import BridgeAddress
from conduit.sandbox.deno import DenoRuntime, DenoSandbox, wait_until_ready

logger = logging.getLogger(__name__)

PYODIDE_VERSION: Final = "314.0.7"
HARNESS: Final = Path(__file__).parent / "harness" / "pyodide_harness.js"
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


class PyodideRuntime:
    """Starts Python sandboxes: Deno + Pyodide, sealed before any program arrives."""

    name = "python"

    def __init__(self, *, deno: DenoRuntime, pyodide_dir: Path) -> None:
        self._deno = deno
        self._dir = pyodide_dir
        self._bridge: BridgeAddress = deno.bridge

    def argv(self, memory_limit_mb: int) -> list[str]:
        return [
            *self._deno.sandbox_flags(JS_HEAP_MB, f"--allow-read={self._dir}"),
            str(HARNESS),
            str(self._dir),
            str(memory_limit_mb),
            self._bridge.host,
            str(self._bridge.port),
        ]

    def problem(self) -> str | None:
        """Why Python sandboxes cannot start, or None."""
        return self._deno.problem() or check_pyodide_dir(self._dir)

    async def prepare(self, memory_limit_mb: int) -> DenoSandbox:
        if memory_limit_mb < MIN_MEMORY_MB:
            raise ConduitError(f"limits.memoryLimitMb: Python needs at least {MIN_MEMORY_MB}", code=INVALID_PARAMS)
        problem = check_pyodide_dir(self._dir)
        if problem:
            raise SandboxStartError(problem)
        profile = self._deno.profile(str(self._dir), baseline_mb=PYODIDE_BASELINE_MB)
        process, cgroup = await self._deno.start(self.argv(memory_limit_mb), profile, memory_limit_mb, "python")
        head = await wait_until_ready(process, cgroup, LOAD_TIMEOUT, "Python sandbox")
        return DenoSandbox(process, self._bridge, str, stdout_head=head, cgroup=cgroup)
