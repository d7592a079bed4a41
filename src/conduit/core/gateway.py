"""The gateway: what happens to a checked request, from policy to the sandbox or the upstream and back.

Front ends check what they receive into typed requests (:mod:`conduit.core.requests`) and hand them
here: an execution is planned (:meth:`Gateway.plan`: the server's and the caller's policy around the
request) and run (:meth:`Gateway.run`), in the request or as a run that outlives it
(:meth:`Gateway.start_run`); a tool call, a program's or a proxied one, passes :meth:`Gateway.audited_call`
once. The gateway is built by :mod:`conduit.assembly`, which hands it everything it uses (runtimes,
upstreams, sessions, runs, approvals, rate limits, metrics); it builds none of them, and nothing here
knows about MCP transports or Starlette.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

import mcp_types as types
from pydantic import JsonValue

from conduit.catalog import Catalog, ToolEntry
from conduit.cluster.store import SharedStore
from conduit.config.loader import parse_upstream
from conduit.config.schema import Config, Limits, PythonEngine
from conduit.core import engines
from conduit.core.admission import Admission
from conduit.core.approvals import Approvals, Asker
from conduit.core.health import health_report
from conduit.core.hints import explain_missing_tool, unmatched_patterns
from conduit.core.languages import BY_NAME, LANGUAGES, Engine, Language
from conduit.core.packages import Package, value_result, with_args
from conduit.core.ratelimit import RateLimiter
from conduit.core.requests import ExecutionRequest, RefusedCall, ToolCall, parse_allowlist, read_call
from conduit.core.runs import Run, Runs
from conduit.core.sessions import Session, SessionRegistry
from conduit.core.typed import typed_value
from conduit.core.validation import check_arguments, usable_schema
from conduit.errors import (
    BusyError,
    ConduitError,
    InvalidParamsError,
    MethodNotFoundError,
    StateUnavailableError,
    ToolDeniedError,
    ToolReportedError,
    UnknownToolError,
)
from conduit.observability.context import ENDED_BY, EXECUTION_ID
from conduit.observability.metrics import LiveState, Metrics, execution_outcome, tool_outcome
from conduit.observability.tracing import Tracing
from conduit.privacy.stream import TokenizingStream
from conduit.privacy.tokens import Privacy, Tally
from conduit.sandbox.base import BridgeEndpoint, Job, RunOutcome, Runtime
from conduit.sandbox.host.program import position_fixer, with_program_positions
from conduit.sandbox.protocol import CALL_TOOL, DISCOVER_TOOLS, REGISTER_UPSTREAM
from conduit.sandbox.walls import Walls
from conduit.sdk.cache import SdkCache
from conduit.security.allowlist import Allowlist
from conduit.security.callers import MASTER, Caller
from conduit.state.skills import Skill, SkillDefinition
from conduit.upstream.registry import UpstreamRegistry

logger = logging.getLogger(__name__)
AUDIT = logging.getLogger("conduit.audit")

MAX_SKILL_DEPTH = 3
"""Skills may call skills: a program's skill's skill's skill, and no deeper."""
SKILL_OUTPUT_CUT = "[skills' output cut: the run's maxOutputBytes or maxLogEntries]\n"
SKILL_RESERVE_MS = 1000
"""Of the time its caller's run has left, what a skill leaves it (at most a tenth): a skill that runs out of
time is stopped while its caller can still handle that."""


@dataclass(frozen=True)
class Plan:
    """An execution request within the server's and its caller's policy: what will run, under which limits,
    allowlist and engine, for whom."""

    language: Language
    code: str
    limits: Limits
    allowlist: Allowlist
    engine: PythonEngine | None
    """For a language with engines: ``auto`` or the engine asked for."""
    caller: Caller
    requested: tuple[str, ...] = ()
    """The allowlist patterns the request named itself (none: the default), checked against what the run
    can reach once it runs (:func:`~conduit.core.hints.unmatched_patterns`)."""
    skills: tuple[str, ...] = ()
    """A skill's run: the skills it runs inside, outermost first, its own name last (empty: an execution)."""
    within: Session | None = None
    """A skill's run called by a running program: that program's session (the skill runs in its slots and
    spends its budget of tool calls; a skill called directly over MCP takes its own)."""


