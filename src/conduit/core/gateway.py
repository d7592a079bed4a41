"""The gateway: what happens to a request, from validation to the sandbox or the upstream and back.

Front ends (the MCP server over stdio or HTTP, the bridge's methods, ``conduit run``) call
:meth:`Gateway.execute`, :meth:`Gateway.call_tool` and :meth:`Gateway.discover`. The gateway is
built by :mod:`conduit.core.assembly`; it uses runtimes, upstreams and the bridge's sessions but
builds none of them, and nothing here knows about MCP transports or Starlette.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

import mcp_types as types
from anyio.abc import TaskGroup

from conduit.bridge.server import BridgeServer
from conduit.catalog import Catalog, ToolEntry, ToolId
from conduit.cluster.run_mirror import RunMirror
from conduit.cluster.store import SharedStore
from conduit.config.loader import parse_upstream
from conduit.config.schema import Config, Limits
from conduit.core import engines
from conduit.core.admission import Admission
from conduit.core.approvals import Approvals, Asker
from conduit.core.health import health_report
from conduit.core.hints import explain_missing_tool, unmatched_patterns
from conduit.core.languages import BY_NAME, LANGUAGES
from conduit.core.ratelimit import RateLimiter
from conduit.core.runs import BOOT, Run, Runs
from conduit.core.sessions import BridgeCaller, Session, SessionRegistry
from conduit.core.typed import typed_value
from conduit.core.validation import check_arguments, usable_schema
from conduit.errors import (
    BusyError,
    ConduitError,
    InvalidParamsError,
    MethodNotFoundError,
    ToolDeniedError,
    UnknownToolError,
)
from conduit.observability.context import ENDED_BY, EXECUTION_ID
from conduit.observability.metrics import LiveState, Metrics, execution_outcome, tool_outcome
from conduit.observability.tracing import Tracing
from conduit.sandbox.base import Job, RunOutcome, Runtime
from conduit.sandbox.host.program import position_fixer, with_program_positions
from conduit.sandbox.protocol import CALL_TOOL, DISCOVER_TOOLS, REGISTER_UPSTREAM
from conduit.sandbox.walls import Walls
from conduit.sdk.cache import SdkCache
from conduit.security.allowlist import Allowlist, AllowlistError
from conduit.security.callers import MASTER, Caller
from conduit.security.redact import Redactor
from conduit.upstream.registry import UpstreamRegistry

logger = logging.getLogger(__name__)
AUDIT = logging.getLogger("conduit.audit")


@dataclass(frozen=True)
class Plan:
    """An execution request, checked: what will run, under which limits, allowlist and engine, for whom."""

    language: str
    code: str
    limits: Limits
    allowlist: Allowlist
    engine: Any
    caller: Caller
    requested: tuple[str, ...] = ()
    """The allowlist patterns the request named itself (none: the default), checked against what the run
    can reach once it runs (:func:`~conduit.core.hints.unmatched_patterns`)."""


BridgeMethod = Callable[[BridgeCaller, Mapping[str, Any]], Awaitable[Any]]


class Gateway:
    """Everything behind Conduit's front ends. Made by :func:`conduit.core.assembly.open_gateway`."""

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
        shared: SharedStore | None = None,
        tasks: TaskGroup | None = None,
    ) -> None:
        self.config = config
        self.tracing = tracing or Tracing(None, "conduit")
        self.walls = walls
        self.master_token = master_token
        self.registry = registry
        self.bridge = bridge
        self.sessions = sessions
        self.runtimes = dict(runtimes)
        self.limits = config.resource_limits
        self.admission = Admission(config.max_concurrent, config.max_queue)
        self.shared = shared
        self.rate_limiter = RateLimiter(config.rate_limit, shared, config.tool_call_rate_limit)
        self._shares: dict[str, Admission] = {}
        """Principals' own concurrency (``maxConcurrent``), within the server's."""
        self._sdks = SdkCache()
        keep_s = config.background.keep_ms / 1000
        longest_s = max(config.resource_limits.timeout_ms, config.background.max_timeout_ms) / 1000
        mirror = RunMirror(shared, BOOT, keep_s, longest_s) if shared is not None else None
        self.runs = Runs(tasks, keep_s, config.background.max_per_principal, mirror)
        """Executions that outlive their request (``tasks``: the task group they run in)."""
        self.approvals = Approvals(
            config.approvals,  # what a person is shown: no secret, no credential shape; PII they need to judge
            Redactor(
                config.secret_values(),
                config.secret_redaction_patterns,
                credentials=config.redact_credentials,
                pii=False,
            ),
        )
        self._bridge_methods: dict[str, BridgeMethod] = {
            DISCOVER_TOOLS: self._bridge_discover,
            CALL_TOOL: self._bridge_call,
            REGISTER_UPSTREAM: self._bridge_register,
            **{language.bridge_method: partial(self._bridge_execute, language.name) for language in LANGUAGES},
        }
        self.metrics = Metrics()
        self.metrics.watch(
            LiveState(
                queue_depth=lambda: self.admission.waiting,
                running=lambda: self.admission.running,
                pooled=lambda: {name: runtime.status().pooled for name, runtime in self.runtimes.items()},
                pooled_memory=lambda: {
                    name: runtime.status().pooled_memory_bytes for name, runtime in self.runtimes.items()
                },
                upstreams=lambda: {cid: conn.connected for cid, conn in self.registry.connections.items()},
            )
        )

    # -- executions -------------------------------------------------------------------------------------

    def parse_allowlist(self, allowed_tools: Any) -> Allowlist:
        """The allowlist for an execution request (the configured default when none is given).

        Raises:
            InvalidParamsError: ``allowed_tools`` is not a list of valid patterns.
        """
        if allowed_tools is None:
            allowed_tools = self.config.default_allowed_tools
        if not isinstance(allowed_tools, list):
            raise InvalidParamsError("allowedTools must be an array of strings")
        try:
            return Allowlist.parse(allowed_tools)
        except AllowlistError as exc:
            raise InvalidParamsError(f"allowedTools: {exc}") from None

    async def execute(
        self,
        language: str,
        code: Any,
        *,
        allowed_tools: Any = None,
        limits: Any = None,
        engine: Any = None,
        on_output: Callable[[str, str], None] | None = None,
        caller: Caller = MASTER,
        asker: Asker | None = None,
    ) -> RunOutcome:
        """Run one program in a fresh sandbox, as ``caller`` (its policy around the request's).

        Args:
            language: a language's name (``typescript``, ``python``, ``isolate``).
            code: the program.
            allowed_tools: allowlist patterns (default: ``defaultAllowedTools``).
            limits: requested limits (can only lower the configured ones).
            engine: Python only: ``auto``, ``monty`` or ``pyodide`` (default: ``pythonEngine``).
            on_output: called with ``(stream, text)`` as output arrives, for live streaming.
            caller: who asks; the allowlist is intersected with its own, its limits are ceilings.
            asker: asks the client's person to approve the calls an ``approvals`` rule covers (None: the
                client cannot be asked, and such calls are declined).

        Raises:
            InvalidParamsError: invalid code, allowlist or limits.
            MethodNotFoundError: no such runtime.
            BusyError: every slot is taken and the queue is full.
        """
        plan = self.plan(language, code, allowed_tools=allowed_tools, limits=limits, engine=engine, caller=caller)
        return await self.run(plan, on_output=on_output, asker=asker)

    def plan(
        self,
        language: str,
        code: Any,
        *,
        allowed_tools: Any = None,
        limits: Any = None,
        engine: Any = None,
        caller: Caller = MASTER,
        background: bool = False,
    ) -> Plan:
        """An execution request checked, before anything runs (see :meth:`execute`); a ``background`` run's
        time limit defaults to, and is capped at, ``background.maxTimeoutMs``.

        Raises:
            InvalidParamsError: invalid code, allowlist or limits.
            MethodNotFoundError: no such runtime.
        """
        if not isinstance(code, str):
            raise InvalidParamsError("code must be a string")
        size = len(code.encode("utf-8", "surrogatepass"))
        if size > self.config.max_code_bytes:
            raise InvalidParamsError(f"code is {size} bytes; the limit is {self.config.max_code_bytes} bytes")
        if limits is not None and not isinstance(limits, dict):
            raise InvalidParamsError("limits must be an object")
        ceiling = self.limits
        if background:
            ceiling = ceiling.model_copy(update={"timeout_ms": self.config.background.max_timeout_ms})
        effective = ceiling.lowered(caller.limits).lowered(limits)
        requested = self.parse_allowlist(allowed_tools)
        allowlist = caller.narrow(requested)
        if language == "python":
            engine = engines.requested_engine(engine, self.config.python_engine)
        elif engine is not None:
            raise InvalidParamsError("engine applies to Python programs only")
        if language not in self.runtimes:
            raise MethodNotFoundError(f"the {language} runtime is not available yet in this version")
        named = requested.patterns if allowed_tools is not None else ()
        return Plan(language, code, effective, allowlist, engine, caller, named)

    async def run(
        self,
        plan: Plan,
        *,
        on_output: Callable[[str, str], None] | None = None,
        asker: Asker | None = None,
        execution_id: str | None = None,
    ) -> RunOutcome:
        """Run a checked request (:meth:`plan`) in a fresh sandbox; see :meth:`execute`.

        Raises:
            BusyError: every slot is taken and the queue is full.
        """
        language, code, effective, allowlist, engine, caller = (
            plan.language,
            plan.code,
            plan.limits,
            plan.allowlist,
            plan.engine,
            plan.caller,
        )
        execution_id = execution_id or uuid.uuid4().hex
        token = EXECUTION_ID.set(execution_id)
        started = time.perf_counter()
        outcome_label = "internal_error"
        metric = language
        began = False
        exit_code: int | None = None
        with self.tracing.execution(execution_id, language) as span:
            span["principal"] = caller.id
            try:
                async with self._share(caller), self.admission.slot():
                    visible = await self.visible_catalog(allowlist)
                    warnings = unmatched_patterns(plan.requested, visible)
                    if on_output is not None:
                        for warning in warnings:
                            on_output("stderr", warning)
                    sdk = self._sdk(language, visible)
                    chosen = await engines.choose(engine, self.runtimes, code, sdk) if language == "python" else None
                    metric = chosen.runtime if chosen else language
                    sandbox = await self.runtimes[metric].prepare(effective.memory_limit_mb)
                    fix = position_fixer(metric, code)
                    shown = on_output
                    if fix is not None and on_output is not None:
                        live = on_output

                        def shown(stream: str, text: str) -> None:  # a stack is written in one piece
                            live(stream, fix(text) if stream == "stderr" else text)

                    with self.sessions.session(
                        execution_id, allowlist, caller, asker, effective.max_tool_calls
                    ) as session:
                        logger.info("execution started", extra={"runtime": metric})
                        began = True
                        outcome = await sandbox.run(Job(code, sdk, session.token, effective, shown))
                if chosen is not None:
                    outcome = dataclasses.replace(outcome, engine=chosen.engine)
                outcome = with_program_positions(outcome, code, fix)
                outcome = explain_missing_tool(outcome, code, visible)
                if warnings:
                    outcome = dataclasses.replace(outcome, stderr="".join(warnings) + outcome.stderr)
                outcome_label = execution_outcome(outcome.error.code if outcome.error else None)
                span["exit_code"] = exit_code = outcome.exit_code
                return outcome
            except ConduitError as exc:
                outcome_label = execution_outcome(exc.code)
                raise
            except BaseException:
                outcome_label = ENDED_BY.get()()  # cancelled: by the client, its going away, the server stopping
                raise
            finally:
                span["outcome"] = outcome_label
                elapsed = time.perf_counter() - started
                if began:  # every execution that started ends with one record, however it ended
                    self._ended(caller, execution_id, metric, outcome_label, exit_code, elapsed)
                if outcome_label != "invalid":
                    self.metrics.executions.labels(metric, outcome_label).inc()
                    self.metrics.principal_executions.labels(caller.id, outcome_label).inc()
                    self.metrics.execution_seconds.labels(metric).observe(elapsed)
                EXECUTION_ID.reset(token)

    @staticmethod
    def _ended(
        caller: Caller, execution_id: str, runtime: str, outcome: str, exit_code: int | None, seconds: float
    ) -> None:
        """The end of a started execution: one log record and one audit record, whatever ended it (its
        outcome, a cancel, a client that went away, a server that stops)."""
        duration_ms = round(seconds * 1000, 1)
        logger.info(
            "execution ended",
            extra={"runtime": runtime, "outcome": outcome, "exit_code": exit_code, "duration_ms": duration_ms},
        )
        AUDIT.info(
            "execution",
            extra={
                "principal": caller.id,
                "execution_id": execution_id,
                "runtime": runtime,
                "outcome": outcome,
                "duration_ms": duration_ms,
            },
        )

    def start_run(
        self,
        plan: Plan,
        *,
        background: bool,
        askable: bool,
        on_output: Callable[[str, str], None] | None = None,
    ) -> Run:
        """Start a checked request (:meth:`plan`) as a run that outlives its request: a background run, or a
        foreground one whose approvals are asked between rounds. ``askable``: the client can be asked to
        approve calls (else a call a rule covers is declined at once).

        Raises:
            BusyError: a background run, and the principal has its most running, or the server is full.
        """
        if background:
            share = self._shares.get(plan.caller.id)
            for admission in (self.admission, share):
                if admission is not None and admission.full:
                    raise BusyError(f"server busy: {admission.running} executions running and the queue is full")

        async def work(run: Run) -> RunOutcome:
            asker = run.ask if askable and self.approvals else None
            return await self.run(plan, on_output=run.feed, asker=asker, execution_id=run.id)

        run = self.runs.start(plan.caller, work, language=plan.language, background=background)
        run.on_output = on_output
        return run

    def start_call(self, caller: Caller, name: str, arguments: Any, *, askable: bool) -> Run:
        """A proxied call an approval rule covers, as a run this request attends: it waits for the person's
        answer (asked in this request, or over the multi-round-trip form) and then calls, or is declined.
        ``askable``: the client can be asked (else the call is declined at once)."""

        async def work(run: Run) -> types.CallToolResult:
            asker = run.ask if askable else None
            return await self.audited_call(caller, caller.reach, name, arguments, asker=asker)

        return self.runs.start(caller, work, tool=name, background=False)

    def _share(self, caller: Caller) -> AbstractAsyncContextManager[None]:
        """A slot of ``caller``'s own concurrency share (none for callers without one)."""
        if caller.max_concurrent is None:
            return contextlib.nullcontext()
        share = self._shares.get(caller.id)
        if share is None or share.max_running != caller.max_concurrent:
            share = self._shares[caller.id] = Admission(caller.max_concurrent, self.config.max_queue)
        return share.slot(f"principal {caller.id!r} has")

    async def admit(self, caller: Caller, address: str | None) -> None:
        """Count one unit of work (an execution, a proxied tool call) against ``caller``'s rate limit.

        Raises:
            BusyError: over the limit (with when to retry), or the cluster's Redis is away and
                ``cluster.onStoreError`` is ``refuse``.
        """
        refusal = await self.rate_limiter.admit(caller, address)
        if refusal is not None:
            self.metrics.rate_limited.inc()
            raise BusyError(refusal.message)

    async def _admit_tool_call(self, caller: Caller, name: Any) -> None:
        """Count a program's call against ``caller``'s ``toolCallRateLimit`` for the upstream it names.

        Raises:
            BusyError: over the limit (with when to retry), or Redis is away with ``onStoreError: refuse``.
        """
        upstream = ToolId.parse(name).upstream if isinstance(name, str) and name else None
        if upstream is None or upstream not in self.registry.connections:
            return  # refused as unknown by the call itself
        refusal = await self.rate_limiter.admit_tool_call(caller, upstream)
        if refusal is not None:
            self.metrics.rate_limited.inc()
            raise BusyError(refusal.message)

    def _sdk(self, language: str, visible: Catalog) -> str:
        """The SDK of the tools of ``visible`` (an allowlist's catalog), generated once per catalog version and
        set of tools.

        Nothing outside the allowlist is in it (names, descriptions, schemas, upstreams): a program cannot
        discover a tool it may not call. Calling one anyway (``$raw``) fails on the host with the same
        error as a tool that does not exist.
        """
        return self._sdks.get(language, self.registry.version, visible.tools, BY_NAME[language].sdk, visible.failures)

    # -- tools ------------------------------------------------------------------------------------------

    async def discover(self, allowlist: Allowlist, query: str | None = None) -> list[ToolEntry]:
        """The tools ``allowlist`` covers, optionally filtered by a case-insensitive substring."""
        needle = (query or "").lower()
        return [
            entry
            for entry in (await self.visible_catalog(allowlist)).tools
            if not needle or needle in entry.qualified.lower() or needle in entry.description.lower()
        ]

    async def call_tool(
        self,
        name: Any,
        arguments: Any,
        allowlist: Allowlist,
        caller: Caller = MASTER,
        *,
        asker: Asker | None = None,
        execution_id: str | None = None,
    ) -> types.CallToolResult:
        """Call an upstream tool by qualified name (``ns__tool`` or ``ns.tool``) if ``allowlist`` covers it,
        with ``caller``'s own credential where the upstream takes one. A call an approval rule covers first
        waits for a person's approval (``asker``), whichever path it came by: a program's, a proxied one.

        Raises:
            ApprovalDeclinedError: an approval rule covers the call and no person approved it.
            ToolDeniedError: the allowlist does not cover the tool (checked before it is looked up).
            UnknownToolError: no such tool.
            UpstreamError: the upstream failed.
            InvalidParamsError: invalid name or arguments.
        """
        entry, arguments = await self._checked(name, arguments, allowlist)
        if self.approvals:
            await self.approvals.require(entry, arguments, caller, asker, execution_id)
        return await self.registry.call(entry, arguments, caller)

    async def _checked(self, name: Any, arguments: Any, allowlist: Allowlist) -> tuple[ToolEntry, dict[str, Any]]:
        """The tool a call names and its arguments, checked: the allowlist first, then the tool, then its schema.

        Raises:
            ToolDeniedError, UnknownToolError, InvalidParamsError: see :meth:`call_tool`.
        """
        if not isinstance(name, str) or not name:
            raise InvalidParamsError("name must be a non-empty string")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidParamsError("arguments must be an object")
        tool_id = ToolId.parse(name)
        if tool_id.upstream is None:
            raise UnknownToolError(f"unknown tool {name!r}: use '<upstream>__<tool>' or '<upstream>.<tool>'")
        qualified = tool_id.qualified
        if not allowlist.permits(tool_id.upstream, tool_id.tool):
            raise ToolDeniedError(f"tool {qualified!r} is not in this execution's allowlist")
        entry = await self.registry.resolve(qualified)
        if self.config.validation_mode == "strict" and not usable_schema(entry.input_schema):
            raise InvalidParamsError(f"tool {qualified!r} has no input schema, and validationMode is strict")
        problems = check_arguments(entry.input_schema, arguments)
        if problems:
            details = "; ".join(str(problem) for problem in problems)
            raise InvalidParamsError(f"invalid arguments for {qualified!r}: {details}")
        return entry, arguments

    async def needs_approval(self, name: Any, arguments: Any, caller: Caller) -> bool:
        """Whether a proxied call by ``caller`` is one an approval rule covers (False for a call that will
        be refused anyway: its refusal is the answer)."""
        if not self.approvals:
            return False
        try:
            entry, _ = await self._checked(name, arguments, caller.reach)
        except ConduitError:
            return False
        return self.approvals.rule_for(entry, caller) is not None

    async def audited_call(
        self,
        caller: Caller,
        allowlist: Allowlist,
        name: Any,
        arguments: Any,
        *,
        program: Session | None = None,
        asker: Asker | None = None,
        execution_id: str | None = None,
    ) -> types.CallToolResult:
        """A tool call (a ``program``'s, over the bridge: within its run's ``maxToolCalls`` and its caller's
        ``toolCallRateLimit``; or proxied over MCP, asking with ``asker`` for a run ``execution_id``),
        counted, timed and written to the audit log with who made it (never its arguments or result)."""
        if program is not None:
            asker, execution_id = program.asker, program.execution_id
        started = time.perf_counter()
        upstream = (ToolId.parse(name).upstream or name) if isinstance(name, str) else "?"
        if upstream not in self.registry.connections:
            upstream = "unknown"
        code: int | None = None
        is_error = False
        tool = name if isinstance(name, str) else "?"
        with self.tracing.tool_call(execution_id, tool, upstream) as span:
            span["principal"] = caller.id
            try:
                if program is not None:
                    program.spend_tool_call()
                    await self._admit_tool_call(caller, name)
                result = await self.call_tool(
                    name, arguments, allowlist, caller, asker=asker, execution_id=execution_id
                )
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
                self.metrics.principal_tool_calls.labels(caller.id, outcome).inc()
                self.metrics.tool_call_seconds.labels(upstream).observe(seconds)
                AUDIT.info(
                    "tool call",
                    extra={
                        "principal": caller.id,
                        "execution_id": execution_id,
                        "tool": tool,
                        "outcome": outcome,
                        "duration_ms": round(seconds * 1000, 2),
                    },
                )

    async def visible_catalog(self, allowlist: Allowlist) -> Catalog:
        """What ``allowlist`` may see: its tools, and the failures of the upstreams it reaches."""
        catalog = await self.registry.catalog()
        return Catalog(
            tools=tuple(entry for entry in catalog.tools if allowlist.permits(entry.upstream, entry.name)),
            failures={upstream: why for upstream, why in catalog.failures.items() if allowlist.reaches(upstream)},
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether every runtime can run programs and no upstream is failing, with the details."""
        healthy, report = health_report(self.runtimes, self.registry.connections, self.walls)
        if self.shared is not None:
            report["cluster"] = self.shared.report()
        return healthy, report

    def register_upstream(self, raw: Any) -> str:
        """Add an upstream at run time (master token only); refused in cluster mode, where it would reach
        one replica of many.

        Raises:
            ConfigError: the definition is invalid.
            UpstreamError: the id is taken.
            MethodNotFoundError: ``cluster.redisUrl`` is set.
        """
        if self.shared is not None:
            raise MethodNotFoundError(
                "upstreams cannot be registered at run time in cluster mode (it would reach one replica of many): "
                "add them to every replica's config"
            )
        upstream = parse_upstream(raw)
        self.registry.add(upstream)
        logger.info("upstream %s registered at run time", upstream.id)
        return upstream.id

    # -- bridge -----------------------------------------------------------------------------------------

    async def handle_bridge(self, who: BridgeCaller, method: str, params: Mapping[str, Any]) -> Any:
        """Serve one authenticated bridge request (see :mod:`conduit.bridge.server`).

        Raises:
            MethodNotFoundError: no such method.
        """
        handler = self._bridge_methods.get(method)
        if handler is None:
            raise MethodNotFoundError(f"unknown method {method!r}")
        return await handler(who, params)

    async def _bridge_discover(self, who: BridgeCaller, params: Mapping[str, Any]) -> Any:
        query = params.get("query")
        if query is not None and not isinstance(query, str):
            raise InvalidParamsError("query must be a string")
        return [entry.describe() for entry in await self.discover(who.allowlist, query)]

    async def _bridge_call(self, who: BridgeCaller, params: Mapping[str, Any]) -> Any:
        name = params.get("name")
        result = await self.audited_call(who.caller, who.allowlist, name, params.get("arguments"), program=who.session)
        answer = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return typed_value(str(name), answer) if params.get("structured") is True else answer

    async def _bridge_register(self, who: BridgeCaller, params: Mapping[str, Any]) -> Any:
        return {"id": self.register_upstream(params.get("upstream", params))}

    async def _bridge_execute(self, language: str, who: BridgeCaller, params: Mapping[str, Any]) -> Any:
        outcome = await self.execute(
            language,
            params.get("code"),
            allowed_tools=params.get("allowedTools"),
            limits=params.get("limits"),
            engine=params.get("engine"),
        )
        return outcome.as_result()
