"""The ASGI application: routes, auth, request ids and the SSE writer.

A pure ASGI callable (no framework in the request path) so that a request costs a few
dict lookups on top of the router, and streams go out exactly as relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
import orjson

from runestone import usage
from runestone._session import make_session
from runestone.aliases import AliasStore, Target
from runestone.breaker import Breakers
from runestone.config import Settings
from runestone.errors import GatewayError, error_for
from runestone.http._asgi import (
    JSON,
    ClientGone,
    Receive,
    Scope,
    Send,
    header_value,
    parse_json,
    read_body,
    send_error,
    send_json,
)
from runestone.http._relay import StreamState, relay_to_client
from runestone.pricing import packaged_prices
from runestone.providers.adapter import Call
from runestone.providers.mock import MODELS as MOCK_MODELS
from runestone.router import Router, new_request_id
from runestone.streaming import RoutedStream
from runestone.telemetry import (
    AliasReload,
    AttemptFinished,
    Outcome,
    RequestFinished,
    Subscriber,
    Telemetry,
    otel,
)
from runestone.telemetry.logs import RequestLog
from runestone.telemetry.prometheus import CONTENT_TYPE as METRICS_TYPE
from runestone.telemetry.prometheus import PrometheusMetrics
from runestone.validation import Operation, validate

log = logging.getLogger("runestone.http")

Handler = Callable[[Scope, Receive, Send, str], Awaitable[None]]

_FORWARDED = (b"anthropic-version", b"anthropic-beta")


class _Route:
    __slots__ = ("anthropic", "handler", "method")

    def __init__(self, method: str, handler: Handler, *, anthropic: bool = False) -> None:
        self.method = method
        self.handler = handler
        self.anthropic = anthropic  # errors in Anthropic's shape


class RunestoneApp:
    """The gateway as an ASGI application. Build it with ``create_app``."""

    def __init__(
        self, settings: Settings, aliases: AliasStore, environ: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self._environ = environ
        self.aliases = aliases
        self.router: Router | None = None
        self._session: aiohttp.ClientSession | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        token = settings.service_token
        self._token = token.encode() if token else None
        self._bearer = b"Bearer " + self._token if self._token else None
        metrics_token = settings.metrics_token or token
        self._metrics_bearer = b"Bearer " + metrics_token.encode() if metrics_token else None
        self.telemetry = Telemetry()
        self.metrics = PrometheusMetrics(self._breaker_states)
        self.telemetry.subscribe(self.metrics)
        self.telemetry.subscribe(RequestLog(json_lines=settings.log_json))
        self._tracing = False
        if otel.configured(environ):
            try:
                self.add_tracing(otel.from_environment())
            except ImportError as exc:
                log.warning(
                    "OTEL_* is set but tracing is not installed (%s): pip install "
                    "'runestone[otel]'",
                    exc,
                )
        aliases.on_reload = lambda ok, version: self.telemetry.emit(AliasReload(ok, version))
        self._routes: dict[str, _Route] = {
            "/metrics": _Route("GET", self._metrics),
            "/v1/chat/completions": _Route("POST", self._chat),
            "/v1/messages": _Route("POST", self._messages, anthropic=True),
            "/v1/messages/count_tokens": _Route("POST", self._count_tokens, anthropic=True),
            "/v1/embeddings": _Route("POST", self._embeddings),
            "/v1/models": _Route("GET", self._models),
            "/health/live": _Route("GET", self._live),
            "/health/ready": _Route("GET", self._ready),
        }

    def add_tracing(self, traces: Subscriber) -> None:
        """Subscribe a trace exporter (``runestone.telemetry.otel.OTelTraces``).

        Turns on the per-attempt events it needs; without tracing they are not made.
        """
        self.telemetry.subscribe(traces)
        self._tracing = True
        if self.router is not None:
            self.router.observe = self._observe_attempt

    def _observe_attempt(self, call: Call, began_ns: int, code: str) -> None:
        self.telemetry.emit(
            AttemptFinished(
                call.request_id, call.provider, call.model, began_ns, time.time_ns(), code
            )
        )

    def _breaker_states(self) -> list[dict[str, object]]:
        return self.router.breakers.snapshot() if self.router is not None else []

    def __repr__(self) -> str:
        state = "started" if self.router is not None else "not started"
        return f"<RunestoneApp {state} aliases={self.aliases.path}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # -- life cycle -------------------------------------------------------------------

    async def startup(self) -> None:
        """Load aliases, open the upstream session, start the reload watcher. Idempotent.

        Run by the ASGI lifespan; when mounted in an application that does not forward
        lifespan events, the first request runs it.
        """
        async with self._start_lock:
            if self.router is not None:
                return
            self.aliases.load()
            self._session = make_session(
                connect_timeout=self.settings.connect_timeout,
                read_timeout=self.settings.read_timeout,
            )
            self._watcher = asyncio.create_task(self.aliases.watch(self.settings.watch))
            self.router = Router(
                self.aliases,
                self._session,
                environ=self._environ,
                breakers=Breakers(self.settings.breaker_config()),
            )
            if self._tracing:
                self.router.observe = self._observe_attempt

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self.router is not None:
            await self.router.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.router = None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("start-up failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- requests ---------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]  # mounted under a prefix
        authorization = api_key = client_request_id = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                api_key = value
            elif name == b"x-request-id":
                client_request_id = value.decode("latin-1")
        request_id = new_request_id(client_request_id)
        route = self._routes.get(path)
        anthropic = route is not None and route.anthropic
        try:
            if route is None:
                raise error_for("not_found", f"no endpoint {path}; see README.md for the API")
            if scope["method"] != route.method:
                raise error_for("method_not_allowed", f"{path} accepts {route.method} only")
            if self._token is not None and path.startswith("/v1/"):
                self._check_token(authorization, api_key)
            if self.router is None:
                await self.startup()
            await route.handler(scope, receive, send, request_id)
        except GatewayError as exc:
            await send_error(send, exc, request_id, anthropic=anthropic)
        except ClientGone:
            return
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            await send_error(
                send,
                error_for("internal_error", "the gateway failed to handle the request"),
                request_id,
                anthropic=anthropic,
            )

    def _check_token(self, authorization: bytes | None, api_key: bytes | None) -> None:
        # Bearer for OpenAI clients; x-api-key for Anthropic clients, which send that.
        bearer, token = self._bearer, self._token
        assert bearer is not None
        assert token is not None
        if authorization is not None and hmac.compare_digest(authorization, bearer):
            return
        if api_key is not None and hmac.compare_digest(api_key, token):
            return
        raise error_for(
            "unauthorized",
            "missing or wrong gateway token: send 'Authorization: Bearer <token>' (or "
            "'x-api-key: <token>') with the gateway's RUNESTONE_SERVICE_TOKEN",
        )

    async def _read_json_body(self, scope: Scope, receive: Receive) -> object:
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    declared = int(value)
                break
        body = await read_body(receive, self.settings.max_body_bytes, declared)
        return parse_json(body)

    async def _chat(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        await self._proxy("chat", scope, receive, send, request_id)

    async def _messages(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        await self._proxy("messages", scope, receive, send, request_id)

    async def _count_tokens(
        self, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        await self._proxy("count_tokens", scope, receive, send, request_id)

    async def _embeddings(
        self, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        await self._proxy("embeddings", scope, receive, send, request_id)

    async def _proxy(
        self, operation: Operation, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        started = time.perf_counter()
        started_ns = time.time_ns()
        traceparent = None
        if self._tracing:
            traceparent = next(
                (v.decode("latin-1") for k, v in scope["headers"] if k == b"traceparent"), None
            )
        stream = False
        model = ""
        in_flight = self.metrics.child(self.metrics.in_flight, operation)
        in_flight.inc()
        try:
            body = validate(operation, await self._read_json_body(scope, receive))
            model = str(body["model"])
            router = self.router
            assert router is not None
            forward: tuple[tuple[str, str], ...] = ()
            if operation != "chat" and operation != "embeddings":
                forward = tuple(
                    (name.decode(), value.decode("latin-1"))
                    for name, value in scope["headers"]
                    if name in _FORWARDED
                )
            if body.get("stream") is True and operation in ("chat", "messages"):
                stream = True
                routed_stream = await router.open_stream(body, request_id, operation, forward)
                trace = (started_ns, traceparent)
                await self._relay(routed_stream, receive, send, operation, model, started, trace)
                return
            routed = await router.complete(operation, body, request_id, forward)
            elapsed = time.perf_counter() - started
            overhead_ms = max(elapsed - routed.upstream, 0.0) * 1000
            headers = [
                (b"content-type", routed.reply.content_type),
                (b"x-request-id", request_id.encode()),
                (b"x-runestone-target", header_value(str(routed.target))),
                (b"x-runestone-attempts", str(routed.attempts).encode()),
                (b"x-runestone-overhead-ms", b"%.3f" % overhead_ms),
                (
                    b"server-timing",
                    b"gateway;dur=%.3f, upstream;dur=%.3f" % (overhead_ms, routed.upstream * 1000),
                ),
            ]
            given, taken = usage.from_body(routed.reply.body)
            cost = self._cost(routed.target, given, taken)
            if cost is not None:
                headers.append((b"x-runestone-cost-usd", b"%.8f" % cost))
            await send_json(send, 200, routed.reply.body, headers)
            self.telemetry.emit(
                RequestFinished(
                    request_id,
                    operation,
                    self._alias_label(model),
                    routed.target.provider,
                    routed.target.model,
                    200,
                    "",
                    False,
                    routed.attempts,
                    time.perf_counter() - started,
                    routed.upstream,
                    None,
                    given,
                    taken,
                    "complete",
                    cost,
                    started_ns,
                    traceparent,
                )
            )
        except GatewayError as exc:
            self.telemetry.emit(
                RequestFinished(
                    request_id,
                    operation,
                    self._alias_label(model),
                    exc.provider or "-",
                    "-",
                    exc.status,
                    exc.code,
                    stream,
                    1,
                    time.perf_counter() - started,
                    0.0,
                    None,
                    None,
                    None,
                    "error",
                    None,
                    started_ns,
                    traceparent,
                )
            )
            raise
        finally:
            in_flight.dec()

    def _cost(self, target: Target, given: int | None, taken: int | None) -> float | None:
        if given is None and taken is None:
            return None
        spec = str(target)
        price = self.aliases.table.prices.get(spec) or packaged_prices().get(spec)
        return None if price is None else price.cost(given, taken)

    def _alias_label(self, model: str) -> str:
        # Only names from the alias file become labels: client strings stay out of metrics.
        return model if model in self.aliases.table.aliases else "-"

    async def _relay(
        self,
        routed: RoutedStream,
        receive: Receive,
        send: Send,
        operation: Operation,
        model: str,
        started: float,
        trace: tuple[int, str | None],
    ) -> None:
        setup = time.perf_counter() - started
        streams = self.metrics.child(self.metrics.in_flight_streams, operation)
        streams.inc()

        def finished(state: StreamState) -> None:
            streams.dec()
            self._stream_finished(routed, state, operation, model, started, setup, trace)

        await relay_to_client(routed, receive, send, self.settings.heartbeat_seconds, finished)

    def _stream_finished(
        self,
        routed: RoutedStream,
        state: StreamState,
        operation: Operation,
        model: str,
        started: float,
        setup: float,
        trace: tuple[int, str | None],
    ) -> None:
        summary = routed.summary
        if state.client_gone:
            outcome: Outcome = "client_cancelled"
        elif summary.done:
            outcome = "complete"
        elif summary.error is not None and summary.error.code == "upstream_stream_interrupted":
            outcome = "truncated"
        else:
            outcome = "upstream_error"
        given, taken = usage.tokens(summary.usage)
        duration = time.perf_counter() - started
        self.telemetry.emit(
            RequestFinished(
                routed.request_id,
                operation,
                self._alias_label(model),
                routed.target.provider,
                routed.target.model,
                200,
                summary.error.code if summary.error else "",
                True,
                routed.attempts,
                duration,
                max(duration - setup + routed.upstream, 0.0),
                setup,
                given,
                taken,
                outcome,
                self._cost(routed.target, given, taken),
                *trace,
            )
        )

    async def _models(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        router = self.router
        assert router is not None
        table = self.aliases.table
        registry = router.registry(table)
        ids: dict[str, str] = {name: "runestone" for name in table.aliases}
        for alias in table.aliases.values():
            for target in alias.targets:
                endpoint = registry.endpoint(target.provider)
                if endpoint is not None and endpoint.configured:
                    ids.setdefault(str(target), target.provider)
        for model in MOCK_MODELS:
            ids.setdefault(f"mock:{model}", "mock")
        data = [
            {"id": model_id, "object": "model", "created": 0, "owned_by": owner}
            for model_id, owner in ids.items()
        ]
        body = orjson.dumps({"object": "list", "data": data})
        await send_json(
            send, 200, body, [(b"content-type", JSON), (b"x-request-id", request_id.encode())]
        )

    async def _metrics(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        expected = self._metrics_bearer
        if expected is not None:
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, expected):
                raise error_for(
                    "unauthorized",
                    "/metrics needs 'Authorization: Bearer <token>' with RUNESTONE_METRICS_TOKEN "
                    "(or the service token when no metrics token is set)",
                )
        body = self.metrics.render()
        await send_json(send, 200, body, [(b"content-type", METRICS_TYPE.encode())])

    async def _live(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        await send_json(send, 200, b'{"status":"ok"}', [(b"content-type", JSON)])

    async def _ready(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        status = self.aliases.status
        loaded = bool(status.version)
        breakers = self.router.breakers.snapshot() if self.router is not None else []
        body = orjson.dumps(
            {
                "status": "ready" if loaded else "not_ready",
                "aliases": {"count": len(self.aliases.table), **status.as_dict()},
                "breakers": breakers,
            }
        )
        await send_json(send, 200 if loaded else 503, body, [(b"content-type", JSON)])