BridgeMethod = Callable[[Session, Mapping[str, JsonValue]], Awaitable[JsonValue]]
"""A bridge method: the calling session and the request's JSON params -> the JSON answer."""


class Gateway:
    """Everything behind Conduit's front ends. Made by :func:`conduit.assembly.open_gateway`."""

    def __init__(
        self,
        config: Config,
        *,
        registry: UpstreamRegistry,
        bridge: BridgeEndpoint,
        sessions: SessionRegistry,
        runtimes: Mapping[str, Runtime],
        runs: Runs,
        approvals: Approvals,
        rate_limiter: RateLimiter,
        metrics: Metrics,
        tracing: Tracing | None = None,
        walls: Walls | None = None,
        shared: SharedStore | None = None,
        packages: Sequence[Package] = (),
        privacy: Privacy | None = None,
    ) -> None:
        self.config = config
        self.tracing = tracing or Tracing(None, "conduit")
        self.walls = walls
        self.registry = registry
        self.bridge = bridge
        self.sessions = sessions
        self.runtimes = dict(runtimes)
        self.runs = runs
        """Executions (and proxied calls) that outlive their request."""
        self.approvals = approvals
        self.rate_limiter = rate_limiter
        self.metrics = metrics
        self.shared = shared
        self.privacy = privacy
        """Personal values tokenised on the way out, restored on the way to upstreams (None: off)."""
        self.packages: dict[str, Package] = {package.id: package for package in packages}
        """Conduit's own packages (workspace, skills), served beside the upstreams."""
        for package in packages:
            package.bind(self)
        self.limits = config.resource_limits
        self.admission = Admission(config.max_concurrent, config.max_queue)
        self._shares: dict[str, Admission] = {}
        """Principals' own concurrency (``maxConcurrent``), within the server's."""
        self._sdks = SdkCache()
        self._default_allowlist = Allowlist.parse(config.default_allowed_tools)
        self._bridge_methods: dict[str, BridgeMethod] = {
            DISCOVER_TOOLS: self._bridge_discover,
            CALL_TOOL: self._bridge_call,
            REGISTER_UPSTREAM: self._bridge_register,
            **{language.bridge_method: partial(self._bridge_execute, language) for language in LANGUAGES},
        }

    def live_state(self) -> LiveState:
        """Readers of what is running and ready now, for the metrics (read at scrape time)."""
        runtimes = self.runtimes
        return LiveState(
            queue_depth=lambda: self.admission.waiting,
            running=lambda: self.admission.running,
            pooled=lambda: {name: runtime.status().pooled for name, runtime in runtimes.items()},
            pooled_memory=lambda: {name: runtime.status().pooled_memory_bytes for name, runtime in runtimes.items()},
            upstreams=lambda: {cid: conn.connected for cid, conn in self.registry.connections.items()},
        )

    # -- executions -------------------------------------------------------------------------------------

    def parse_allowlist(self, allowed_tools: Sequence[str] | None) -> Allowlist:
        """The allowlist of a request's patterns (the configured default for None).

        Raises:
            InvalidParamsError: a pattern is not valid.
        """
        return self._default_allowlist if allowed_tools is None else parse_allowlist(allowed_tools)

    async def execute(
        self,
        language: str,
        code: str,
        *,
        allowed_tools: Sequence[str] | None = None,
        limits: Mapping[str, int] | None = None,
        engine: PythonEngine | None = None,
        on_output: Callable[[str, str], None] | None = None,
        caller: Caller = MASTER,
        asker: Asker | None = None,
    ) -> RunOutcome:
        """Run one program in a fresh sandbox, as ``caller``, in this process's own call (``conduit run``):
        the request is checked (:class:`~conduit.core.requests.ExecutionRequest`), planned and run.

        Args:
            language: a language's name (``typescript``, ``python``, ``isolate``).
            code: the program.
            allowed_tools: allowlist patterns (default: ``defaultAllowedTools``).
            limits: requested limits (can only lower the configured ones).
            engine: for a language with engines: ``auto`` or one's name (default: ``pythonEngine``).
            on_output: called with ``(stream, text)`` as output arrives, for live streaming.
            caller: who asks; the allowlist is intersected with its own, its limits are ceilings.
            asker: asks the client's person to approve the calls an ``approvals`` rule covers (None: the
                client cannot be asked, and such calls are declined).

        Raises:
            InvalidParamsError: invalid code, allowlist or limits.
            MethodNotFoundError: no such runtime.
            BusyError: every slot is taken and the queue is full.
        """
        arguments = {"code": code, "allowedTools": allowed_tools, "limits": limits, "engine": engine}
        request = ExecutionRequest.from_arguments(self.language(language), arguments, known_only=False)
        return await self.run(self.plan(request, caller), on_output=on_output, asker=asker)

    def language(self, name: str) -> Language:
        """The language called ``name``.

        Raises:
            MethodNotFoundError: no such language.
        """
        language = BY_NAME.get(name)
        if language is None:
            raise MethodNotFoundError(f"the {name} runtime is not available yet in this version")
        return language

    def plan(self, request: ExecutionRequest, caller: Caller) -> Plan:
        """A checked request within the server's policy and ``caller``'s, before anything runs: the code
        within ``maxCodeBytes``, the limits lowered to the ceilings (a ``background`` run's time limit defaults
        to, and is capped at, ``background.maxTimeoutMs``), the allowlist narrowed to the caller's.

        Raises:
            InvalidParamsError: the code is too long.
            MethodNotFoundError: the language's runtime is not running.
        """
        size = len(request.code.encode("utf-8", "surrogatepass"))
        if size > self.config.max_code_bytes:
            raise InvalidParamsError(f"code is {size} bytes; the limit is {self.config.max_code_bytes} bytes")
        ceiling = self.limits
        if request.background:
            ceiling = ceiling.model_copy(update={"timeout_ms": self.config.background.max_timeout_ms})
        effective = ceiling.lowered(caller.limits).lowered(request.limits)
        requested = request.allowed_tools if request.allowed_tools is not None else self._default_allowlist
        language = request.language
        if language.name not in self.runtimes:
            raise MethodNotFoundError(f"the {language.name} runtime is not available yet in this version")
        engine = (request.engine or self.config.python_engine) if language.engines else None
        named = request.allowed_tools.patterns if request.allowed_tools is not None else ()
        return Plan(language, request.code, effective, caller.narrow(requested), engine, caller, named)

    async def run(
        self,
        plan: Plan,
        *,
        on_output: Callable[[str, str], None] | None = None,
        asker: Asker | None = None,
        execution_id: str | None = None,
    ) -> RunOutcome:
        """Run a plan in a fresh sandbox, in the request (or in a run's task: :meth:`start_run`); see
        :meth:`execute`.

        Raises:
            BusyError: every slot is taken and the queue is full.
        """
        language, code, effective, allowlist, caller = (
            plan.language,
            plan.code,
            plan.limits,
            plan.allowlist,
            plan.caller,
        )
        execution_id = execution_id or uuid.uuid4().hex
        token = EXECUTION_ID.set(execution_id) if plan.within is None else None
        started = time.perf_counter()
        outcome_label = "internal_error"
        metric = language.name
        began = False
        exit_code: int | None = None
        privacy = self._privacy_for(caller)
        tally = Tally()
        with self.tracing.execution(execution_id, language.name) as span:
            span["principal"] = caller.id
            try:
                async with self._slot(plan):
                    visible = await self.visible_catalog(allowlist, caller)
                    warnings = unmatched_patterns(plan.requested, visible)
                    if on_output is not None:
                        for warning in warnings:
                            on_output("stderr", warning)
                    sdk = self._sdk(language.name, visible)
                    chosen: Engine | None = None
                    if plan.engine is not None:
                        chosen = await engines.choose(language, plan.engine, self.runtimes, code, sdk)
                        metric = chosen.runtime
                        sdk = self._sdks.get(
                            chosen.runtime, self.registry.version, visible.tools, chosen.sdk, visible.failures
                        )
                    sandbox = await self.runtimes[metric].prepare(effective.memory_limit_mb)
                    fix = position_fixer(language.wrap if chosen is None else chosen.wrap, code)
                    shown = on_output
                    if fix is not None and on_output is not None:
                        live = on_output

                        def shown(stream: str, text: str) -> None:  # a stack is written in one piece
                            live(stream, fix(text) if stream == "stderr" else text)

                    added: list[str] = []
                    room = [effective.max_output_bytes, effective.max_log_entries]

                    def emit(text: str) -> None:  # skills' output, into this run's stderr, within its output limits
                        if room[0] <= 0:
                            return
                        kept = _within(text, *room)
                        room[0] -= len(kept.encode("utf-8", "replace"))
                        room[1] -= kept.count("\n")
                        if kept != text:
                            kept += SKILL_OUTPUT_CUT
                            room[0] = 0
                        added.append(kept)
                        if shown is not None:
                            shown("stderr", kept)

                    deadline = time.monotonic() + effective.timeout_ms / 1000
                    tokenizing = privacy is not None and not plan.skills  # a skill's output goes to its caller
                    streaming = self._live(privacy if tokenizing else None, caller, shown, tally)
                    async with streaming as shown:
                        with self.sessions.session(
                            execution_id,
                            allowlist,
                            caller,
                            asker,
                            effective.max_tool_calls,
                            skills=plan.skills,
                            deadline=deadline,
                            emit=emit,
                            limits=effective,
                            parent=plan.within,
                            tally=tally if privacy is not None else None,
                        ) as session:
                            logger.info("execution started", extra={"runtime": metric})
                            began = True
                            outcome = await sandbox.run(Job(code, sdk, session.token, effective, shown))
                    if added:
                        outcome = dataclasses.replace(outcome, stderr=outcome.stderr + "".join(added))
                if chosen is not None:
                    outcome = dataclasses.replace(outcome, engine=chosen.name)
                outcome = with_program_positions(outcome, code, fix)
                outcome = explain_missing_tool(outcome, code, visible)
                if warnings:
                    outcome = dataclasses.replace(outcome, stderr="".join(warnings) + outcome.stderr)
                if privacy is not None and tokenizing:
                    outcome = await privacy.outcome(caller, outcome, tally)
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
                    self._ended(caller, execution_id, metric, outcome_label, exit_code, elapsed, tally.record())
                if outcome_label != "invalid":
                    self.metrics.executions.labels(metric, outcome_label).inc()
                    self.metrics.principal_executions.labels(caller.id, outcome_label).inc()
                    self.metrics.execution_seconds.labels(metric).observe(elapsed)
                if token is not None:
                    EXECUTION_ID.reset(token)

    @staticmethod
    def _ended(
        caller: Caller,
        execution_id: str,
        runtime: str,
        outcome: str,
        exit_code: int | None,
        seconds: float,
        privacy: dict[str, Any] | None,
    ) -> None:
        """The end of a started execution: one log record and one audit record, whatever ended it (its
        outcome, a cancel, a client that went away, a server that stops); with ``privacy`` on, how many values
        of each kind its output tokenised and its calls restored (never the values)."""
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
                **({"privacy": privacy} if privacy is not None else {}),
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
        """Start a plan as a run that outlives its request: a background run, or a foreground one whose
        approvals are asked between rounds; it runs as :meth:`run` does. ``askable``: the client can be asked
        to approve calls (else a call a rule covers is declined at once).

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

        run = self.runs.start(plan.caller, work, language=plan.language.name, background=background)
        run.on_output = on_output
        return run

    def start_call(self, caller: Caller, call: ToolCall, entry: ToolEntry, *, askable: bool) -> Run:
        """A proxied call an approval rule covers (its tool ``entry``, checked by :meth:`needs_approval`), as
        a run this request attends: it waits for the person's answer (asked in this request, or over the
        multi-round-trip form) and then calls, or is declined. ``askable``: the client can be asked (else the
        call is declined at once)."""

        async def work(run: Run) -> types.CallToolResult:
            return await self.audited_call(Session.of(caller, run.ask if askable else None), call, checked=entry)

        return self.runs.start(caller, work, tool=call.name, background=False)

    @contextlib.asynccontextmanager
    async def _slot(self, plan: Plan) -> AsyncIterator[None]:
        """The slots a plan runs in: its caller's share and the server's; none for a skill's run called by a
        program, which runs inside that program's run, in its slots (waiting for its own could wait for itself)."""
        if plan.within is not None:
            yield
            return
        async with self._share(plan.caller), self.admission.slot():
            yield

    def _privacy_for(self, caller: Caller) -> Privacy | None:
        """The tokenising that applies to ``caller`` (None: privacy is off, or does not cover it)."""
        return self.privacy if self.privacy is not None and self.privacy.applies(caller) else None

    @contextlib.asynccontextmanager
    async def _live(
        self,
        privacy: Privacy | None,
        caller: Caller,
        listener: Callable[[str, str], None] | None,
        tally: Tally,
    ) -> AsyncIterator[Callable[[str, str], None] | None]:
        """The listener a run's live output goes to: ``listener`` itself, or, with ``privacy`` on, a stream
        that tokenises the output before ``listener`` sees it (:mod:`conduit.privacy.stream`)."""
        if privacy is None or listener is None:
            yield listener
            return

        async def tokenize(text: str) -> str:
            return await privacy.text(caller, text, tally)

        async with TokenizingStream.open(tokenize, privacy.finder, listener) as feed:
            yield feed

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

    async def _admit_tool_call(self, caller: Caller, call: ToolCall) -> None:
        """Count a program's call against ``caller``'s ``toolCallRateLimit`` for the upstream it names.

        Raises:
            BusyError: over the limit (with when to retry), or Redis is away with ``onStoreError: refuse``.
        """
        if not self._serves(call.upstream):
            return  # refused as unknown by the call itself
        refusal = await self.rate_limiter.admit_tool_call(caller, call.upstream)
        if refusal is not None:
            self.metrics.rate_limited.inc()
            raise BusyError(refusal.message)

    def _serves(self, package_id: str) -> bool:
        """Whether ``package_id`` names a configured upstream or one of Conduit's own packages."""
        return package_id in self.registry.connections or package_id in self.packages

    def _sdk(self, language: str, visible: Catalog) -> str:
        """The SDK of the tools of ``visible`` (an allowlist's catalog), generated once per catalog version and
        set of tools.

        Nothing outside the allowlist is in it (names, descriptions, schemas, upstreams): a program cannot
        discover a tool it may not call. Calling one anyway (``$raw``) fails on the host with the same
        error as a tool that does not exist.
        """
        return self._sdks.get(language, self.registry.version, visible.tools, BY_NAME[language].sdk, visible.failures)

    # -- tools ------------------------------------------------------------------------------------------

    async def discover(self, allowlist: Allowlist, caller: Caller, query: str | None = None) -> list[ToolEntry]:
        """The tools ``allowlist`` covers for ``caller``, optionally filtered by a case-insensitive substring."""
        needle = (query or "").lower()
        return [
            entry
            for entry in (await self.visible_catalog(allowlist, caller)).tools
            if not needle or needle in entry.qualified.lower() or needle in entry.description.lower()
        ]

    async def _checked(self, call: ToolCall, allowlist: Allowlist, caller: Caller) -> ToolEntry:
        """The tool ``call`` names, checked: the allowlist first, then the tool, then the arguments' schema.

        Raises:
            ToolDeniedError: the allowlist does not cover the tool (checked before it is looked up).
            UnknownToolError: no such tool.
            InvalidParamsError: the arguments do not fit the tool's input schema.
        """
        qualified = call.qualified
        if not allowlist.permits(call.upstream, call.tool.tool):
            raise ToolDeniedError(f"tool {qualified!r} is not in this execution's allowlist")
        entry = await self._resolve(call, caller)
        if self.config.validation_mode == "strict" and not usable_schema(entry.input_schema):
            raise InvalidParamsError(f"tool {qualified!r} has no input schema, and validationMode is strict")
        problems = check_arguments(entry.input_schema, call.arguments)
        if problems:
            details = "; ".join(str(problem) for problem in problems)
            raise InvalidParamsError(f"invalid arguments for {qualified!r}: {details}")
        return entry

    async def needs_approval(self, call: ToolCall | RefusedCall, caller: Caller) -> ToolEntry | None:
        """The tool of a proxied call by ``caller``, checked, when an approval rule covers the call; None
        otherwise (and for a call that will be refused anyway: its refusal is the answer)."""
        if not self.approvals or isinstance(call, RefusedCall):
            return None
        try:
            entry = await self._checked(call, caller.reach, caller)
        except ConduitError:
            return None
        return entry if self.approvals.rule_for(entry, caller) is not None else None

    async def audited_call(
        self, session: Session, call: ToolCall | RefusedCall, *, checked: ToolEntry | None = None
    ) -> types.CallToolResult:
        """Call an upstream tool for ``session``: a program's (within its run's ``maxToolCalls`` and its caller's
        ``toolCallRateLimit``), the master token's on the bridge, or a proxied call over MCP. The call (read
        once where it came in, :func:`~conduit.core.requests.read_call`) is checked (allowlist, tool,
        arguments; ``checked``: its tool, checked already), waits for a person's approval where a rule covers
        it (``session.asker``), goes out with the caller's own credential where the upstream takes one, and is
        counted, timed and written to the audit log with who made it (never its arguments or result).

        Raises:
            ApprovalDeclinedError: an approval rule covers the call and no person approved it.
            ToolDeniedError: the allowlist does not cover the tool (checked before it is looked up).
            UnknownToolError: no such tool.
            UpstreamError: the upstream failed.
            InvalidParamsError: invalid name or arguments.
        """
        caller, execution_id = session.caller, session.execution_id
        started = time.perf_counter()
        tool = call.name
        upstream = "unknown"  # the metrics' label for a call that names no configured upstream
        if isinstance(call, ToolCall) and self._serves(call.upstream):
            upstream = call.upstream
        code: int | None = None
        is_error = False
        privacy = self._privacy_for(caller)
        tally = Tally()
        with self.tracing.tool_call(execution_id, tool, upstream) as span:
            span["principal"] = caller.id
            try:
                if session.is_program:
                    session.spend_tool_call()
                if isinstance(call, RefusedCall):
                    raise call.error
                if session.is_program:
                    await self._admit_tool_call(caller, call)
                entry = checked or await self._checked(call, session.allowlist, caller)
                if self.approvals:
                    await self.approvals.require(entry, call.arguments, caller, session.asker, execution_id)
                package = self.packages.get(entry.upstream)
                if package is not None:
                    result = await package.call(session, entry, call.arguments)
                else:
                    arguments = call.arguments
                    if privacy is not None and not privacy.exempt(entry):
                        arguments = await privacy.restore(caller, arguments, tally)
                    result = await self.registry.call(entry, arguments, caller)
                is_error = bool(result.is_error)
                if privacy is not None and not session.is_program:  # a program's own calls answer into its sandbox
                    result = await privacy.result(caller, result, tally)
                return result
            except ConduitError as exc:
                code = exc.code
                if privacy is not None and not session.is_program:
                    await privacy.failure(caller, exc, tally)
                raise
            finally:
                seconds = time.perf_counter() - started
                outcome = tool_outcome(code, is_error)
                span["outcome"] = outcome
                self.metrics.tool_calls.labels(upstream, outcome).inc()
                self.metrics.principal_tool_calls.labels(caller.id, outcome).inc()
                self.metrics.tool_call_seconds.labels(upstream).observe(seconds)
                counted = tally.record()
                if counted is not None and session.tally is not None:
                    session.tally.add(tally)
                AUDIT.info(
                    "tool call",
                    extra={
                        "principal": caller.id,
                        "execution_id": execution_id,
                        "tool": tool,
                        "outcome": outcome,
                        "duration_ms": round(seconds * 1000, 2),
                        **({"privacy": counted} if counted is not None else {}),
                    },
                )

    async def run_skill(
        self, session: Session, skill: Skill, arguments: Mapping[str, JsonValue]
    ) -> types.CallToolResult:
        """Run a skill for ``session`` (a program's call, or a caller's over MCP), exactly as an execution: a fresh
        sandbox of its language, the caller's allowlist narrowed to the skill's ``allowedTools``, the calling
        run's limits (a direct call: the caller's) within the time that run has left, its tool calls spending
        that run's budget (``maxToolCalls``), approvals and audit records as the caller's. The
        skill's output goes to the calling run's stderr, each line prefixed with its name; its result value is
        the call's, checked against its output schema.

        Raises:
            InvalidParamsError: skills nested deeper than :data:`MAX_SKILL_DEPTH`, or a skill calling itself.
            ToolReportedError: the skill failed, timed out or returned a value its output schema refuses
                (-32005; the skill's execution result is the error's data).
        """
        definition = skill.definition
        chain = (*session.skills, definition.name)
        if definition.name in session.skills:
            raise InvalidParamsError(f"skill cycle: {' -> '.join(chain)} (a skill cannot call itself)")
        if len(chain) > MAX_SKILL_DEPTH:
            raise InvalidParamsError(
                f"skills call skills to a depth of {MAX_SKILL_DEPTH}: {' -> '.join(chain)} goes deeper"
            )
        caller = session.caller
        limits = session.limits or self.limits.lowered(caller.limits)  # a program's run's own, or its caller's
        if session.deadline is not None:
            left_ms = int((session.deadline - time.monotonic()) * 1000)
            left_ms -= min(SKILL_RESERVE_MS, left_ms // 10)  # the caller outlives its skill, to handle its end
            if left_ms <= 0:
                raise ToolReportedError(
                    f"skill {definition.name!r} was not run: the calling run has no time left", None
                )
            limits = limits.lowered({"timeoutMs": left_ms})
        allowlist = session.allowlist
        if definition.allowed_tools is not None:
            allowlist = allowlist.narrowed(Allowlist.parse(definition.allowed_tools))
        language = BY_NAME[definition.language]
        engine: PythonEngine | None = self.config.python_engine if language.engines else None
        code = with_args(definition, arguments)
        within = session if session.is_program else None
        plan = Plan(language, code, limits, allowlist, engine, caller, skills=chain, within=within)
        prefix = f"[{definition.name}] "
        outcome = await self.run(plan, asker=session.asker)
        lines = [f"{prefix}{line}\n" for text in (outcome.stdout, outcome.stderr) for line in text.splitlines()]
        if lines and session.emit is not None:
            session.emit("".join(lines))
        if outcome.error is not None:
            raise ToolReportedError(
                f"skill {definition.name!r} failed ({outcome.error.code}): {outcome.error.message}", outcome.as_result()
            )
        value = outcome.result if outcome.has_result else None
        if definition.output_schema is not None:
            problems = check_arguments(definition.output_schema, value, "result")
            if problems:
                details = "; ".join(str(problem) for problem in problems)
                raise ToolReportedError(
                    f"skill {definition.name!r} returned a value its outputSchema refuses: {details}",
                    outcome.as_result(),
                )
        return value_result(value)

    async def skill_engine(self, definition: SkillDefinition, caller: Caller) -> str | None:
        """For a skill in a language with engines (Python): the engine ``auto`` picks for its code as ``caller``
        would run it (Monty when it fits, checked there, else Pyodide); None for other languages."""
        language = BY_NAME[definition.language]
        if not language.engines:
            return None
        sdk = self._sdk(language.name, await self.visible_catalog(caller.reach, caller))
        return (await engines.choose(language, "auto", self.runtimes, with_args(definition, {}), sdk)).name

    async def visible_catalog(self, allowlist: Allowlist, caller: Caller) -> Catalog:
        """What ``allowlist`` may see for ``caller``: the tools of the upstreams and of Conduit's own packages
        (a caller's skills are its own), and the failures of those it reaches."""
        self.registry.note(caller)
        catalog = await self.registry.catalog()
        tools = list(catalog.tools)
        failures = dict(catalog.failures)
        for package in self.packages.values():
            if not allowlist.reaches(package.id):
                continue
            try:
                tools.extend(await package.entries(caller))
            except StateUnavailableError as exc:
                failures[package.id] = exc.message
        return Catalog(
            tools=tuple(entry for entry in tools if allowlist.permits(entry.upstream, entry.name)),
            failures={upstream: why for upstream, why in failures.items() if allowlist.reaches(upstream)},
        )

    async def _resolve(self, call: ToolCall, caller: Caller) -> ToolEntry:
        """The tool a call names: an upstream's, or one of a package's that ``caller`` finds there.

        Raises:
            UnknownToolError: no such tool.
            UpstreamError: the upstream cannot be reached to find out.
            StateUnavailableError: the package's database cannot be reached to find out.
        """
        package = self.packages.get(call.upstream or "")
        if package is None:
            return await self.registry.resolve(call.tool, caller)
        for entry in await package.entries(caller):
            if entry.name == call.tool.tool:
                return entry
        raise UnknownToolError(f"unknown tool {call.qualified!r}: {package.id} has no {call.tool.tool!r}")

    def health(self) -> tuple[bool, dict[str, JsonValue]]:
        """Whether every runtime can run programs and no upstream is failing, with the details."""
        healthy, report = health_report(self.runtimes, self.registry.connections, self.walls)
        if self.shared is not None:
            report["cluster"] = self.shared.report()
        return healthy, report

    def register_upstream(self, raw: object) -> str:
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

    async def handle_bridge(self, session: Session, method: str, params: Mapping[str, JsonValue]) -> JsonValue:
        """Serve one authenticated bridge request (see :mod:`conduit.bridge.server`): ``session`` is who
        sent it, a program or the master token.

        Raises:
            MethodNotFoundError: no such method.
        """
        handler = self._bridge_methods.get(method)
        if handler is None:
            raise MethodNotFoundError(f"unknown method {method!r}")
        return await handler(session, params)

    async def _bridge_discover(self, session: Session, params: Mapping[str, JsonValue]) -> JsonValue:
        query = params.get("query")
        if query is not None and not isinstance(query, str):
            raise InvalidParamsError("query must be a string")
        return [entry.describe() for entry in await self.discover(session.allowlist, session.caller, query)]

    async def _bridge_call(self, session: Session, params: Mapping[str, JsonValue]) -> JsonValue:
        name = params.get("name")
        result = await self.audited_call(session, read_call(name, params.get("arguments")))
        answer = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return typed_value(str(name), answer) if params.get("structured") is True else answer

    async def _bridge_register(self, session: Session, params: Mapping[str, JsonValue]) -> JsonValue:
        return {"id": self.register_upstream(params.get("upstream", params))}

    async def _bridge_execute(self, language: Language, session: Session, params: Mapping[str, JsonValue]) -> JsonValue:
        request = ExecutionRequest.from_arguments(language, params, known_only=False)
        return (await self.run(self.plan(request, session.caller))).as_result()


def _within(text: str, max_bytes: int, max_lines: int) -> str:
    """The whole lines of ``text`` that fit in ``max_bytes`` and ``max_lines``.

    >>> _within("a\\nbb\\nccc\\n", 5, 10), _within("a\\nbb\\nccc\\n", 100, 2)
    ('a\\nbb\\n', 'a\\nbb\\n')
    """
    kept: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True)[: max(0, max_lines)]:
        size += len(line.encode("utf-8", "replace"))
        if size > max_bytes:
            break
        kept.append(line)
    return "".join(kept)
