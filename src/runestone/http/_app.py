"""The ASGI application: the lifespan and the middleware stack, nothing else.

A pure ASGI callable (no framework in the request path) so that a request costs a few
dict lookups on top of the router, and streams go out exactly as relayed. The stack,
outermost first::

    ErrorMiddleware            request id; errors rendered once, in the route's protocol
    AuthenticationMiddleware   scope["auth"]: who is calling
    Dispatcher                 routes and mounts; method and scope checks
    endpoint                   http/endpoints/
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from runestone._gateway import Gateway
from runestone.aliases import AliasStore
from runestone.config import Settings
from runestone.console import ConsoleStats
from runestone.errors import GatewayError
from runestone.http._asgi import ASGIApp, Receive, Scope, Send
from runestone.http._signals import hook_exit_signals
from runestone.http.endpoints import (
    MetricsEndpoint,
    ModelsEndpoint,
    ProxyEndpoint,
    ReadyEndpoint,
    UsageEndpoint,
    live,
)
from runestone.http.endpoints._admin_access import Refusals
from runestone.http.endpoints.admin_audit import AuditEndpoint
from runestone.http.endpoints.admin_cache import CacheEndpoint
from runestone.http.endpoints.admin_keys import KeysEndpoint
from runestone.http.endpoints.admin_openapi import OpenApiEndpoint
from runestone.http.endpoints.admin_teams import TeamsEndpoint
from runestone.http.endpoints.console import ConsoleApi, ConsoleFiles
from runestone.http.endpoints.responses import StoredResponsesEndpoint
from runestone.http.middleware import AuthenticationMiddleware, ErrorMiddleware, TokenBackend
from runestone.http.middleware.auth import CLIENT, METRICS, OPERATOR
from runestone.http.middleware.errors import PROTOCOL
from runestone.http.routing import Dispatcher, Mount, Route
from runestone.protocols import CHAT, COUNT_TOKENS, EMBEDDINGS, MESSAGES, RESPONSES
from runestone.routing import Router
from runestone.telemetry import RequestTrace, Subscriber, Telemetry, otel
from runestone.telemetry.logs import RequestLog
from runestone.telemetry.prometheus import PrometheusMetrics

log = logging.getLogger("runestone.http")


class RunestoneApp:
    """The gateway as an ASGI application. Build it with ``create_app``."""

    def __init__(
        self,
        settings: Settings,
        aliases: AliasStore,
        environ: Mapping[str, str] | None = None,
        *,
        mounts: tuple[Mount, ...] = (),
    ) -> None:
        self.settings = settings
        self.aliases = aliases
        self.telemetry = Telemetry()
        self.gateway = Gateway(settings, aliases, environ=environ, telemetry=self.telemetry)
        self.metrics = PrometheusMetrics(
            self.telemetry.tallies, self.gateway.breaker_states, self.gateway.alerts.gauge
        )
        self.telemetry.subscribe(self.metrics)
        self.telemetry.subscribe(RequestLog(json_lines=settings.log_json))
        self.console = ConsoleStats(self.telemetry.tallies)
        #: Refused credentials per source: bursts audited, the admin API closed to floods.
        self.refusals = Refusals(self.gateway.keyring)
        self._audits: set[asyncio.Task[None]] = set()
        if otel.configured(environ):
            try:
                self.add_tracing(otel.from_environment())
            except ImportError as exc:
                log.warning(
                    "OTEL_* is set but tracing is not installed (%s): pip install "
                    "'runestone[otel]'",
                    exc,
                )
        self.routes: list[Route | Mount] = [
            *self._model_api(),
            *self._operations(),
            *self._admin_api(),
            *mounts,
        ]
        self._stack = self._build_stack()

    def _model_api(self) -> list[Route]:
        gateway = self.gateway
        return [
            Route(
                f"/v1/{path}",
                ProxyEndpoint(protocol, gateway, stores=protocol is RESPONSES),
                method="POST",
                protocol=protocol,
                scope=CLIENT,
            )
            for path, protocol in (
                ("chat/completions", CHAT),
                ("messages", MESSAGES),
                ("messages/count_tokens", COUNT_TOKENS),
                ("embeddings", EMBEDDINGS),
                ("responses", RESPONSES),
            )
        ] + [
            Route(
                "/v1/responses/{response_id}",
                StoredResponsesEndpoint(gateway),
                also=("DELETE",),
                protocol=RESPONSES,
                scope=CLIENT,
            ),
            Route("/v1/models", models := ModelsEndpoint(gateway), scope=CLIENT),
            Route("/v1/models/{model_id}", models, scope=CLIENT),
        ]

    def _operations(self) -> list[Route]:
        return [
            Route("/metrics", MetricsEndpoint(self.metrics), scope=METRICS),
            Route("/health/live", live),
            Route("/health/ready", ReadyEndpoint(self.gateway)),
            Route("/admin/usage", UsageEndpoint(self.gateway, self.refusals)),
            Route("/console", files := ConsoleFiles()),
            Route("/console/static/{name}", files),
            Route("/console/api/overview", ConsoleApi(self.gateway, self.console), scope=OPERATOR),
        ]

    def _admin_api(self) -> list[Route]:
        keys = KeysEndpoint(self.gateway, self.refusals)
        teams = TeamsEndpoint(self.gateway, self.refusals)
        return [
            Route("/admin/keys", keys, also=("POST",)),
            Route("/admin/keys/{rest}", keys, also=("POST", "PATCH", "DELETE")),
            Route("/admin/teams", teams, also=("POST",)),
            Route("/admin/teams/{rest}", teams, also=("PATCH", "DELETE")),
            Route("/admin/audit", AuditEndpoint(self.gateway, self.refusals)),
            Route("/admin/cache", CacheEndpoint(self.gateway, self.refusals), method="DELETE"),
            Route("/admin/openapi.json", OpenApiEndpoint(self.refusals)),
        ]

    def _build_stack(self) -> ASGIApp:
        aliases = self.aliases
        backend = TokenBackend(
            self.settings.service_token,
            self.settings.metrics_token,
            keys=lambda: aliases.table.access.keys,
            admin_token=self.settings.admin_token,
        )
        return ErrorMiddleware(
            AuthenticationMiddleware(Dispatcher(self.routes), backend), self._count_refusal
        )

    def _count_refusal(self, scope: Scope, request_id: str, error: GatewayError) -> None:
        """A request refused before an endpoint counted it (a missing key, say): counted
        as a failed request of its route, without anything it presented."""
        protocol = scope.get(PROTOCOL)
        route = protocol.operation if protocol is not None else "other"
        trace = RequestTrace(
            self.telemetry, request_id=request_id, route=route, table=self.aliases.table
        )
        trace.failed(error, stream=False)
        audit = self.refusals.refused(scope, error)
        if audit is not None:
            task = asyncio.get_running_loop().create_task(audit)
            self._audits.add(task)
            task.add_done_callback(self._audit_done)

    def _audit_done(self, task: asyncio.Task[None]) -> None:
        self._audits.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("audit: cannot write a refused-credentials burst: %s", task.exception())

    def add_tracing(self, traces: Subscriber) -> None:
        """Subscribe a trace exporter (``runestone.telemetry.otel.OTelTraces``).

        Turns on the per-attempt events it needs; without tracing they are not made.
        """
        self.telemetry.subscribe(traces, traces=True)

    @property
    def router(self) -> Router | None:
        return self.gateway.router

    def __repr__(self) -> str:
        state = "started" if self.gateway.router is not None else "not started"
        return f"<RunestoneApp {state} aliases={self.aliases.path}>"

    # A coroutine function, so that servers detect an ASGI 3 application; the layers of
    # the stack below it are plain callables returning their inner app's awaitable.
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self.gateway.router is None:
                await self.startup()  # mounted where lifespan events are not forwarded
            await self._stack(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def startup(self) -> None:
        """Load aliases, open the upstream session, start the reload watcher. Idempotent.

        Run by the ASGI lifespan; when mounted in an application that does not forward
        lifespan events, the first request runs it.
        """
        await self.gateway.start()

    async def shutdown(self) -> None:
        await self.gateway.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            try:
                message = await receive()
            except asyncio.CancelledError:
                # A forced exit (a second Ctrl-C): the server skips the shutdown event and
                # cancels us. Close what closes without awaiting, and end quietly.
                self.gateway.abort()
                return
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("start-up failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # Served by uvicorn itself (not mounted): drain on its exit signals.
                hook_exit_signals(
                    self.gateway, self.settings.graceful_timeout, self.settings.drain_delay
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
