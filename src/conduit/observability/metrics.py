"""Prometheus metrics: one registry per gateway, so several gateways in one process never mix.

Counters and histograms are updated where things happen; gauges that mirror live state
(queue depth, running executions, pooled sandboxes, upstream connections) are read from the
gateway at scrape time through a collector, so they can never drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from conduit.errors import (
    APPROVAL_DECLINED,
    BUSY,
    FORBIDDEN,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    LOG_LIMIT,
    MEMORY_LIMIT,
    OUTPUT_LIMIT,
    PROGRAM_ERROR,
    TIMEOUT,
    TOOL_CALL_LIMIT,
    UNKNOWN_TOOL,
    UPSTREAM_TIMEOUT,
)

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

EXECUTION_OUTCOMES: Final[Mapping[int | None, str]] = {
    None: "ok",
    PROGRAM_ERROR: "program_error",
    TIMEOUT: "timeout",
    MEMORY_LIMIT: "memory_limit",
    OUTPUT_LIMIT: "output_limit",
    LOG_LIMIT: "log_limit",
    BUSY: "busy",
    INVALID_PARAMS: "invalid",
    INTERNAL_ERROR: "internal_error",
}
TOOL_OUTCOMES: Final[Mapping[int | None, str]] = {
    None: "ok",
    FORBIDDEN: "denied",
    UNKNOWN_TOOL: "unknown",
    UPSTREAM_TIMEOUT: "timeout",
    INVALID_PARAMS: "invalid",
    APPROVAL_DECLINED: "declined",
    TOOL_CALL_LIMIT: "call_limit",
    BUSY: "rate_limited",
}


def execution_outcome(code: int | None) -> str:
    return EXECUTION_OUTCOMES.get(code, "error")


def tool_outcome(code: int | None, is_error: bool = False) -> str:
    if code is None and is_error:
        return "tool_error"
    return TOOL_OUTCOMES.get(code, "upstream_error")


@dataclass(frozen=True)
class LiveState:
    """Readers of the gateway's live state, called at scrape time."""

    queue_depth: Callable[[], int]
    running: Callable[[], int]
    pooled: Callable[[], Mapping[str, int]]
    pooled_memory: Callable[[], Mapping[str, int]]
    upstreams: Callable[[], Mapping[str, bool]]
    workspace_bytes: Callable[[], Mapping[str, int]] = dict
    """Bytes each principal's workspace holds."""


class _LiveCollector(Collector):
    def __init__(self, state: LiveState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queue = self._state.queue_depth()
        yield GaugeMetricFamily("conduit_queue_depth", "Executions waiting for a slot.", value=queue)
        yield GaugeMetricFamily("conduit_executions_running", "Executions running now.", value=self._state.running())
        pooled = GaugeMetricFamily("conduit_sandboxes_pooled", "Sandboxes started and waiting.", labels=["runtime"])
        for runtime, count in sorted(self._state.pooled().items()):
            pooled.add_metric([runtime], count)
        yield pooled
        memory = GaugeMetricFamily(
            "conduit_sandboxes_pooled_memory_bytes",
            "Private resident memory held by started, waiting sandboxes.",
            labels=["runtime"],
        )
        for runtime, held in sorted(self._state.pooled_memory().items()):
            memory.add_metric([runtime], held)
        yield memory
        connected = GaugeMetricFamily(
            "conduit_upstream_connected", "1 when the upstream connection is open.", labels=["upstream"]
        )
        for upstream, is_open in sorted(self._state.upstreams().items()):
            connected.add_metric([upstream], 1 if is_open else 0)
        yield connected
        workspaces = GaugeMetricFamily(
            "conduit_workspace_bytes", "Bytes each principal's workspace holds.", labels=["principal"]
        )
        for principal, held in sorted(self._state.workspace_bytes().items()):
            workspaces.add_metric([principal], held)
        yield workspaces


class Metrics:
    """Conduit's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.executions = Counter(
            "conduit_executions", "Executions by runtime and outcome.", ["runtime", "outcome"], registry=self.registry
        )
        self.execution_seconds = Histogram(
            "conduit_execution_duration_seconds",
            "Wall time of executions, queueing included.",
            ["runtime"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "conduit_rate_limited", "Requests refused by the per-client rate limit.", registry=self.registry
        )
        self.principal_executions = Counter(
            "conduit_principal_executions",
            "Executions by principal (master, local or a principal's id) and outcome.",
            ["principal", "outcome"],
            registry=self.registry,
        )
        self.principal_tool_calls = Counter(
            "conduit_principal_tool_calls",
            "Tool calls (from programs and proxied) by principal and outcome.",
            ["principal", "outcome"],
            registry=self.registry,
        )
        self.tool_calls = Counter(
            "conduit_tool_calls",
            "Tool calls made by sandboxed programs.",
            ["upstream", "outcome"],
            registry=self.registry,
        )
        self.tool_call_seconds = Histogram(
            "conduit_tool_call_duration_seconds",
            "Latency of tool calls made by sandboxed programs.",
            ["upstream"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )

    def watch(self, state: LiveState) -> None:
        """Expose live gauges read from ``state`` at every scrape."""
        self.registry.register(_LiveCollector(state))

    def render(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return generate_latest(self.registry)
