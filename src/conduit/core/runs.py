"""Executions that outlive the request that started them: background runs, and runs waiting for a person.

A :class:`Run` is an execution started in the gateway's own task group rather than in a request's: a
background run (``"background": true``, answered at once with its id), or a foreground run of a client
that approves calls through the multi-round-trip form (the run keeps going between the rounds). A
proxied tool call that waits for a person's approval is a run too (its ``tool`` says which), answered
with the tool's own result. A run
keeps what it printed, the approvals it waits for, and in the end its outcome, exactly as a foreground
run answers it. It belongs to the principal that started it: another never sees it, by any id. A
finished run is kept ``background.keepMs``, then dropped.

Run ids start with this process's boot id: an id from an earlier process is reported as *lost* (a
restart ends every running execution; nothing survives it), never as pending.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import anyio
import mcp_types as types
from anyio.abc import TaskGroup

from conduit.cluster.run_mirror import POLL_S, RunMirror
from conduit.core.approvals import Answer, ApprovalRequest
from conduit.errors import BusyError, ConduitError, InvalidParamsError
from conduit.observability.context import CANCELLED, CLIENT_GONE, ENDED_BY, STOPPED, Ending
from conduit.sandbox.base import ProgramFailure, RunOutcome, execution_result
from conduit.security.callers import Caller

logger = logging.getLogger(__name__)

ANNOUNCE_TIMEOUT_S: Final = 2.0
"""At most this long a new run's id waits for its first mirror record (Redis slow or away)."""

BOOT: Final = secrets.token_hex(4)
"""This process's part of every run id."""
_ID: Final = re.compile(r"^([0-9a-f]{8})-([0-9a-f]{24})$")
State = Literal["running", "done", "cancelled"]
Outcome = RunOutcome | types.CallToolResult
"""An execution's outcome, or a proxied call's result."""
Work = Callable[["Run"], Awaitable[Outcome]]


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
    language: str | None
    """An execution's language (None: a proxied call)."""
    tool: str | None
    """A proxied call's tool, as the client named it (None: an execution)."""
    background: bool
    started: float = field(default_factory=time.time)
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    state: State = "running"
    outcome: Outcome | None = None
    failure: ConduitError | None = None
    finished_at: float | None = None
    pending: dict[str, Pending] = field(default_factory=dict)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    changed: anyio.Event = field(default_factory=anyio.Event)
    announced: anyio.Event = field(default_factory=anyio.Event)
    """Set once every replica can find the run (its first mirror record is written; at once without a cluster)."""
    on_output: Callable[[str, str], None] | None = None
    """Who else wants the output as it arrives (a foreground request's progress stream)."""
    resume_token: str = ""
    """The ``requestState`` a multi-round-trip client echoes to continue this run: its id and a secret."""
    ended_by: Ending = STOPPED
    """Why it was cancelled, if it is (set with the cancel; a run cancelled by nobody's say: the server stops)."""
    _asked: int = 0

    def __post_init__(self) -> None:
        self.resume_token = f"{self.id}.{secrets.token_urlsafe(24)}"

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

    def finish(self, state: State, outcome: Outcome | None = None, failure: ConduitError | None = None) -> None:
        self.state, self.outcome, self.failure = state, outcome, failure
        self.finished_at = time.time()
        self._notify()

    def result(self) -> tuple[dict[str, Any], bool]:
        """What a foreground run answers, and whether it is an error (only once finished): an execution's
        result, or a proxied call's ``CallToolResult``; a failure is an execution's error record either way."""
        if isinstance(self.outcome, types.CallToolResult):
            return self.outcome.model_dump(mode="json", by_alias=True, exclude_none=True), bool(self.outcome.is_error)
        if self.outcome is not None:
            return self.outcome.as_result(), self.outcome.error is not None
        error = self.failure or ConduitError("the execution was cancelled before it finished")
        exit_code = 1 if self.failure is not None else None  # it could not run, as a foreground one answers
        failure = ProgramFailure(error.code, error.message)
        return execution_result("".join(self.stdout), "".join(self.stderr), exit_code, failure), True

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


