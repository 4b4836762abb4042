"""The one place that assembles a gateway, for the server and the library alike.

A ``Gateway`` owns what lives as long as the process serves: the alias store and its
reload watcher, the upstream HTTP session, the adapters' shared resources, the circuit
breakers, the router and the telemetry hook. ``start`` and ``aclose`` bring them up and
down in order; the ASGI app runs them from its lifespan, the library on first use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from runestone.access import Access
from runestone.alerts import BudgetAlerts
from runestone.aliases import AliasStore, parse_spec
from runestone.cache import ResponseCache
from runestone.config import Settings
from runestone.conversations import Conversations
from runestone.errors import error_for
from runestone.guards import Guards
from runestone.keyring import POLL_SECONDS, Keyring
from runestone.providers import AdapterContext
from runestone.providers.wire import Wire, make_wire
from runestone.routing import Breakers, RoutedStream, Router
from runestone.telemetry import AliasReload, StoreFailed, Telemetry

log = logging.getLogger("runestone.gateway")


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait for its end. A cancellation can be lost inside
    a store call (Python 3.11's ``asyncio.timeout`` turns one that meets its own deadline
    into ``TimeoutError``, which the task handles as a store failure and goes on): so it
    is cancelled again until it ends, for at most two seconds."""
    for _ in range(8):
        task.cancel()
        done, _pending = await asyncio.wait({task}, timeout=0.25)
        if done:
            if not task.cancelled() and task.exception() is not None:
                log.error("a background task failed: %r", task.exception())
            return
    log.error("a background task did not stop: %r", task)


#: The most bytes of a moderation model's answer read.
_MAX_MODERATION = 1024 * 1024


