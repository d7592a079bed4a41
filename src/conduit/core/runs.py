"""Executions that outlive the request that started them: background runs, and runs waiting for a person.

A :class:`Run` is an execution started in the gateway's own task group rather than in a request's: a
background run (``"background": true``, answered at once with its id), or a foreground run of a client
that approves calls through the multi-round-trip form (the run keeps going between the rounds). A run
keeps what it printed, the approvals it waits for, and in the end its outcome, exactly as a foreground
run answers it. It belongs to the principal that started it: another never sees it, by any id. A
finished run is kept ``background.keepMs``, then dropped.

Run ids start with this process's boot id: an id from an earlier process is reported as *lost* (a
restart ends every running execution; nothing survives it), never as pending.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import anyio
from anyio.abc import TaskGroup

from conduit.core.approvals import Answer, ApprovalRequest
from conduit.errors import BusyError, ConduitError, InvalidParamsError
from conduit.sandbox.base import RunOutcome
from conduit.security.callers import Caller

logger = logging.getLogger(__name__)

BOOT: Final = secrets.token_hex(4)
"""This process's part of every run id."""
_ID: Final = re.compile(r"^([0-9a-f]{8})-([0-9a-f]{24})$")
State = Literal["running", "done", "cancelled"]
Work = Callable[["Run"], Awaitable[RunOutcome]]


@dataclass
class Pending:
    """An approval a run waits for."""

    key: str
    request: ApprovalRequest
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: Answer = "decline"
    sent: bool = False
    """Put to a client already (asked once; an answer may come with any later round)."""


@dataclass
class Run:
    id: str
    caller: Caller
    language: str
    background: bool
    started: float = field(default_factory=time.time)
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    state: State = "running"
    outcome: RunOutcome | None = None
    failure: ConduitError | None = None
    finished_at: float | None = None
    pending: dict[str, Pending] = field(default_factory=dict)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    changed: anyio.Event = field(default_factory=anyio.Event)
    on_output: Callable[[str, str], None] | None = None
    """Who else wants the output as it arrives (a foreground request's progress stream)."""
    resume_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    """The ``requestState`` a multi-round-trip client echoes to continue this run (opaque, unguessable)."""
    _asked: int = 0

    @property
    def running(self) -> bool:
        return self.state == "running"

    def feed(self, stream: str, text: str) -> None:
        (self.stdout if stream == "stdout" else self.stderr).append(text)
        if self.on_output is not None:
            self.on_output(stream, text)

    async def ask(self, request: ApprovalRequest) -> Answer:
        """The run's :data:`~conduit.core.approvals.Asker`: wait until a round answers (or the rule times out)."""
        self._asked += 1
        pending = Pending(f"approval-{self._asked}", request)
        self.pending[pending.key] = pending
        self._notify()
        try:
            await pending.answered.wait()
            return pending.answer
        finally:
            del self.pending[pending.key]

    def answer(self, key: str, answer: Answer) -> bool:
        """Give the person's answer to approval ``key``; False when the run no longer waits for it."""
        pending = self.pending.get(key)
        if pending is None or pending.answered.is_set():
            return False
        pending.answer = answer
        pending.answered.set()
        return True

    def unsent(self) -> list[Pending]:
        return [pending for pending in self.pending.values() if not pending.sent]

    def _notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def finish(self, state: State, outcome: RunOutcome | None = None, failure: ConduitError | None = None) -> None:
        self.state, self.outcome, self.failure = state, outcome, failure
        self.finished_at = time.time()
        self._notify()

    def result(self) -> tuple[dict[str, Any], bool]:
        """What a foreground run answers, and whether it is an error (only once finished)."""
        if self.outcome is not None:
            return self.outcome.as_result(), self.outcome.error is not None
        error = self.failure or ConduitError("the execution was cancelled before it finished")
        payload = {"stdout": "".join(self.stdout), "stderr": "".join(self.stderr), "exitCode": None}
        return {**payload, "error": {"code": error.code, "message": error.message}}, True

    def status(self) -> tuple[dict[str, Any], bool]:
        """``conduit__mcp_execution_status``'s answer: the output so far, or (finished) the outcome."""
        head: dict[str, Any] = {"executionId": self.id, "status": self.state}
        if self.state == "running":
            waiting = [p.request.tool for p in self.pending.values()]
            progress = {"stdout": "".join(self.stdout), "stderr": "".join(self.stderr)}
            extra = {"waitingForApproval": waiting} if waiting else {}
            return {**head, **progress, "elapsedMs": round((time.time() - self.started) * 1000), **extra}, False
        payload, failed = self.result()
        return {**head, **payload}, failed


