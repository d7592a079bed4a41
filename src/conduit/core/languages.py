"""The execution languages: one entry each, the one table every front end and the composition root read.

An entry says what the language is called (``--lang`` names, file extensions), its MCP tool and
bridge method, what the tool tells an agent, the SDK its sandboxes load (and the one shown to
people), how to build its runtime (a :class:`~conduit.sandbox.base.Runtime`), and the engines a
program of it may run on, chosen per program (:mod:`conduit.core.engines`).
Adding a runtime is one folder under ``sandbox/`` and one entry here (or one engine of an entry).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from conduit.catalog import CONDUIT_PREFIX, ToolEntry
from conduit.config.schema import Config, PoolConfig
from conduit.sandbox.base import BridgeAddress, BridgeCall, Runtime
from conduit.sandbox.deno.runtime import DenoLauncher
from conduit.sandbox.host.pool import PooledRuntime, PoolSizing
from conduit.sandbox.host.program import typescript_module
from conduit.sandbox.isolate.runtime import IsolateRuntime, isolate_script
from conduit.sandbox.monty.runtime import MontyRuntime, MontyWorkers, find_monty
from conduit.sandbox.protocol import EXECUTE_PREFIX
from conduit.sandbox.pyodide.runtime import PyodideLauncher, default_pyodide_dir
from conduit.sandbox.pyodide.snapshot import PyodideSnapshot
from conduit.sandbox.walls import Walls
from conduit.sdk.python import generate_monty_sdk, generate_python_sdk
from conduit.sdk.typescript import generate_deno_sdk, generate_javascript_sdk, generate_typescript_sdk

SdkGenerator = Callable[[Iterable[ToolEntry], Iterable[str]], str]
"""``(entries, unavailable upstreams) -> source``: the SDK of the tools an execution may call."""
StubsGenerator = Callable[[Iterable[ToolEntry]], str]
ProgramWrapper = Callable[[str], str]
"""A program's source -> the source its sandbox runs (where the positions in its errors point)."""


@dataclass(frozen=True)
class RuntimeParts:
    """What the composition root has made by the time runtimes are built, and what they share."""

    config: Config
    deno: DenoLauncher
    """The Deno that TypeScript sandboxes are, and Python sandboxes run in."""
    bridge: BridgeAddress
    work_dir: Path
    walls: Walls
    bridge_call: BridgeCall
    """The bridge answering in-process, for sandboxes whose calls reach the host without a socket (Monty)."""

    @property
    def pyodide_dir(self) -> Path:
        return Path(self.config.pyodide_path) if self.config.pyodide_path else default_pyodide_dir()

    @property
    def cpus(self) -> int:
        return len(os.sched_getaffinity(0)) or 1

    def sizing(self, pool: PoolConfig, max_starting: int) -> PoolSizing:
        """A pool's configured size, starting at most ``max_starting`` sandboxes at once."""
        return PoolSizing(pool.min, pool.max, pool.max_idle_memory_mb, max_starting)


@dataclass(frozen=True)
class Engine:
    """One of the runtimes a language's programs may run on, chosen per program."""

    name: str
    """What a request's ``engine`` names and the outcome reports (``pyodide``, ``monty``)."""
    title: str
    """Its name for people (``Monty``)."""
    runtime: str
    """The runtime that is it: the language's own, or one :attr:`build` makes."""
    sdk: SdkGenerator
    """The SDK its sandboxes load."""
    build: Callable[[RuntimeParts], Runtime] | None = None
    """Builds its runtime (None: it is the language's own)."""
    wrap: ProgramWrapper | None = None
    """How its sandboxes wrap a program (None: they run it as written)."""


@dataclass(frozen=True)
class Language:
    name: str
    """The runtime's name: in ``/health``, metrics, the pools' config and ``Gateway.execute``."""
    aliases: tuple[str, ...]
    """What ``--lang`` and ``conduit tools --sdk`` accept for it."""
    extensions: tuple[str, ...]
    """File extensions ``conduit run`` runs in it."""
    description: str
    """What its MCP tool tells an agent."""
    sdk: SdkGenerator
    """The SDK its sandboxes load."""
    stubs: StubsGenerator
    """The SDK as people and agents read it (``conduit tools --sdk``)."""
    build: Callable[[RuntimeParts], Runtime]
    wrap: ProgramWrapper | None = None
    """How its sandboxes wrap a program, so that error positions can be mapped back (None: run as written)."""
    engines: tuple[Engine, ...] = ()
    """The engines its programs may run on, the language's own runtime's first (it runs every program);
    none: its runtime runs them all."""

    def engine(self, name: str) -> Engine:
        """The engine called ``name`` (one of :attr:`engines`)."""
        return next(engine for engine in self.engines if engine.name == name)

    @property
    def tool(self) -> str:
        """Its MCP tool: ``conduit__mcp_execute_<name>``."""
        return f"{CONDUIT_PREFIX}{self.bridge_method}"

    @property
    def bridge_method(self) -> str:
        return f"{EXECUTE_PREFIX}{self.name}"


