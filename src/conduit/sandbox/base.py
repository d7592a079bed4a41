"""What every runtime shares: the job a sandbox receives, the outcome it returns, the protocols.

A :class:`Runtime` keeps sandboxes of one language ready (possibly ahead of demand) and
*prepares* one per program; a prepared :class:`Sandbox` runs exactly one job and is then gone.
Untrusted code failing in any way (exception, limit, crash) is a :class:`RunOutcome` value, never
an exception: exceptions mean Conduit itself failed. The limits a job runs under are
:class:`conduit.config.schema.Limits`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from anyio.abc import TaskGroup

from conduit.config.schema import Limits


@dataclass(frozen=True)
class BridgeAddress:
    host: str
    port: int


class BridgeEndpoint(Protocol):
    """Where sandboxes that reach the host over a socket connect (the bridge's listener)."""

    @property
    def address(self) -> BridgeAddress | None: ...


BridgeCall = Callable[[str, str, Mapping[str, Any]], Awaitable[dict[str, Any]]]
"""The host bridge's one entry, ``(token, method, params) -> {"result": ...} | {"error": {code, message}}``.
Sandboxes reach it in two ways, each authenticated the same: over a loopback socket, one JSON-RPC request
per line (:class:`~conduit.bridge.server.BridgeServer` frames each and calls this), or in-process, for
runtimes whose programs run in a worker Conduit drives itself (Monty)."""


@dataclass(frozen=True)
class Job:
    """One program for one sandbox."""

    program: str
    """Source as the client sent it."""
    sdk: str
    """Generated SDK module source for this execution's allowlist."""
    token: str
    """Session token, valid only while this job runs."""
    limits: Limits
    on_output: Callable[[str, str], None] | None = None
    """Called with ``("stdout" | "stderr", text)`` for output as it is accepted (live streaming)."""


@dataclass(frozen=True)
class ProgramFailure:
    """Why a program ended in failure (a value in its outcome, not an exception): a code and a message."""

    code: int
    message: str


@dataclass(frozen=True)
class RunOutcome:
    """What a program did: its output, exit code, return value, and why it stopped if it failed."""

    stdout: str
    stderr: str
    exit_code: int
    error: ProgramFailure | None = None
    result: Any = None
    has_result: bool = False
    duration_ms: float = 0.0
    engine: str | None = None
    """Python: the engine that ran the program (``monty`` or ``pyodide``)."""

    def as_result(self) -> dict[str, Any]:
        """The execution result every front end returns (:func:`execution_result`)."""
        return execution_result(
            self.stdout,
            self.stderr,
            self.exit_code,
            self.error,
            engine=self.engine,
            result=(self.result,) if self.has_result else (),
        )


def execution_result(
    stdout: str,
    stderr: str,
    exit_code: int | None,
    error: ProgramFailure | None = None,
    *,
    engine: str | None = None,
    result: tuple[Any, ...] = (),
) -> dict[str, Any]:
    """The one shape of an execution's result (SPEC §1.1), whatever ended it and whichever front end answers:
    ``{stdout, stderr, exitCode, engine?, result?, error?}``; ``result`` is ``(value,)`` for a program that
    returned one (its value may be null), empty otherwise."""
    payload: dict[str, Any] = {"stdout": stdout, "stderr": stderr, "exitCode": exit_code}
    if engine is not None:
        payload["engine"] = engine
    if result:
        payload["result"] = result[0]
    if error is not None:
        payload["error"] = {"code": error.code, "message": error.message}
    return payload


class Sandbox(Protocol):
    """A prepared sandbox: runs exactly one job, then is gone."""

    async def run(self, job: Job) -> RunOutcome:
        """Run the job to completion, enforcing its limits; the sandbox is killed before this returns
        (and reaped at once, or in the background when its output was already complete)."""
        ...

    async def discard(self) -> None:
        """Destroy the sandbox without running anything."""
        ...


@dataclass(frozen=True)
class RuntimeStatus:
    """How a runtime is doing, for ``/health`` and ``/metrics``."""

    problem: str | None
    """Why it cannot run programs now, or None."""
    pooled: int = 0
    """Sandboxes (or isolate workers) ready for a program."""
    pooled_memory_bytes: int = 0
    """Private resident memory those ready sandboxes hold."""


class Runtime(Protocol):
    """Runs programs of one language, each in a fresh sandbox, keeping sandboxes ready ahead of demand."""

    name: str

    def start(self, tg: TaskGroup) -> None:
        """Begin keeping sandboxes ready, in ``tg``."""
        ...

    async def prepare(self, memory_limit_mb: int) -> Sandbox:
        """A sandbox ready to take one job with at most ``memory_limit_mb`` of memory."""
        ...

    def status(self) -> RuntimeStatus: ...

    def uid_probe(self, home: Path) -> tuple[list[str], dict[str, str]]:
        """A command (and its environment, with ``home`` as its private directory) that exits 0 when this
        runtime works as the unprivileged sandbox uid; ``Walls.probe_uid`` runs it once at start."""
        ...

    async def aclose(self) -> None:
        """Destroy every ready sandbox."""
        ...


@functools.lru_cache(maxsize=16)
def _encoded_sdk(sdk: str) -> bytes:
    return json.dumps(sdk).encode()


def job_line(fields: Mapping[str, Any], sdk: str) -> bytes:
    """``fields`` and ``"sdk": sdk`` as one JSON line for a sandbox's stdin.

    The SDK source is the same object for every execution of a catalog version (the gateway caches
    it), so it is JSON-encoded once, not per execution.
    """
    head = json.dumps(fields).encode()
    opening = head[:-1] + b", " if len(head) > 2 else b"{"
    return opening + b'"sdk": ' + _encoded_sdk(sdk) + b"}\n"
