"""``GET /metrics``: Prometheus text, for principals holding the ``metrics`` scope."""

from __future__ import annotations

from runestone.http._asgi import Receive, Scope, Send, send_json
from runestone.telemetry.prometheus import CONTENT_TYPE, PrometheusMetrics


class MetricsEndpoint:
    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.metrics.render()
        await send_json(send, 200, body, [(b"content-type", CONTENT_TYPE.encode())])
