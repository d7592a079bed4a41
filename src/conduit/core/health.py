"""``/health``: whether every runtime can run programs and no upstream is failing, with the details."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conduit.sandbox.base import Runtime
from conduit.sandbox.walls import Walls
from conduit.upstream.registry import Upstream


def health_report(
    runtimes: Mapping[str, Runtime], upstreams: Mapping[str, Upstream], walls: Walls | None
) -> tuple[bool, dict[str, Any]]:
    """``(healthy, report)``: each runtime's status and pool, each upstream's state, each wall's (on or off, and
    what it does or why it is off: the same words as ``conduit doctor``)."""
    runtime_report: dict[str, dict[str, Any]] = {}
    for name, runtime in runtimes.items():
        status = runtime.status()
        entry: dict[str, Any] = {"status": "unavailable" if status.problem else "ok"}
        if status.problem:
            entry["reason"] = status.problem
        entry["pooled"] = status.pooled
        entry["pooledMemoryMb"] = round(status.pooled_memory_bytes / 2**20, 1)
        runtime_report[name] = entry
    upstream_report: dict[str, dict[str, Any]] = {}
    for upstream_id, connection in upstreams.items():
        if connection.connected:
            upstream_report[upstream_id] = {"status": "connected"}
        elif connection.last_error:
            upstream_report[upstream_id] = {"status": "failing", "reason": connection.last_error}
        else:
            upstream_report[upstream_id] = {"status": "idle"}
    healthy = all(entry["status"] == "ok" for entry in runtime_report.values()) and all(
        entry["status"] != "failing" for entry in upstream_report.values()
    )
    isolation = {wall.name: {"active": wall.active, "detail": wall.detail} for wall in walls.report} if walls else {}
    report = {"status": "ok" if healthy else "degraded", "runtimes": runtime_report, "upstreams": upstream_report}
    return healthy, {**report, "isolation": isolation}