def _typescript(parts: RuntimeParts) -> Runtime:
    config = parts.config
    sizing = parts.sizing(config.pools.typescript, 2 * parts.cpus)
    return PooledRuntime(parts.deno, sizing=sizing, memory_limit_mb=config.resource_limits.memory_limit_mb)


def _python(parts: RuntimeParts) -> Runtime:
    config = parts.config
    snapshot = PyodideSnapshot.for_runtime(parts.deno, parts.pyodide_dir, parts.work_dir)
    python = PyodideLauncher(deno=parts.deno, pyodide_dir=parts.pyodide_dir, snapshot=snapshot)
    sizing = parts.sizing(config.pools.python, parts.cpus)
    return PooledRuntime(python, sizing=sizing, memory_limit_mb=config.resource_limits.memory_limit_mb)


def _monty(parts: RuntimeParts) -> Runtime:
    config = parts.config
    workers = MontyWorkers(
        binary=find_monty(config.monty_path),
        walls=parts.walls,
        work_dir=parts.work_dir,
        call=parts.bridge_call,
        timeout_ms=config.resource_limits.timeout_ms,
    )
    sizing = parts.sizing(config.pools.monty, 2 * parts.cpus)
    return MontyRuntime(workers, sizing=sizing, memory_limit_mb=config.resource_limits.memory_limit_mb)


def _isolate(parts: RuntimeParts) -> Runtime:
    config = parts.config
    return IsolateRuntime(
        bridge=parts.bridge,
        work_dir=parts.work_dir,
        walls=parts.walls,
        memory_limit_mb=config.resource_limits.memory_limit_mb,
        sizing=parts.sizing(config.pools.isolate, parts.cpus),
    )


_CALLS: Final = (
    "Tools: `await tools.<package>.<tool>({args})`, typed as conduit__mcp_read_tool_schema shows; failures {throw}."
)

_TS_DESCRIPTION: Final = (
    "Run TypeScript in a fresh, sealed Deno sandbox. "
    + _CALLS.format(args="...", throw="throw with a numeric `code`")
    + " A top-level `return` value becomes `result`."
)

_ISOLATE_DESCRIPTION: Final = (
    "Run plain JavaScript in a fresh V8 isolate: fastest start, ECMAScript built-ins only. Arguments and `tools` "
    "as for TypeScript."
)

_PYTHON_DESCRIPTION: Final = (
    "Run Python in a fresh, sealed sandbox: Monty (a fast subset) when the program fits, else Pyodide "
    "(CPython 3.14). Arguments (besides `engine`) and tools as for TypeScript, called "
    "`await tools.<package>.<tool>(arg=...)`; failures raise `ToolError` (`.code`). The last expression's value "
    "becomes `result`."
)

LANGUAGES: Final = (
    Language(
        name="typescript",
        aliases=("ts", "typescript"),
        extensions=(".ts", ".mts"),
        description=_TS_DESCRIPTION,
        sdk=generate_deno_sdk,
        stubs=generate_typescript_sdk,
        build=_typescript,
        wrap=typescript_module,
    ),
    Language(
        name="python",
        aliases=("py", "python"),
        extensions=(".py",),
        description=_PYTHON_DESCRIPTION,
        sdk=generate_python_sdk,
        stubs=generate_python_sdk,
        build=_python,
        engines=(
            Engine("pyodide", "Pyodide", runtime="python", sdk=generate_python_sdk),
            Engine("monty", "Monty", runtime="monty", sdk=generate_monty_sdk, build=_monty),
        ),
    ),
    Language(
        name="isolate",
        aliases=("js", "javascript", "isolate"),
        extensions=(".js", ".mjs"),
        description=_ISOLATE_DESCRIPTION,
        sdk=generate_javascript_sdk,
        stubs=generate_javascript_sdk,
        build=_isolate,
        wrap=isolate_script,
    ),
)
"""In the order the execution tools are listed."""

BY_NAME: Final[Mapping[str, Language]] = {language.name: language for language in LANGUAGES}
BY_TOOL: Final[Mapping[str, Language]] = {language.tool: language for language in LANGUAGES}
BY_ALIAS: Final[Mapping[str, Language]] = {alias: language for language in LANGUAGES for alias in language.aliases}
BY_EXTENSION: Final[Mapping[str, Language]] = {
    extension: language for language in LANGUAGES for extension in language.extensions
}