class Gateway:
    """Settings, aliases, session, adapters, breakers, router and telemetry, together."""

    def __init__(
        self,
        settings: Settings,
        aliases: AliasStore,
        *,
        environ: Mapping[str, str] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        self.aliases = aliases
        self.environ = environ
        self.telemetry = telemetry or Telemetry()
        self.router: Router | None = None
        self._wire: Wire | None = None
        self._context: AdapterContext | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        #: Streams being relayed now, so that a shutdown can end them honestly.
        self.streams: set[RoutedStream] = set()
        #: Shutting down: not ready for new traffic; streams end at the graceful timeout.
        self.draining = False
        self._drain_timer: asyncio.TimerHandle | None = None
        #: Client keys' limits and budgets; its store opens when a key first needs it.
        self.access = Access(
            lambda: settings.open_store(environ),
            lambda store: self.telemetry.emit(StoreFailed(store=store)),
            store_name=settings.store_name,
        )
        #: The Responses API's store of responses; opened when a request first needs it.
        self.conversations = Conversations(lambda: settings.open_response_store(environ))
        #: The keys and teams made by the admin API, merged into the alias table.
        self.keyring = Keyring(lambda: settings.open_keyring(environ), aliases)
        self._keyring_poll: asyncio.Task[None] | None = None
        #: The exact response cache; its store opens when a request first needs it.
        self.cache = ResponseCache(lambda: settings.open_cache(environ))
        #: Budgets' alerts (to the webhooks) and used shares (for the gauge).
        self.alerts = BudgetAlerts(settings.alert_webhooks, self.keyring.claim)
        self.access.on_budget = self.alerts
        self._alerting: asyncio.Task[None] | None = None
        #: The alias file's guards, compiled; moderation guards call providers' models.
        self.guards = Guards(self.telemetry, self._moderate)
        aliases.on_reload = self._reloaded

    def __repr__(self) -> str:
        state = "started" if self.router is not None else "not started"
        return f"<Gateway {state} aliases={self.aliases.path}>"

    def _reloaded(self, ok: bool, version: str, initial: bool) -> None:
        self.telemetry.emit(AliasReload(ok=ok, version=version, initial=initial))

    def breaker_states(self) -> list[dict[str, object]]:
        return self.router.breakers.snapshot() if self.router is not None else []

    async def start(self) -> Router:
        """Load aliases, open the upstream session, start the reload watcher. Idempotent."""
        async with self._start_lock:
            if self.router is not None:
                return self.router
            settings = self.settings
            self.aliases.load()
            self._wire = make_wire(
                settings.upstream_transport,
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
            )
            self._context = AdapterContext(
                self._wire,
                max_upstream_body=settings.max_upstream_body_bytes,
                max_event_bytes=settings.max_event_bytes,
            )
            self._watcher = asyncio.create_task(self.aliases.watch(settings.watch))
            await self.keyring.start()
            self._keyring_poll = asyncio.create_task(self._follow_keyring())
            self._alerting = asyncio.create_task(self.alerts.run())
            self.router = Router(
                self.aliases,
                self._context,
                environ=self.environ,
                breakers=Breakers(settings.breaker_config()),
                telemetry=self.telemetry,
                max_event_bytes=settings.max_event_bytes,
                read_timeout=settings.read_timeout,
                failover=settings.failover_seconds,
            )
            return self.router

    async def _moderate(
        self, target: str, texts: Sequence[str], seconds: float
    ) -> list[dict[str, Any]]:
        """A moderation model's results for ``texts`` (``POST /moderations``)."""
        spec = parse_spec(target)
        router, wire = self.router, self._wire
        if router is None or wire is None:
            raise ValueError("the gateway has not started")
        endpoint = router.registry(self.aliases.table).endpoint(spec.provider)
        if endpoint is None or not endpoint.configured:
            raise ValueError(f"provider {spec.provider!r} is not configured")
        body = orjson.dumps({"model": spec.model, "input": list(texts)})
        async with asyncio.timeout(seconds):
            answer = await wire.post(endpoint, "/moderations", "", body, endpoint.headers)
            data, _ = await answer.read(_MAX_MODERATION)
        if answer.status != 200:
            raise ValueError(f"moderation answered {answer.status}")
        parsed = orjson.loads(data)
        results = parsed.get("results") if isinstance(parsed, dict) else None
        if not isinstance(results, list) or len(results) != len(texts):
            raise ValueError("moderation answered without one result per text")
        return results

    async def _follow_keyring(self) -> None:
        """Other replicas' key changes, read within ``POLL_SECONDS``."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            await self.keyring.poll()

    def begin_drain(self, timeout: float) -> None:
        """Shutdown begins: report not ready; after ``timeout`` seconds, end every stream
        still running with ``gateway_shutting_down`` in-band (retryable: the client can
        ask another replica), so that the process can exit without cutting a stream dead.
        """
        if self.draining:
            return
        self.draining = True
        log.info(
            "draining: %d streams in flight, ended in-band after %gs", len(self.streams), timeout
        )
        loop = asyncio.get_running_loop()
        self._drain_timer = loop.call_later(timeout, self._end_streams, timeout)

    def drain_after(self, delay: float, timeout: float, then: Callable[[], None]) -> None:
        """Not ready from now on, still serving: ``then`` (the server's shutdown) after
        ``delay`` seconds, and streams end ``timeout`` seconds after that."""
        self.begin_drain(delay + timeout)
        asyncio.get_running_loop().call_later(delay, then)

    def _end_streams(self, timeout: float) -> None:
        for routed in list(self.streams):
            routed.end_now(
                error_for(
                    "gateway_shutting_down",
                    f"the gateway is shutting down and its graceful timeout of {timeout:g}s "
                    "has passed; the answer is incomplete, retry it",
                )
            )

    def abort(self) -> None:
        """A forced exit (a second Ctrl-C): cut every stream and the upstream pool now.

        Nothing is awaited any more after this, so what can be closed synchronously is:
        no stream stays open and no unclosed-session warning is left for exit.
        """
        self._end_streams(0)
        for routed in list(self.streams):
            routed.close()
        if self._wire is not None:
            self._wire.close_now()

    async def aclose(self) -> None:
        """Stop the watcher, close the adapters' resources and the session."""
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        for task in (self._watcher, self._keyring_poll, self._alerting):
            if task is not None:
                await _stop(task)
        self._watcher = self._keyring_poll = self._alerting = None
        await self.keyring.aclose()
        await self.cache.aclose()
        await self.access.aclose()
        await self.conversations.aclose()
        await self.guards.aclose()
        if self._context is not None:
            await self._context.aclose()
            self._context = None
        if self._wire is not None:
            await self._wire.aclose()
            self._wire = None
        self.router = None
