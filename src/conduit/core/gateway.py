"""The gateway: owns the upstreams, the bridge, the runtimes, and runs executions.

Front ends (the MCP server over stdio or HTTP, the bridge's master-token methods) call
:meth:`Gateway.execute`, :meth:`Gateway.call_tool` and :meth:`Gateway.discover`; nothing
here knows about MCP transports or Starlette.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import mcp_types as types
from pydantic import ValidationError

from conduit.bridge.server import BridgeServer
from conduit.bridge.sessions import Principal, SessionRegistry
from conduit.config.loader import format_validation_error
from conduit.config.schema import Config, PoolConfig, UpstreamConfig
from conduit.core.admission import Admission
from conduit.core.ratelimit import RateLimiter
from conduit.core.validation import check_arguments, usable_schema
from conduit.errors import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    ConduitError,
    ToolDeniedError,
    UnknownToolError,
)
from conduit.observability.context import EXECUTION_ID
from conduit.observability.metrics import LiveState, Metrics, execution_outcome, tool_outcome
from conduit.observability.tracing import Tracing, traces_endpoint
from conduit.sandbox.base import Job, Limits, RunOutcome, Runtime
from conduit.sandbox.deno import DenoRuntime, find_deno
from conduit.sandbox.isolate import IsolateRuntime
from conduit.sandbox.pool import PooledRuntime, PoolSizing
from conduit.sandbox.process import use_pidfd_child_watcher
from conduit.sandbox.pyodide import PyodideRuntime, default_pyodide_dir
from conduit.sandbox.pyodide_snapshot import PyodideSnapshot
from conduit.sandbox.walls import Walls
from conduit.sdk.python import generate_python_sdk
from conduit.sdk.typescript import generate_deno_sdk, generate_javascript_sdk
from conduit.security.allowlist import Allowlist, AllowlistError
from conduit.upstream.network import policy_for
from conduit.upstream.registry import Catalog, ToolEntry, UpstreamRegistry, qualify

logger = logging.getLogger(__name__)
AUDIT = logging.getLogger("conduit.audit")

LANGUAGES: Final = ("typescript", "python", "isolate")
SDK_GENERATORS: Final = {
    "typescript": generate_deno_sdk,
    "python": generate_python_sdk,
    "isolate": generate_javascript_sdk,
}
_SDK_CACHE_SIZE: Final = 64


class Gateway:
    """Everything behind Conduit's front ends. Create with :meth:`open`."""

    def __init__(
        self,
        config: Config,
        *,
        master_token: str,
        registry: UpstreamRegistry,
        bridge: BridgeServer,
        sessions: SessionRegistry,
        runtimes: Mapping[str, Runtime],
        tracing: Tracing | None = None,
        walls: Walls | None = None,
    ) -> None:
        self.config = config
        self.tracing = tracing or Tracing(None, "conduit")
        self.walls = walls
        self.master_token = master_token
        self.registry = registry
        self.bridge = bridge
        self.sessions = sessions
        self.runtimes = dict(runtimes)
        rl = config.resource_limits
        self.limits = Limits(rl.timeout_ms, rl.memory_limit_mb, rl.max_output_bytes, rl.max_log_entries)
        self.admission = Admission(config.max_concurrent, config.max_queue)
        self.rate_limiter = RateLimiter(config.rate_limit)
        self._sdk_cache: OrderedDict[tuple[Any, ...], str] = OrderedDict()
        self.metrics = Metrics()
        self.metrics.watch(
            LiveState(
                queue_depth=lambda: self.admission.waiting,
                running=lambda: self.admission.running,
                pooled=self._pooled,
                pooled_memory=self._pooled_memory,
                upstreams=lambda: {cid: conn.connected for cid, conn in self.registry.connections.items()},
            )
        )

    @classmethod
    @asynccontextmanager
    async def open(
        cls, config: Config, *, master_token: str, base_dir: Path, host_env: Mapping[str, str]
    ) -> AsyncIterator[Gateway]:
        """Start the bridge and runtimes; on exit stop upstreams and remove private files."""
        use_pidfd_child_watcher()
        work_dir = Path(tempfile.mkdtemp(prefix="conduit-"))
        walls = Walls.detect(config.resource_limits.timeout_ms, enabled=config.isolation.enabled)
        deno: DenoRuntime | None = None
        try:
            os.chmod(work_dir, 0o711)  # sandboxes running as another uid pass through to their own directory
            async with anyio.create_task_group() as tg:
                sessions = SessionRegistry(master_token)
                registry = UpstreamRegistry(
                    base_dir=base_dir, host_env=host_env, tg=tg, network=policy_for(config.network)
                )
                for upstream in config.upstreams:
                    registry.add(upstream)
                holder: list[Gateway] = []
                bridge = BridgeServer(sessions, _Deferred(holder))
                address = await bridge.start(tg)
                deno = DenoRuntime(
                    deno_path=find_deno(config.deno_path), bridge=address, work_dir=work_dir, walls=walls
                )
                deno.reaper = tg
                pyodide_dir = Path(config.pyodide_path) if config.pyodide_path else default_pyodide_dir()
                await _probe_walls(walls, deno, pyodide_dir)
                walls.check_required(config.isolation.require)
                memory = config.resource_limits.memory_limit_mb
                cpus = len(os.sched_getaffinity(0)) or 1
                python = PyodideRuntime(
                    deno=deno,
                    pyodide_dir=pyodide_dir,
                    snapshot=PyodideSnapshot.for_runtime(deno, pyodide_dir, work_dir),
                )
                pools = {
                    "typescript": PooledRuntime(
                        deno, sizing=_sizing(config.pools.typescript, 2 * cpus), memory_limit_mb=memory
                    ),
                    "python": PooledRuntime(python, sizing=_sizing(config.pools.python, cpus), memory_limit_mb=memory),
                }
                for pool in pools.values():
                    pool.start(tg)
                isolate = IsolateRuntime(
                    bridge=address,
                    work_dir=work_dir,
                    walls=walls,
                    memory_limit_mb=memory,
                    sizing=_sizing(config.pools.isolate, cpus),
                )
                await isolate.start(tg)
                endpoint = traces_endpoint(config.tracing.otlp_endpoint, host_env)
                tracing = Tracing(endpoint, config.tracing.service_name)
                gateway = cls(
                    config,
                    master_token=master_token,
                    registry=registry,
                    bridge=bridge,
                    sessions=sessions,
                    runtimes={**pools, "isolate": isolate},
                    tracing=tracing,
                    walls=walls,
                )
                holder.append(gateway)
                try:
                    yield gateway
                finally:
                    with anyio.CancelScope(shield=True):
                        await registry.aclose()
                        await isolate.aclose()
                        for pool in pools.values():
                            await pool.aclose()
                        await bridge.aclose()
                        await anyio.to_thread.run_sync(tracing.shutdown)
                    tg.cancel_scope.cancel()
        finally:
            if deno is not None:
                deno.homes.close()
            walls.close()
            shutil.rmtree(work_dir, ignore_errors=True)

    # -- executions -------------------------------------------------------------------------------------

    def parse_allowlist(self, allowed_tools: Any) -> Allowlist:
        """The allowlist for an execution request (the configured default when none is given).

        Raises:
            ConduitError: ``allowed_tools`` is not a list of valid patterns.
        """
        if allowed_tools is None:
            allowed_tools = self.config.default_allowed_tools
        if not isinstance(allowed_tools, list):
            raise ConduitError("allowedTools must be an array of strings", code=INVALID_PARAMS)
        try:
            return Allowlist.parse(allowed_tools)
        except AllowlistError as exc:
            raise ConduitError(f"allowedTools: {exc}", code=INVALID_PARAMS) from None

    async def execute(
        self,
        language: str,
        code: Any,
        *,
        allowed_tools: Any = None,
        limits: Any = None,
        on_output: Callable[[str, str], None] | None = None,
    ) -> RunOutcome:
        """Run one program in a fresh sandbox.

        Args:
            language: ``typescript``, ``python`` or ``isolate``.
            code: the program.
            allowed_tools: allowlist patterns (default: ``defaultAllowedTools``).
            limits: requested limits (can only lower the configured ones).
            on_output: called with ``(stream, text)`` as output arrives, for live streaming.

        Raises:
            ConduitError: invalid request (INVALID_PARAMS), unavailable runtime, or busy (-32000).
        """
        if not isinstance(code, str):
            raise ConduitError("code must be a string", code=INVALID_PARAMS)
        size = len(code.encode("utf-8", "surrogatepass"))
        if size > self.config.max_code_bytes:
            raise ConduitError(
                f"code is {size} bytes; the limit is {self.config.max_code_bytes} bytes", code=INVALID_PARAMS
            )
        if limits is not None and not isinstance(limits, dict):
            raise ConduitError("limits must be an object", code=INVALID_PARAMS)
        effective = self.limits.lowered(limits)
        allowlist = self.parse_allowlist(allowed_tools)
        runtime = self.runtimes.get(language)
        if runtime is None:
            raise ConduitError(f"the {language} runtime is not available yet in this version", code=METHOD_NOT_FOUND)
        execution_id = uuid.uuid4().hex
        token = EXECUTION_ID.set(execution_id)
        started = time.perf_counter()
        outcome_label = "internal_error"
        with self.tracing.execution(execution_id, language) as span:
            try:
                async with self.admission.slot():
                    sdk = self._sdk(language, await self.registry.catalog(), allowlist)
                    sandbox = await runtime.prepare(effective.memory_limit_mb)
                    with self.sessions.session(execution_id, allowlist) as session:
                        logger.info("execution started", extra={"runtime": language})
                        outcome = await sandbox.run(Job(code, sdk, session.token, effective, on_output))
                outcome_label = execution_outcome(outcome.error.code if outcome.error else None)
                span["exit_code"] = outcome.exit_code
                logger.info(
                    "execution ended",
                    extra={
                        "runtime": language,
                        "outcome": outcome_label,
                        "exit_code": outcome.exit_code,
                        "duration_ms": round(outcome.duration_ms, 1),
                    },
                )
                return outcome
            except ConduitError as exc:
                outcome_label = execution_outcome(exc.code)
                raise
            except BaseException:
                outcome_label = "cancelled"
                raise
            finally:
                span["outcome"] = outcome_label
                if outcome_label != "invalid":
                    self.metrics.executions.labels(language, outcome_label).inc()
                    self.metrics.execution_seconds.labels(language).observe(time.perf_counter() - started)
                EXECUTION_ID.reset(token)

    def _sdk(self, language: str, catalog: Catalog, allowlist: Allowlist) -> str:
        """The SDK of the tools ``allowlist`` covers, generated once per catalog version and set of tools.

        Nothing outside the allowlist is in it (names, descriptions, schemas, upstreams): a program cannot
        discover a tool it may not call. Calling one anyway (``$raw``) fails on the host with the same
        error as a tool that does not exist.
        """
        permitted = tuple(entry for entry in catalog.tools if allowlist.permits(entry.upstream, entry.name))
        key = (language, self.registry.version, tuple(entry.qualified for entry in permitted))
        cached = self._sdk_cache.get(key)
        if cached is None:
            cached = SDK_GENERATORS[language](permitted)
            self._sdk_cache[key] = cached
            if len(self._sdk_cache) > _SDK_CACHE_SIZE:
                self._sdk_cache.popitem(last=False)
        else:
            self._sdk_cache.move_to_end(key)
        return cached

    # -- tools ------------------------------------------------------------------------------------------

    async def discover(self, allowlist: Allowlist, query: str | None = None) -> list[ToolEntry]:
        """The tools ``allowlist`` covers, optionally filtered by a case-insensitive substring."""
        catalog = await self.registry.catalog()
        needle = (query or "").lower()
        return [
            entry
            for entry in catalog.tools
            if allowlist.permits(entry.upstream, entry.name)
            and (not needle or needle in entry.qualified.lower() or needle in entry.description.lower())
        ]

    async def call_tool(self, name: Any, arguments: Any, allowlist: Allowlist) -> types.CallToolResult:
        """Call an upstream tool by qualified name (``ns__tool`` or ``ns.tool``) if ``allowlist`` covers it.

        Raises:
            ToolDeniedError: the allowlist does not cover the tool (checked before it is looked up).
            UnknownToolError: no such tool.
            UpstreamError: the upstream failed.
            ConduitError: invalid name or arguments (INVALID_PARAMS).
        """
        if not isinstance(name, str) or not name:
            raise ConduitError("name must be a non-empty string", code=INVALID_PARAMS)
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise ConduitError("arguments must be an object", code=INVALID_PARAMS)
        qualified = qualify(name)
        upstream, sep, tool = qualified.partition("__")
        if not sep:
            raise UnknownToolError(f"unknown tool {name!r}: use '<upstream>__<tool>' or '<upstream>.<tool>'")
        if not allowlist.permits(upstream, tool):
            raise ToolDeniedError(f"tool {qualified!r} is not in this execution's allowlist")
        entry = await self.registry.resolve(qualified)
        if self.config.validation_mode == "strict" and not usable_schema(entry.input_schema):
            raise ConduitError(
                f"tool {qualified!r} has no input schema, and validationMode is strict", code=INVALID_PARAMS
            )
        problems = check_arguments(entry.input_schema, arguments)
        if problems:
            details = "; ".join(str(problem) for problem in problems)
            raise ConduitError(f"invalid arguments for {qualified!r}: {details}", code=INVALID_PARAMS)
        return await self.registry.call(entry, arguments)

    async def _audited_call(self, principal: Principal, name: Any, arguments: Any) -> types.CallToolResult:
        """A bridge tool call, counted, timed and written to the audit log (never its arguments or result)."""
        started = time.perf_counter()
        upstream = qualify(name).partition("__")[0] if isinstance(name, str) else "?"
        if upstream not in self.registry.connections:
            upstream = "unknown"
        code: int | None = None
        is_error = False
        tool = name if isinstance(name, str) else "?"
        with self.tracing.tool_call(principal.execution_id, tool, upstream) as span:
            try:
                result = await self.call_tool(name, arguments, principal.allowlist)
                is_error = bool(result.is_error)
                return result
            except ConduitError as exc:
                code = exc.code
                raise
            finally:
                seconds = time.perf_counter() - started
                outcome = tool_outcome(code, is_error)
                span["outcome"] = outcome
                self.metrics.tool_calls.labels(upstream, outcome).inc()
                self.metrics.tool_call_seconds.labels(upstream).observe(seconds)
                AUDIT.info(
                    "tool call",
                    extra={
                        "execution_id": principal.execution_id or "master",
                        "tool": tool,
                        "outcome": outcome,
                        "duration_ms": round(seconds * 1000, 2),
                    },
                )

    def _pooled(self) -> dict[str, int]:
        counts = {name: runtime.ready for name, runtime in self.runtimes.items() if isinstance(runtime, PooledRuntime)}
        isolate = self.runtimes.get("isolate")
        if isinstance(isolate, IsolateRuntime):
            counts["isolate"] = isolate.idle
        return counts

    def _pooled_memory(self) -> dict[str, int]:
        return {
            name: runtime.idle_memory_bytes
            for name, runtime in self.runtimes.items()
            if isinstance(runtime, (PooledRuntime, IsolateRuntime))
        }

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether every runtime can run programs and no upstream is failing, with the details."""
        runtimes: dict[str, dict[str, Any]] = {}
        pooled, pooled_memory = self._pooled(), self._pooled_memory()
        for name, runtime in self.runtimes.items():
            problem = runtime.problem() if isinstance(runtime, (PooledRuntime, IsolateRuntime)) else None
            entry: dict[str, Any] = {"status": "unavailable" if problem else "ok"}
            if problem:
                entry["reason"] = problem
            entry["pooled"] = pooled.get(name, 0)
            entry["pooledMemoryMb"] = round(pooled_memory.get(name, 0) / 2**20, 1)
            runtimes[name] = entry
        upstreams: dict[str, dict[str, Any]] = {}
        for upstream_id, connection in self.registry.connections.items():
            if connection.connected:
                upstreams[upstream_id] = {"status": "connected"}
            elif connection.last_error:
                upstreams[upstream_id] = {"status": "failing", "reason": connection.last_error}
            else:
                upstreams[upstream_id] = {"status": "idle"}
        healthy = all(entry["status"] == "ok" for entry in runtimes.values()) and all(
            entry["status"] != "failing" for entry in upstreams.values()
        )
        isolation = {layer.name: layer.active for layer in self.walls.layers} if self.walls else {}
        report = {"status": "ok" if healthy else "degraded", "runtimes": runtimes, "upstreams": upstreams}
        return healthy, {**report, "isolation": isolation}

    def register_upstream(self, raw: Any) -> str:
        """Add an upstream at run time (master token only).

        Raises:
            ConduitError: the definition is invalid or the id is taken.
        """
        try:
            upstream = UpstreamConfig.model_validate(raw)
        except ValidationError as exc:
            raise ConduitError(f"invalid upstream:\n{format_validation_error(exc)}", code=INVALID_PARAMS) from None
        self.registry.add(upstream)
        logger.info("upstream %s registered at run time", upstream.id)
        return upstream.id

    # -- bridge -----------------------------------------------------------------------------------------

    async def handle_bridge(self, principal: Principal, method: str, params: Mapping[str, Any]) -> Any:
        """Serve one authenticated bridge request (see :mod:`conduit.bridge.server`)."""
        if method == "mcp_discover_tools":
            query = params.get("query")
            if query is not None and not isinstance(query, str):
                raise ConduitError("query must be a string", code=INVALID_PARAMS)
            return [entry.describe() for entry in await self.discover(principal.allowlist, query)]
        if method == "mcp_call_tool":
            result = await self._audited_call(principal, params.get("name"), params.get("arguments"))
            return result.model_dump(mode="json", by_alias=True, exclude_none=True)
        if method.startswith("mcp_execute_") and method.removeprefix("mcp_execute_") in LANGUAGES:
            outcome = await self.execute(
                method.removeprefix("mcp_execute_"),
                params.get("code"),
                allowed_tools=params.get("allowedTools"),
                limits=params.get("limits"),
            )
            return outcome_payload(outcome)
        if method == "mcp_register_upstream":
            return {"id": self.register_upstream(params.get("upstream", params))}
        raise ConduitError(f"unknown method {method!r}", code=METHOD_NOT_FOUND)


async def _probe_walls(walls: Walls, deno: DenoRuntime, pyodide_dir: Path) -> None:
    """Learn which runtimes can drop to the unprivileged uid (a no-op unless Conduit runs as root)."""
    wasm = json.dumps(str(pyodide_dir / "pyodide.mjs"))
    for kind, argv in (
        ("typescript", [deno.deno_path, "eval", "0"]),
        ("python", [deno.deno_path, "eval", f"Deno.readFileSync({wasm})"]),
    ):
        home = deno.homes.make()
        try:
            await walls.probe_uid(kind, argv, env=deno.env(home), read_write=[str(home)])
        finally:
            deno.homes.remove(home)
    worker = [sys.executable, "-I", "-c", "import conduit.sandbox.isolate_worker"]
    await walls.probe_uid("isolate", worker, env={"LANG": "C.UTF-8"})


class _Deferred:
    """Lets the bridge start before the gateway that handles its requests exists."""

    def __init__(self, holder: Sequence[Gateway]) -> None:
        self._holder = holder

    async def handle_bridge(self, principal: Principal, method: str, params: Mapping[str, Any]) -> Any:
        return await self._holder[0].handle_bridge(principal, method, params)


def outcome_payload(outcome: RunOutcome) -> dict[str, Any]:
    """The execution result shape of SPEC §1.1: ``{stdout, stderr, exitCode, result?, error?}``."""
    payload: dict[str, Any] = {"stdout": outcome.stdout, "stderr": outcome.stderr, "exitCode": outcome.exit_code}
    if outcome.has_result:
        payload["result"] = outcome.result
    if outcome.error is not None:
        payload["error"] = {"code": outcome.error.code, "message": outcome.error.message}
    return payload


def _sizing(pool: PoolConfig, max_starting: int) -> PoolSizing:
    """A pool's configured size, starting at most ``max_starting`` sandboxes at once."""
    return PoolSizing(pool.min, pool.max, pool.max_idle_memory_mb, max_starting)
