"""OpenTelemetry: spans exported over real OTLP/HTTP to a collector the test runs on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from support import ConduitHttp, run_ts, wait_until, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.deno, pytest.mark.e2e]


class Collector:
    """An OTLP/HTTP trace receiver: decodes each export request's protobuf into plain span dicts."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.services: set[str] = set()

    async def receive(self, request: Request) -> Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.body())
        for resource_spans in export.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    self.services.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                        }
                    )
        body = ExportTraceServiceResponse().SerializeToString()
        return Response(body, media_type="application/x-protobuf")


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
async def collector(anyio_backend: str) -> AsyncIterator[tuple[str, Collector]]:
    received = Collector()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    app = Starlette(routes=[Route("/v1/traces", received.receive, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", log_config=None))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        await wait_until(lambda: server.started, interval=0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", received
        server.should_exit = True


async def test_an_execution_span_has_a_child_span_per_tool_call(
    collector: tuple[str, Collector], tmp_path: Path, toolbox_command: dict[str, Any]
) -> None:
    endpoint, received = collector
    config = write_config(
        tmp_path,
        {
            "upstreams": [{"id": "toolbox", **toolbox_command}],
            "pools": {"typescript": {"min": 0, "max": 0}, "python": {"min": 0, "max": 0}},
            "tracing": {"otlpEndpoint": endpoint, "serviceName": "conduit-under-test"},
        },
    )
    secret = "span-canary-81b2"
    code = f'await tools.toolbox.echo({{text: "{secret}"}});\nawait tools.toolbox.add({{a: 1, b: 2}});\nreturn 3;'
    async with ConduitHttp.start(config) as server, server.client() as client:
        is_error, out = await run_ts(client, code)
        assert not is_error, out
        await wait_until(lambda: len(received.spans) >= 3)
    [execution] = [span for span in received.spans if span["name"] == "conduit.execute"]
    calls = [span for span in received.spans if span["name"] == "conduit.tool_call"]
    assert received.services == {"conduit-under-test"}
    assert execution["attributes"]["conduit.runtime"] == "typescript"
    assert execution["attributes"]["conduit.outcome"] == "ok"
    assert execution["attributes"]["conduit.principal"] == "master"  # who asked (a principal's id over HTTP)
    assert execution["attributes"]["conduit.exit_code"] == 0
    assert [call["attributes"]["conduit.tool"] for call in calls] == ["toolbox__echo", "toolbox__add"]
    for call in calls:
        assert call["parent_id"] == execution["span_id"]
        assert call["trace_id"] == execution["trace_id"]
        assert call["attributes"]["conduit.outcome"] == "ok"
        assert call["attributes"]["conduit.upstream"] == "toolbox"
        assert call["attributes"]["conduit.principal"] == "master"
    assert secret not in repr(received.spans)


async def test_no_endpoint_means_no_tracing(gateway: Any) -> None:
    assert not gateway.tracing.enabled
