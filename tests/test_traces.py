"""Spans exported to memory: names, GenAI attributes, parent/child, traceparent."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from runestone.telemetry.otel import OTelTraces, configured
from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway, error_response

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def traced(make_gateway: MakeGateway) -> tuple[Gateway, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gateway = make_gateway()
    gateway.app.add_tracing(OTelTraces(provider))
    return gateway, exporter


def spans_of(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    deadline = time.monotonic() + 3
    while len(exporter.get_finished_spans()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(exporter.get_finished_spans())


def post(gateway: Gateway, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"messages": [{"role": "user", "content": "a private prompt"}], **body},
        headers={"traceparent": PARENT},
    )


def test_server_and_client_spans_with_genai_attributes(
    traced: tuple[Gateway, InMemorySpanExporter], fake: FakeProvider
) -> None:
    gateway, exporter = traced
    fake.on("broken", error_response(503, {"error": {"message": "overloaded"}}))
    assert post(gateway, model="pair").status_code == 200  # one failed attempt, one good
    spans = spans_of(exporter, 3)
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    clients = sorted((s for s in spans if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)
    assert server.name == "chat pair"
    attributes = dict(server.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "pair"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.response.model"] == "gpt-4o"
    assert attributes["gen_ai.usage.input_tokens"] == 5
    assert attributes["gen_ai.usage.output_tokens"] == 7
    assert [c.name for c in clients] == ["chat broken", "chat gpt-4o"]
    assert dict(clients[0].attributes or {})["error.type"] == "upstream_overloaded"
    assert clients[0].status.status_code == StatusCode.ERROR
    for client in clients:
        assert client.parent is not None
        assert client.parent.span_id == server.context.span_id
    # the client's trace continues: same trace id, parented on its span
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert server.start_time <= clients[0].start_time
    assert clients[-1].end_time <= server.end_time
    for span in spans:  # no content, ever
        assert "private" not in str(dict(span.attributes or {}))


def test_error_request_span(traced: tuple[Gateway, InMemorySpanExporter]) -> None:
    gateway, exporter = traced
    assert post(gateway, model="nope").status_code == 404
    (server,) = spans_of(exporter, 1)
    assert dict(server.attributes or {})["error.type"] == "model_not_found"
    assert server.status.status_code == StatusCode.ERROR


def test_stream_span(traced: tuple[Gateway, InMemorySpanExporter]) -> None:
    gateway, exporter = traced
    post(gateway, model="smart", stream=True)
    spans = spans_of(exporter, 2)
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert dict(server.attributes or {})["runestone.stream"] is True
    assert dict(server.attributes or {})["gen_ai.usage.output_tokens"] == 3


def test_tracing_is_off_unless_configured() -> None:
    assert not configured({})
    assert configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not configured({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
