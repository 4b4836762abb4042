"""The request log: one line per request, JSON for machines or text for a terminal.

Never the prompt or the completion: only what the ``RequestFinished`` event carries.
"""

from __future__ import annotations

import logging

import orjson

from runestone.telemetry.events import Event, RequestFinished

log = logging.getLogger("runestone.requests")


class RequestLog:
    EVENTS = (RequestFinished,)

    def __init__(self, json_lines: bool) -> None:
        self.json_lines = json_lines

    @staticmethod
    def listening() -> bool:
        return log.isEnabledFor(logging.INFO)

    def __call__(self, event: Event) -> None:
        if not isinstance(event, RequestFinished) or not log.isEnabledFor(logging.INFO):
            return
        if self.json_lines:
            log.info(
                orjson.dumps(
                    {
                        "request_id": event.request_id,
                        "route": event.route,
                        "alias": event.alias,
                        "target": f"{event.provider}:{event.model}",
                        "status": event.status,
                        "code": event.code or None,
                        "stream": event.stream,
                        "outcome": event.outcome,
                        "attempts": event.attempts,
                        "duration_ms": round(event.duration * 1000, 2),
                        "overhead_ms": round(event.overhead * 1000, 3),
                        "ttft_ms": None if event.ttft is None else round(event.ttft * 1000, 2),
                        "input_tokens": event.input_tokens,
                        "output_tokens": event.output_tokens,
                        "cost_usd": event.cost,
                        "rescued_from": event.rescued_from,
                        "key": None if event.key == "-" else event.key,
                        "cache": event.cache,
                    }
                ).decode()
            )
            return
        code = f" {event.code}" if event.code else ""
        log.info(
            "%s %s %s -> %s:%s %d%s %s %.1fms (overhead %.2fms) tokens %s/%s",
            event.request_id,
            event.route,
            event.alias,
            event.provider,
            event.model,
            event.status,
            code,
            event.outcome,
            event.duration * 1000,
            event.overhead * 1000,
            event.input_tokens,
            event.output_tokens,
        )
