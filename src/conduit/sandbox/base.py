"""What every runtime shares: limits, the job a sandbox receives, the outcome it returns.

A runtime *prepares* sandboxes (possibly ahead of demand); a prepared sandbox runs exactly
one job and is then gone. Untrusted code failing in any way (exception, limit, crash) is a
:class:`RunOutcome` value, never an exception: exceptions mean Conduit itself failed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from conduit.errors import INVALID_PARAMS, ConduitError


@dataclass(frozen=True)
class Limits:
    """Per-execution limits; requested limits can only lower these."""

    timeout_ms: int
    memory_limit_mb: int
    max_output_bytes: int
    max_log_entries: int

    def lowered(self, requested: Mapping[str, Any] | None) -> Limits:
        """These limits, with any requested value that is lower taking its place.

        Raises:
            ConduitError: a requested value is unknown, not a positive integer.
        """
        if not requested:
            return self
        names = {"timeoutMs": "timeout_ms", "memoryLimitMb": "memory_limit_mb"}
        names |= {"maxOutputBytes": "max_output_bytes", "maxLogEntries": "max_log_entries"}
        changes: dict[str, int] = {}
        for key, value in requested.items():
            if key not in names:
                raise ConduitError(f"limits.{key}: unknown limit (known: {', '.join(names)})", code=INVALID_PARAMS)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConduitError(f"limits.{key}: must be a positive integer", code=INVALID_PARAMS)
            field = names[key]
            changes[field] = min(value, getattr(self, field))
        return replace(self, **changes)


@dataclass(frozen=True)
class BridgeAddress:
    host: str
    port: int


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
class RunError:
    code: int
    message: str


@dataclass(frozen=True)
class RunOutcome:
    """What a program did: its output, exit code, return value, and why it stopped if it failed."""

    stdout: str
    stderr: str
    exit_code: int
    error: RunError | None = None
    result: Any = None
    has_result: bool = False
    duration_ms: float = 0.0


class Sandbox(Protocol):
    """A prepared sandbox: runs exactly one job, then is gone."""

    async def run(self, job: Job) -> RunOutcome:
        """Run the job to completion, enforcing its limits; the sandbox is killed before this returns
        (and reaped at once, or in the background when its output was already complete)."""
        ...

    async def discard(self) -> None:
        """Destroy the sandbox without running anything."""
        ...


class Runtime(Protocol):
    """Makes sandboxes of one language."""

    name: str

    async def prepare(self, memory_limit_mb: int) -> Sandbox:
        """Start a sandbox ready to take one job with at most ``memory_limit_mb`` of heap."""
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
