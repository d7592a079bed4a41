"""Turning what a sandbox left behind (output, result record, exit status) into a :class:`RunOutcome`.

Every runtime reports the same outcome record from inside the sandbox
(:mod:`conduit.sandbox.protocol.records`).

The host's own observations win over the record: a tripped output limit or the host deadline
decides the error code whatever the sandbox said.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from conduit.errors import INTERNAL_ERROR, MEMORY_LIMIT, PROGRAM_ERROR, TIMEOUT
from conduit.sandbox.base import ProgramFailure, RunOutcome
from conduit.sandbox.host.output import OutputCollector

KILLED_EXIT: Final = 137
OOM_MARKERS: Final = ("out of memory", "Reached heap limit", "Allocation failed")


def classify(
    collector: OutputCollector,
    record: Mapping[str, Any] | None,
    *,
    exit_code: int | None,
    timed_out: bool,
    timeout_ms: int,
    duration_ms: float,
    crash: str | None = None,
    memory_killed: bool = False,
) -> RunOutcome:
    """The outcome of one run.

    Args:
        collector: the run's output, possibly with a tripped limit.
        record: the result record, if the sandbox delivered one.
        exit_code: the process's exit status (negative or None: killed by a signal).
        timed_out: the host deadline passed.
        timeout_ms: the deadline, for the message.
        duration_ms: wall time of the run.
        crash: why the sandbox died without a record, when the runtime knows (an internal error).
        memory_killed: the kernel killed the sandbox at its cgroup memory cap.
    """
    stdout, stderr = collector.stdout(), collector.stderr()
    code = exit_code if exit_code is not None and exit_code >= 0 else KILLED_EXIT

    def failed(error_code: int, message: str) -> RunOutcome:
        return RunOutcome(stdout, stderr, code or 1, ProgramFailure(error_code, message), duration_ms=duration_ms)

    if collector.violation is not None:
        return failed(*collector.violation)
    if memory_killed:
        return failed(MEMORY_LIMIT, "execution exceeded its memory limit (killed at the sandbox's memory cap)")
    if timed_out or (record is not None and record.get("limit") == "timeout"):
        return failed(TIMEOUT, f"execution timed out after {timeout_ms} ms")
    if record is not None and record.get("limit") == "memory":
        return failed(MEMORY_LIMIT, "execution exceeded its memory limit")
    if record is None:
        if any(marker in stderr for marker in OOM_MARKERS):
            return failed(MEMORY_LIMIT, "execution exceeded its memory limit")
        if crash is not None:
            return failed(INTERNAL_ERROR, crash)
        if code == 0:
            return RunOutcome(stdout, stderr, 0, duration_ms=duration_ms)
        return failed(PROGRAM_ERROR, f"program exited with code {code}")
    if record.get("status") == "exit":
        return failed(PROGRAM_ERROR, f"program exited with code {code}")
    if record.get("status") == "error":
        error = record.get("error") or {}
        return failed(PROGRAM_ERROR, f"{error.get('name', 'Error')}: {error.get('message', '')}")
    if "unserializable" in record:
        note = f"[conduit] no result: {record['unserializable']}\n"
        return RunOutcome(stdout, stderr + note, code, duration_ms=duration_ms)
    return RunOutcome(
        stdout, stderr, code, result=record.get("value"), has_result="value" in record, duration_ms=duration_ms
    )