class Runs:
    """The runs of this process, in the gateway's task group."""

    def __init__(self, tasks: TaskGroup | None, keep_s: float, max_per_principal: int) -> None:
        self._tasks = tasks
        self._keep_s = keep_s
        self._max_per_principal = max_per_principal
        self._runs: dict[str, Run] = {}

    def start(self, caller: Caller, language: str, work: Work, *, background: bool) -> Run:
        """Start ``work`` as a run of ``caller``'s.

        Raises:
            BusyError: a background run, and the principal has ``background.maxPerPrincipal`` running.
        """
        if self._tasks is None:
            raise ConduitError("executions that outlive their request are not available here")
        self._sweep()
        if background:
            running = sum(1 for r in self._runs.values() if r.caller.id == caller.id and r.background and r.running)
            if running >= self._max_per_principal:
                raise BusyError(
                    f"{caller.id!r} has {running} background executions running (background.maxPerPrincipal); "
                    "wait for one to finish, or cancel one"
                )
        run = Run(f"{BOOT}-{secrets.token_hex(12)}", caller, language, background)
        self._runs[run.id] = run
        self._tasks.start_soon(self._run, run, work)
        return run

    async def _run(self, run: Run, work: Work) -> None:
        try:
            with run.scope:
                try:
                    outcome = await work(run)
                except ConduitError as exc:
                    run.finish("done", failure=exc)
                except Exception as exc:  # never let one run take the task group (and the server) down
                    logger.exception("execution %s failed", run.id)
                    run.finish("done", failure=ConduitError(f"the execution failed: {type(exc).__name__}"))
                else:
                    run.finish("done", outcome=outcome)
        finally:
            if run.state == "running":  # cancelled: by its principal, its client, or the server stopping
                run.finish("cancelled")

    def find(self, caller: Caller, execution_id: Any) -> Run:
        """``caller``'s run ``execution_id``.

        Raises:
            LostRunError: the id is from an earlier process (restarted since).
            InvalidParamsError: no such run of ``caller``'s (never was, another's, or expired).
        """
        if not isinstance(execution_id, str) or not execution_id:
            raise InvalidParamsError("executionId must be a non-empty string")
        self._sweep()
        matched = _ID.match(execution_id)
        if matched is not None and matched.group(1) != BOOT:
            raise LostRunError(execution_id)
        run = self._runs.get(execution_id)
        if run is None or run.caller.id != caller.id:
            raise InvalidParamsError(
                f"unknown execution {execution_id!r}: none of yours has this id (or its outcome expired)"
            )
        return run

    def by_token(self, caller: Caller, token: object) -> Run | None:
        """``caller``'s run whose ``resume_token`` is ``token`` (running, or finished and still kept), or None."""
        if not isinstance(token, str):
            return None
        self._sweep()
        run = next((run for run in self._runs.values() if secrets.compare_digest(run.resume_token, token)), None)
        return run if run is not None and run.caller.id == caller.id else None

    def cancel(self, run: Run) -> None:
        if run.state == "running":
            run.scope.cancel()

    def _sweep(self) -> None:
        now = time.time()
        for run_id, run in list(self._runs.items()):
            if run.finished_at is not None and now - run.finished_at > self._keep_s:
                del self._runs[run_id]

    def cancel_all(self) -> None:
        for run in self._runs.values():
            self.cancel(run)


class LostRunError(ConduitError):
    """A run of an earlier Conduit process: it ended with that process."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(
            f"execution {execution_id!r} was lost: Conduit restarted after it started, and running executions "
            "do not survive a restart"
        )
        self.execution_id = execution_id
