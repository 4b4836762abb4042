"""The router: model name -> targets -> an attempt at each, until one answers.

``Router`` is what the HTTP app uses; ``route_chat`` and ``route_stream`` are the same
two calls for a Python application, in-process or (``RUNESTONE_GATEWAY_MODE=true``)
through a central Runestone server.

Resolution: an exact alias first, else ``provider:model``, else ``model_not_found``.
Targets are tried in order; a retryable failure before the first byte moves on to the
next target, anything else is final. Once a stream has started it is never retried.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import aiohttp
import orjson

from runestone._alias_file import AliasTable
from runestone._policy import Policy
from runestone.aliases import AliasStore, SpecError, Target, parse_spec
from runestone.anthropic_sse import AnthropicStreamScanner
from runestone.breaker import Breakers
from runestone.errors import GatewayError, error_for
from runestone.providers import Endpoint, ProviderRegistry, default_registry
from runestone.providers.adapter import Adapter, Call, Reply
from runestone.providers.anthropic_native import AnthropicMessagesAdapter
from runestone.providers.anyllm import (
    AnyLLMChatAdapter,
    AnyLLMClients,
    AnyLLMEmbeddingsAdapter,
    AnyLLMMessagesAdapter,
)
from runestone.providers.mock import MockAdapter
from runestone.providers.openai_compat import OpenAICompatibleAdapter
from runestone.resilience import Candidate, Deadline, run_attempts
from runestone.sse import OpenAIStreamScanner
from runestone.streaming import RoutedStream
from runestone.validation import Operation, validate_chat_request

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/=+-]{1,128}$")


# Unique without a system call per request: a random per-process prefix and a counter.
_ID_PREFIX = "req_" + os.urandom(6).hex()
_id_counter = itertools.count(1)


def new_request_id(client_supplied: str | None = None) -> str:
    """Keep a client's ``x-request-id`` when it is sane, else make ``req_<hex>``."""
    if client_supplied and _SANE_REQUEST_ID.match(client_supplied):
        return client_supplied
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


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
        session: aiohttp.ClientSession,
        *,
        environ: Mapping[str, str] | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        self.aliases = aliases
        self.breakers = breakers or Breakers()
        #: Hears of every upstream attempt (call, wall-clock start in ns, error code).
        self.observe: Callable[[Call, int, str], None] | None = None
        self._environ = dict(os.environ if environ is None else environ)
        self._base_registry = default_registry(self._environ)
        self._registry_for: tuple[AliasTable, ProviderRegistry] | None = None
        passthrough = OpenAICompatibleAdapter(session)
        anthropic = AnthropicMessagesAdapter(session)
        clients = self._anyllm = AnyLLMClients()
        translated_chat = AnyLLMChatAdapter(clients)
        translated_messages = AnyLLMMessagesAdapter(clients)
        # (operation, the target's wire format) -> how to call it. Same format: bytes
        # pass through; otherwise any-llm translates.
        self._adapters: dict[tuple[Operation, str], Adapter] = {
            ("chat", "openai"): passthrough,
            ("chat", "mock"): MockAdapter(),
            ("chat", "anthropic"): translated_chat,
            ("chat", "anyllm"): translated_chat,
            ("messages", "anthropic"): anthropic,
            ("messages", "openai"): translated_messages,
            ("messages", "anyllm"): translated_messages,
            ("count_tokens", "anthropic"): anthropic,
            ("embeddings", "openai"): passthrough,
            ("embeddings", "anyllm"): AnyLLMEmbeddingsAdapter(clients),
        }

    async def aclose(self) -> None:
        """Close what the router opened itself (the translation clients)."""
        await self._anyllm.aclose()

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

    def resolve(self, model: str, table: AliasTable | None = None) -> tuple[Target, ...]:
        table = self.aliases.table if table is None else table
        alias = table.aliases.get(model)
        if alias is not None:
            return alias.targets
        if ":" in model:
            try:
                return (parse_spec(model),)
            except SpecError as exc:
                raise error_for("model_not_found", str(exc), param="model") from None
        hint = ""
        close = [a for a in table.aliases if a.lower() == model.lower()] or (
            difflib.get_close_matches(model, list(table.aliases), n=3)
        )
        if close:
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?"
        raise error_for(
            "model_not_found",
            f"unknown model {model!r}: name an alias (GET /v1/models lists them) or "
            f"provider:model, e.g. openai:gpt-4o-mini or mock:echo.{hint}",
            param="model",
        )

    def _plan(
        self,
        operation: Operation,
        body: dict[str, object],
        request_id: str,
        forward_headers: tuple[tuple[str, str], ...],
        *,
        streaming: bool = False,
    ) -> tuple[list[Candidate], Policy]:
        """The usable targets for this request, each with its breaker, and the policy."""
        table = self.aliases.table  # read once: the whole request uses this snapshot
        registry = self.registry(table)
        model = str(body["model"])
        alias = table.aliases.get(model)
        policy = alias.policy if alias is not None else table.defaults
        targets = alias.targets if alias is not None else self.resolve(model, table)
        read_timeout = policy.idle_timeout if streaming else None
        wants_usage = streaming and operation == "chat" and not asked_for_usage(body)
        candidates: list[Candidate] = []
        first_error: GatewayError | None = None
        for target in targets:
            endpoint = registry.endpoint(target.provider)
            error = _unusable(target, endpoint, registry)
            if error is not None:
                first_error = first_error or error
                continue
            assert endpoint is not None
            call = Call(
                endpoint,
                target.model,
                body,
                request_id,
                operation,
                forward_headers,
                read_timeout,
                wants_usage and endpoint.spec.stream_usage,
            )
            breaker = self.breakers.get(f"{target}@{endpoint.base_url}")
            candidates.append(Candidate(target, call, breaker))
        if not candidates:
            assert first_error is not None
            raise first_error
        return candidates, policy

    def _adapter(self, call: Call) -> Adapter:
        adapter = self._adapters.get((call.operation, call.endpoint.spec.wire_format))
        if adapter is None:
            raise error_for(
                "provider_not_supported",
                f"{_OPERATION_NAMES[call.operation]} cannot go to provider {call.provider!r} "
                f"({call.endpoint.spec.wire_format} wire format)",
                provider=call.provider,
            )
        return adapter

    async def chat(self, body: dict[str, object], request_id: str) -> Routed:
        """Answer a non-streamed chat completion; raise ``GatewayError`` on failure."""
        return await self.complete("chat", body, request_id)

    async def complete(
        self,
        operation: Operation,
        body: dict[str, object],
        request_id: str,
        forward_headers: tuple[tuple[str, str], ...] = (),
    ) -> Routed:
        """Answer one non-streamed request; raise ``GatewayError`` on failure."""
        candidates, policy = self._plan(operation, body, request_id, forward_headers)
        started = time.perf_counter()
        done = await run_attempts(
            candidates,
            policy,
            Deadline(policy.timeout),
            self._complete_one,
            observe=self.observe,
        )
        upstream = time.perf_counter() - started
        return Routed(done.result, done.candidate.target, done.attempts, upstream)

    async def _complete_one(self, candidate: Candidate) -> Reply:
        return await self._adapter(candidate.call).complete(candidate.call)

    async def open_stream(
        self,
        body: dict[str, object],
        request_id: str,
        operation: Operation = "chat",
        forward_headers: tuple[tuple[str, str], ...] = (),
    ) -> RoutedStream:
        """Open a streamed request; return once an upstream sent its first content."""
        candidates, policy = self._plan(
            operation, body, request_id, forward_headers, streaming=True
        )
        scanner_type = AnthropicStreamScanner if operation == "messages" else OpenAIStreamScanner

        async def connect(candidate: Candidate) -> RoutedStream:
            call = candidate.call
            stream = await self._adapter(call).open_stream(call)
            scanner = (
                OpenAIStreamScanner(call.provider, hide_usage=True)
                if call.add_stream_usage
                else scanner_type(call.provider)
            )
            routed = RoutedStream(stream, candidate.target, request_id, scanner, candidate.breaker)
            await routed.prime()
            return routed

        deadline = Deadline(policy.timeout)
        started = time.perf_counter()
        done = await run_attempts(
            candidates,
            policy,
            deadline,
            connect,
            attempt_timeout=policy.first_token_timeout,
            hold=True,
            observe=self.observe,
        )
        routed = done.result
        routed.attempts = done.attempts
        routed.upstream = time.perf_counter() - started
        routed.arm_deadline(deadline)
        return routed


