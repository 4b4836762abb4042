"""The router: model name -> targets -> an attempt at each, until one answers.

Resolution: an exact alias first, else ``provider:model``, else ``model_not_found``.
Targets are tried in order; a retryable failure before the first byte moves on to the
next target, anything else is final. Once a stream has started it is never retried.

The router knows requests only through their ``ClientProtocol`` and calls providers
only through the adapters registered for (operation, wire format): a new wire format or
a translator of one's own needs no edit here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from runestone.aliases import AliasStore, AliasTable, Policy, Target
from runestone.aliases._policy import FAILOVER_SECONDS
from runestone.errors import GatewayError, error_for
from runestone.protocols import CHAT, ClientProtocol, protocol_for
from runestone.providers import (
    Adapter,
    AdapterContext,
    Call,
    Endpoint,
    Forwarded,
    Operation,
    ProviderRegistry,
    Reply,
    UpstreamStream,
    default_registry,
    registered_adapters,
)
from runestone.providers.adapter import NOTHING_FORWARDED
from runestone.routing.attempts import Candidate, run_attempts
from runestone.routing.breakers import Breakers
from runestone.routing.resolve import resolve, unusable
from runestone.routing.stream import RoutedStream
from runestone.streams.clocks import Deadline
from runestone.streams.sse import MAX_EVENT_BYTES
from runestone.telemetry import Telemetry

#: Model names whose routes a table keeps: clients naming ``provider:model`` strings of
#: their own make names without end.
_ROUTES_KEPT = 1024


class _Destination(NamedTuple):
    """A usable target, its endpoint, and the key of its circuit breaker."""

    target: Target
    endpoint: Endpoint
    breaker: str


@dataclass(frozen=True, slots=True)
class _Route:
    """What a model name resolves to under one alias table."""

    policy: Policy
    targets: tuple[_Destination, ...]
    #: Where a prompt too long for a target goes; None: on to the other targets.
    fallback: tuple[_Destination, ...] | None
    #: Prompt-cache breakpoints placed for a target of another format.
    prompt_cache: bool = True


@dataclass(slots=True)
class Routed:
    """A completed non-streamed request, and how it got its answer."""

    reply: Reply
    target: Target
    attempts: int
    upstream: float = 0.0  # seconds spent in attempts (waiting on upstreams, backoff)


class Router:
    """Resolves model names against the live alias table and calls providers."""

    def __init__(
        self,
        aliases: AliasStore,
        context: AdapterContext,
        *,
        environ: Mapping[str, str] | None = None,
        breakers: Breakers | None = None,
        telemetry: Telemetry | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
        read_timeout: float | None = None,
        failover: float = FAILOVER_SECONDS,
    ) -> None:
        self.aliases = aliases
        #: The bound the policies' unset timeouts are worked out from (``Policy.completed``).
        self.failover = failover
        self.max_event_bytes = max_event_bytes
        #: Upstream silence allowed in a stream without an idle_timeout of its own (the
        #: session's read timeout, which the relay then bounds itself).
        self.read_timeout = read_timeout
        self.breakers = breakers if breakers is not None else Breakers()
        self.telemetry = telemetry or Telemetry()
        self._environ = dict(os.environ if environ is None else environ)
        self._base_registry = default_registry(self._environ)
        self._registry_for: tuple[AliasTable, ProviderRegistry] | None = None
        self._routes: dict[str, _Route] = {}
        self._routes_for: AliasTable | None = None
        self._adapters: dict[tuple[Operation, str], Adapter] = {
            pair: factory(context) for pair, factory in registered_adapters().items()
        }

    def registry(self, table: AliasTable) -> ProviderRegistry:
        """Built-in providers plus the table's own, rebuilt only when the table changes."""
        cached = self._registry_for
        if cached is not None and cached[0] is table:
            return cached[1]
        registry = self._base_registry
        if table.providers:
            registry = registry.with_specs(table.providers, self._environ)
        self._registry_for = (table, registry)
        return registry

    def _plan(
        self,
        protocol: ClientProtocol,
        body: dict[str, object],
        request_id: str,
        forward: Forwarded,
        table: AliasTable | None,
        *,
        streaming: bool = False,
    ) -> tuple[list[Candidate], Policy, list[Candidate] | None]:
        """The usable targets for this request, each with its breaker, the policy (its
        unset keys at their defaults), and the targets for a prompt too long for them (the
        alias's ``context_fallback``; None: on to the other targets).

        ``table`` is the snapshot the request read when it started (its exchange's): a
        reload while it is admitted must not send it by another table's routes.
        """
        if table is None:
            table = self.aliases.table
        if self._routes_for is not table:
            self._routes, self._routes_for = {}, table
        model = str(body["model"])
        route = self._routes.get(model)
        if route is None:
            route = self._route(model, table)
        policy = route.policy
        wants_usage = streaming and protocol.add_stream_usage(body)
        context = (body, request_id, protocol.operation, forward, wants_usage, route.prompt_cache)
        candidates = self._candidates(route.targets, context)
        fallback = route.fallback
        if fallback is None:
            return candidates, policy, None
        return candidates, policy, self._candidates(fallback, context) if fallback else []

    def destinations(self, model: str, table: AliasTable) -> list[tuple[Target, Endpoint]]:
        """Where a request for ``model`` may go under ``table``: its targets, then its
        context fallback (a ``GatewayError`` when none can be called, as routing's)."""
        route = self._routes.get(model) if self._routes_for is table else None
        if route is None:
            route = self._route(model, table)
        return [(d.target, d.endpoint) for d in (*route.targets, *(route.fallback or ()))]

    def _route(self, model: str, table: AliasTable) -> _Route:
        """What ``model`` resolves to under ``table``: targets with their endpoints.

        Kept for the table's lifetime when every target is usable (a reload starts a new
        table, so a new cache); a name with an unusable target is worked out per
        request, so that its error is a fresh one each time.
        """
        registry = self.registry(table)
        alias = table.match(model)
        targets = alias.targets if alias is not None else resolve(model, table)
        fallback = alias.context_fallback if alias is not None else ()  # None: the others
        errors: list[GatewayError] = []
        usable = self._usable(targets, registry, errors)
        if not usable:
            first = errors[0]
            first.target = str(targets[0])  # where it would have gone, for its headers
            raise first
        policy = alias.policy if alias is not None else table.defaults
        route = _Route(
            policy.completed(len(usable), self.failover),
            usable,
            None if fallback is None else self._usable(fallback, registry, errors),
            alias.prompt_cache if alias is not None else True,
        )
        if not errors and len(self._routes) < _ROUTES_KEPT:
            self._routes[model] = route
        return route

    @staticmethod
    def _usable(
        targets: tuple[Target, ...], registry: ProviderRegistry, errors: list[GatewayError]
    ) -> tuple[_Destination, ...]:
        """The targets that can be called; why the others cannot, appended to ``errors``."""
        found = []
        for target in targets:
            endpoint = registry.endpoint(target.provider)
            error = unusable(target, endpoint, registry)
            if error is not None:
                errors.append(error)
                continue
            assert endpoint is not None
            found.append(_Destination(target, endpoint, f"{target}@{endpoint.public_url}"))
        return tuple(found)

    def _candidates(
        self,
        destinations: tuple[_Destination, ...],
        context: tuple[dict[str, object], str, Operation, Forwarded, bool, bool],
    ) -> list[Candidate]:
        """This request's attempt at each destination, with the destination's breaker."""
        body, request_id, operation, forward, wants_usage, prompt_cache = context
        breaker = self.breakers.get
        found = []
        for target, endpoint, key in destinations:  # a plain loop: this runs per request
            call = Call(
                endpoint,
                target.model,
                body,
                request_id,
                operation,
                forward,
                wants_usage and endpoint.spec.stream_usage,
                prompt_cache,
            )
            found.append(Candidate(target, call, breaker(key)))
        return found

    def _adapter(self, call: Call) -> Adapter:
        adapter = self._adapters.get((call.operation, call.endpoint.spec.wire_format))
        if adapter is None:
            raise error_for(
                "provider_not_supported",
                f"{protocol_for(call.operation).title} cannot go to provider "
                f"{call.provider!r} ({call.endpoint.spec.wire_format} wire format)",
                provider=call.provider,
            )
        return adapter

    async def chat(self, body: dict[str, object], request_id: str) -> Routed:
        """Answer a non-streamed chat completion; raise ``GatewayError`` on failure."""
        return await self.complete(CHAT, body, request_id)

    async def complete(
        self,
        protocol: ClientProtocol,
        body: dict[str, object],
        request_id: str,
        forward: Forwarded = NOTHING_FORWARDED,
        table: AliasTable | None = None,
    ) -> Routed:
        """Answer one non-streamed request; raise ``GatewayError`` on failure."""
        candidates, policy, fallback = self._plan(protocol, body, request_id, forward, table)
        started = time.perf_counter()
        done = await run_attempts(
            candidates,
            policy,
            Deadline(policy.timeout),
            self._complete_one,
            attempt_timeout=policy.attempt_timeout,
            last_attempt_timeout=policy.last_attempt_timeout,
            observe=self.telemetry.attempt_observer,
            context_fallback=fallback,
        )
        upstream = time.perf_counter() - started
        return Routed(done.result, done.candidate.target, done.attempts, upstream)

    # Not coroutines: they hand back the adapter's, one frame fewer per resumption.
    def _complete_one(self, candidate: Candidate) -> Awaitable[Reply]:
        return self._adapter(candidate.call).complete(candidate.call)

    def _open_upstream(self, call: Call) -> Awaitable[UpstreamStream]:
        return self._adapter(call).open_stream(call)

    async def open_stream(
        self,
        body: dict[str, object],
        request_id: str,
        protocol: ClientProtocol = CHAT,
        forward: Forwarded = NOTHING_FORWARDED,
        table: AliasTable | None = None,
        *,
        drain_for: float = 0.0,
    ) -> RoutedStream:
        """Open a streamed request; return once an upstream sent its first content.

        ``drain_for``: seconds the upstream is read on after the client left, for usage.
        """
        candidates, policy, fallback = self._plan(
            protocol, body, request_id, forward, table, streaming=True
        )
        routed = RoutedStream(
            request_id=request_id,
            protocol=protocol,
            candidates=candidates,
            context_fallback=fallback,
            policy=policy,
            open_upstream=self._open_upstream,
            observe=self.telemetry.attempt_observer,
            max_event_bytes=self.max_event_bytes,
            read_timeout=self.read_timeout,
            drain_for=drain_for,
        )
        await routed.connect()
        return routed
