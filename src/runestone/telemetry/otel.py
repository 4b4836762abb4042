"""OpenTelemetry traces, a subscriber of the telemetry hook (optional dependency).

A server span per request and a client span per upstream attempt, named and attributed by
the GenAI semantic conventions. Spans are built when the request ends, with the times the
events carry, so the request path pays for no tracing calls. An incoming ``traceparent``
continues the client's trace. Prompt and completion content is never recorded.

On when ``OTEL_TRACES_EXPORTER`` or an ``OTEL_EXPORTER_OTLP_*ENDPOINT`` is set and
``pip install 'runestone[otel]'`` is installed; ``OTEL_SERVICE_NAME`` and the rest of the
standard variables apply.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from runestone.telemetry.events import AttemptFinished, Event, RequestFinished

_MAX_PENDING = 10_000  # attempts held for requests that have not finished yet


def configured(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    exporter = env.get("OTEL_TRACES_EXPORTER", "")
    if exporter == "none":
        return False
    return bool(exporter) or any(
        env.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def from_environment() -> OTelTraces:
    """A subscriber exporting over OTLP/HTTP as the standard variables say."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "runestone"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return OTelTraces(provider)


class OTelTraces:
    EVENTS = (AttemptFinished, RequestFinished)

    def __init__(self, tracer_provider: Any) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer_provider.get_tracer("runestone")
        self._propagator = TraceContextTextMapPropagator()
        self._attempts: dict[str, list[AttemptFinished]] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, AttemptFinished):
            if len(self._attempts) < _MAX_PENDING:
                self._attempts.setdefault(event.request_id, []).append(event)
        elif isinstance(event, RequestFinished):
            self._request(event, self._attempts.pop(event.request_id, []))

    def _request(self, event: RequestFinished, attempts: list[AttemptFinished]) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        parent = (
            self._propagator.extract({"traceparent": event.traceparent})
            if event.traceparent
            else None
        )
        operation = "chat" if event.route in ("chat", "messages") else event.route
        requested = event.alias if event.alias != "-" else event.model
        ended = event.started_ns + int(event.duration * 1e9)
        server = self._tracer.start_span(
            f"{operation} {requested}",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=event.started_ns,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": requested,
                "http.response.status_code": event.status,
                "runestone.route": event.route,
                "runestone.request_id": event.request_id,
                "runestone.attempts": event.attempts,
                "runestone.stream": event.stream,
            },
        )
        if event.provider != "-":
            server.set_attribute("gen_ai.provider.name", event.provider)
            server.set_attribute("gen_ai.response.model", event.model)
        if event.input_tokens is not None:
            server.set_attribute("gen_ai.usage.input_tokens", event.input_tokens)
        if event.output_tokens is not None:
            server.set_attribute("gen_ai.usage.output_tokens", event.output_tokens)
        if event.code:
            server.set_attribute("error.type", event.code)
            server.set_status(Status(StatusCode.ERROR))
        context = trace.set_span_in_context(server)
        for attempt in attempts:
            client = self._tracer.start_span(
                f"{operation} {attempt.model}",
                context=context,
                kind=SpanKind.CLIENT,
                start_time=attempt.started_ns,
                attributes={
                    "gen_ai.operation.name": operation,
                    "gen_ai.provider.name": attempt.provider,
                    "gen_ai.request.model": attempt.model,
                },
            )
            if attempt.code:
                client.set_attribute("error.type", attempt.code)
                client.set_status(Status(StatusCode.ERROR))
            client.end(end_time=attempt.ended_ns)
        server.end(end_time=max(ended, event.started_ns))
