"""Optional OpenTelemetry traces: a span per execution with a child span per tool call it makes.

Off unless an OTLP/HTTP endpoint is configured (``tracing.otlpEndpoint``, or the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` variables); then
spans go to that collector through a batch processor owned by the gateway, flushed when it
stops. Tool calls are served by the bridge, in another task than the execution, so their
parent is looked up by execution id rather than taken from the current context. Spans carry
names, ids, outcomes and durations: never arguments, results or output.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

logger = logging.getLogger(__name__)

EXECUTION_SPAN: Final = "conduit.execute"
TOOL_CALL_SPAN: Final = "conduit.tool_call"
_EXPORT_DELAY_MS: Final = 1000


def traces_endpoint(configured: str | None, env: Mapping[str, str]) -> str | None:
    """Where traces go: the configured base URL, else the standard OTLP variables, else nowhere.

    >>> traces_endpoint("http://127.0.0.1:4318/", {})
    'http://127.0.0.1:4318/v1/traces'
    >>> traces_endpoint(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    'http://c:4318/v1/traces'
    >>> traces_endpoint(None, {}) is None
    True
    """
    if configured:
        return configured.rstrip("/") + "/v1/traces"
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    return None


class Tracing:
    """The gateway's spans; every method is a cheap no-op when tracing is off."""

    def __init__(self, endpoint: str | None, service_name: str) -> None:
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        self._executions: dict[str, Span] = {}
        if endpoint is None:
            return
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=10)
        self._provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=_EXPORT_DELAY_MS))
        self._tracer = self._provider.get_tracer("conduit")
        logger.info("sending traces to %s", endpoint)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextmanager
    def execution(self, execution_id: str, runtime: str) -> Iterator[dict[str, Any]]:
        """A span around one execution; set ``outcome`` / ``exit_code`` in the yielded dict."""
        attributes: dict[str, Any] = {}
        if self._tracer is None:
            yield attributes
            return
        with self._tracer.start_as_current_span(
            EXECUTION_SPAN, attributes={"conduit.execution_id": execution_id, "conduit.runtime": runtime}
        ) as span:
            self._executions[execution_id] = span
            try:
                yield attributes
            finally:
                del self._executions[execution_id]
                for key, value in attributes.items():
                    span.set_attribute(f"conduit.{key}", value)

    @contextmanager
    def tool_call(self, execution_id: str | None, tool: str, upstream: str) -> Iterator[dict[str, Any]]:
        """A span for one tool call, the child of its execution's span; set ``outcome`` in the dict."""
        attributes: dict[str, Any] = {}
        if self._tracer is None:
            yield attributes
            return
        from opentelemetry import trace

        parent = self._executions.get(execution_id or "")
        context = trace.set_span_in_context(parent) if parent is not None else None
        with self._tracer.start_as_current_span(
            TOOL_CALL_SPAN, context=context, attributes={"conduit.tool": tool, "conduit.upstream": upstream}
        ) as span:
            try:
                yield attributes
            finally:
                for key, value in attributes.items():
                    span.set_attribute(f"conduit.{key}", value)

    def shutdown(self) -> None:
        """Send what is buffered and stop."""
        if self._provider is not None:
            self._provider.shutdown()