def asked_for_usage(body: Mapping[str, object]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


_OPERATION_NAMES: dict[Operation, str] = {
    "chat": "chat completions",
    "messages": "Anthropic Messages requests",
    "count_tokens": "token counting (an Anthropic Messages feature)",
    "embeddings": "embeddings",
}


def _unusable(
    target: Target, endpoint: Endpoint | None, registry: ProviderRegistry
) -> GatewayError | None:
    if endpoint is None:
        return error_for(
            "model_not_found",
            f"unknown provider {target.provider!r} in {str(target)!r}; "
            f"known providers: {', '.join(registry.names())}",
            param="model",
        )
    if not endpoint.configured:
        return error_for(
            "provider_not_configured",
            f"provider {target.provider!r} has no API key: set {endpoint.spec.api_key_env} "
            "in the gateway's environment",
            provider=target.provider,
        )
    return None


async def route_chat(
    request: dict[str, object], *, request_id: str | None = None
) -> dict[str, object]:
    """Send one chat completion and return the provider's answer as a dict.

    Raises ``GatewayError`` (with ``code``, ``status`` and ``retryable``) on failure.

    >>> answer = await route_chat({"model": "mock:echo",
    ...                            "messages": [{"role": "user", "content": "hi"}]})
    >>> answer["choices"][0]["message"]["content"]
    'hi'
    """
    from runestone._library import default_backend

    backend = await default_backend()
    body = validate_chat_request(dict(request))
    result: dict[str, object] = orjson.loads(
        await backend.chat_bytes(body, new_request_id(request_id))
    )
    return result


async def route_stream(
    request: dict[str, object], *, request_id: str | None = None
) -> AsyncIterator[bytes]:
    """Stream one chat completion as SSE event bytes, ending with ``[DONE]`` or an error event.

    Failures before the stream starts raise ``GatewayError``; after that, the stream ends
    with ``data: {"error": ...}`` and no ``[DONE]``.

    >>> async for event in route_stream({"model": "mock:echo", "stream": True,
    ...                                  "messages": [{"role": "user", "content": "hi"}]}):
    ...     print(event)
    """
    from runestone._library import default_backend

    backend = await default_backend()
    body = validate_chat_request({**request, "stream": True})
    async for event in backend.stream_bytes(body, new_request_id(request_id)):
        yield event