@dataclass
class RemoteRun:
    """A run another replica holds, as its mirror record says (cluster mode): read-only here; commands for
    it go to its inbox (:class:`~conduit.cluster.run_mirror.RunMirror`)."""

    id: str
    record: dict[str, Any]

    @property
    def tool(self) -> str | None:
        tool = self.record.get("tool")
        return str(tool) if tool is not None else None

    @property
    def running(self) -> bool:
        return bool(self.record["state"] == "running")

    @property
    def resume_token(self) -> str:
        return str(self.record["token"])

    def status(self) -> tuple[dict[str, Any], bool]:
        return dict(self.record["status"]), bool(self.record["failed"])

    def result(self) -> tuple[dict[str, Any], bool]:
        payload, failed = self.record["result"] or (self.record["status"], self.record["failed"])
        return dict(payload), bool(failed)

    def unsent(self) -> list[Pending]:
        return [
            Pending(item["key"], ApprovalRequest(**item["request"]))
            for item in self.record["pending"]
            if not item["sent"]
        ]


AnyRun = Run | RemoteRun


class Runs:
    """The runs of this process, in the gateway's task group; with a ``mirror``, the cluster's too."""

    def __init__(
        self, tasks: TaskGroup | None, keep_s: float, max_per_principal: int, mirror: RunMirror | None = None
    ) -> None:
        self._tasks = tasks
        self._keep_s = keep_s
        self._max_per_principal = max_per_principal
        self._mirror = mirror
        self._runs: dict[str, Run] = {}
        if mirror is not None and tasks is not None:
            tasks.start_soon(mirror.beat)

    def start(
        self, caller: Caller, work: Work, *, language: str | None = None, tool: str | None = None, background: bool
    ) -> Run:
        """Start ``work`` as a run of ``caller``'s: an execution in ``language``, or a proxied call of ``tool``.

        Raises:
            BusyError: a background run, and the principal has ``background.maxPerPrincipal`` running here.
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
        run = Run(f"{BOOT}-{secrets.token_hex(12)}", caller, language, tool, background)
        self._runs[run.id] = run
        self._tasks.start_soon(self._run, run, work)
        if self._mirror is not None:
            self._tasks.start_soon(self._mirrored, run, self._mirror)
        else:
            run.announced.set()
        return run

    async def announced(self, run: Run) -> None:
        """Wait until every replica can find ``run`` (at most :data:`ANNOUNCE_TIMEOUT_S`): its id is handed to
        the client only then, or the client's next request, on another replica, would find no such run."""
        with anyio.move_on_after(ANNOUNCE_TIMEOUT_S):
            await run.announced.wait()

    async def _run(self, run: Run, work: Work) -> None:
        ENDED_BY.set(lambda: run.ended_by)  # this task's own: not the request's that started it
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

    async def _mirrored(self, run: Run, mirror: RunMirror) -> None:
        """Publish ``run`` whenever it changes (at most every ``POLL_S``), and carry out its inbox's commands."""
        try:
            await self._mirror_loop(run, mirror)
        except Exception:  # the mirror must never take the task group (and the server) down
            logger.exception("run %s is no longer mirrored to the cluster", run.id)

    async def _mirror_loop(self, run: Run, mirror: RunMirror) -> None:
        published: dict[str, Any] | None = None
        while True:
            changed = run.changed
            record = _record(run)
            if record != published:
                try:
                    await mirror.publish(run.id, record, finished=not run.running)
                finally:
                    run.announced.set()  # written, or failed (Redis away): the client is not kept waiting
                published = record
            if not run.running:
                return
            for command in await mirror.take(run.id):
                self._carry_out(run, command)
            with anyio.move_on_after(POLL_S):
                await changed.wait()
            await anyio.sleep(POLL_S / 5)  # output arriving fast is published in batches

    def _carry_out(self, run: Run, command: dict[str, Any]) -> None:
        if command.get("cancel"):
            why = command["cancel"]
            self._cancel_local(run, why if why in (CANCELLED, CLIENT_GONE) else CANCELLED)
        elif "answer" in command:
            run.answer(str(command["key"]), command["answer"])
        elif "sent" in command:
            pending = run.pending.get(str(command["sent"]))
            if pending is not None:
                pending.sent = True

    async def find(self, caller: Caller, execution_id: Any) -> AnyRun:
        """``caller``'s run ``execution_id``, here or (cluster mode) on another replica.

        Raises:
            LostRunError: it was running in a process that has ended (this one restarted, or its replica died).
            InvalidParamsError: no such run of ``caller``'s (never was, another's, or expired).
            StoreUnavailableError: another replica's run, Redis is away and ``onStoreError`` is ``refuse``.
        """
        if not isinstance(execution_id, str) or not execution_id:
            raise InvalidParamsError("executionId must be a non-empty string")
        self._sweep()
        unknown = InvalidParamsError(
            f"unknown execution {execution_id!r}: none of yours has this id (or its outcome expired)"
        )
        run = self._runs.get(execution_id)
        if run is not None:
            if run.caller.id != caller.id:
                raise unknown
            return run
        matched = _ID.match(execution_id)
        if matched is None or matched.group(1) == BOOT:
            raise unknown
        if self._mirror is None:
            raise LostRunError(execution_id)
        record = await self._mirror.read(execution_id)
        if record is not None and record["principal"] != caller.id:
            raise unknown
        alive = await self._mirror.alive(matched.group(1))
        if record is None:
            if alive:
                raise unknown
            raise LostRunError(execution_id)
        if record["state"] == "running" and not alive:
            raise LostRunError(execution_id)
        return RemoteRun(execution_id, record)

    async def by_token(self, caller: Caller, token: object) -> AnyRun | None:
        """``caller``'s run whose ``requestState`` is ``token`` (running, or finished and still kept), or None."""
        if not isinstance(token, str) or "." not in token:
            return None
        execution_id = token.partition(".")[0]
        try:
            run = await self.find(caller, execution_id)
        except (InvalidParamsError, LostRunError):
            return None
        return run if secrets.compare_digest(run.resume_token, token) else None

    async def refreshed(self, run: AnyRun) -> AnyRun:
        """``run`` once it changes: at once for a run here, within ``POLL_S`` for another replica's."""
        if isinstance(run, Run):
            await run.changed.wait()
            return run
        await anyio.sleep(POLL_S)
        assert self._mirror is not None
        record = await self._mirror.read(run.id)
        return RemoteRun(run.id, record) if record is not None else run

    async def answer(self, run: AnyRun, key: str, answer: Answer) -> None:
        if isinstance(run, Run):
            run.answer(key, answer)
        elif self._mirror is not None:
            await self._mirror.post(run.id, {"key": key, "answer": answer})

    async def mark_sent(self, run: AnyRun, pending: Pending) -> None:
        pending.sent = True
        if isinstance(run, RemoteRun) and self._mirror is not None:
            await self._mirror.post(run.id, {"sent": pending.key})

    async def cancel(self, run: AnyRun, why: Ending = CANCELLED) -> None:
        if isinstance(run, Run):
            self._cancel_local(run, why)
        elif self._mirror is not None:
            await self._mirror.post(run.id, {"cancel": why})

    def _cancel_local(self, run: Run, why: Ending) -> None:
        if run.state == "running":
            run.ended_by = why
            run.scope.cancel()

    def _sweep(self) -> None:
        now = time.time()
        for run_id, run in list(self._runs.items()):
            if run.finished_at is not None and now - run.finished_at > self._keep_s:
                del self._runs[run_id]

    def cancel_all(self) -> None:
        for run in self._runs.values():
            self._cancel_local(run, STOPPED)


def _record(run: Run) -> dict[str, Any]:
    """What the cluster knows of ``run`` (:class:`RemoteRun` reads it back)."""
    status, failed = run.status()
    pending = [{"key": p.key, "sent": p.sent, "request": dataclasses.asdict(p.request)} for p in run.pending.values()]
    return {
        "principal": run.caller.id,
        "tool": run.tool,
        "state": run.state,
        "status": status,
        "failed": failed,
        "result": None if run.running else list(run.result()),
        "pending": pending,
        "token": run.resume_token,  # sealed with cluster.key, like everything in the record
    }


class LostRunError(ConduitError):
    """A run of an earlier Conduit process: it ended with that process."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(
            f"execution {execution_id!r} was lost: the Conduit process running it ended (a restart, or its replica "
            "stopped), and running executions do not survive that"
        )
        self.execution_id = execution_id
