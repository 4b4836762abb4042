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
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import orjson

from runestone._alias_file import AliasTable
from runestone.aliases import AliasStore, SpecError, Target, parse_spec
from runestone.anthropic_sse import AnthropicStreamScanner
from runestone.errors import GatewayError, error_for
from runestone.providers import Endpoint, ProviderRegistry, default_registry
from runestone.providers.adapter import Adapter, Call, Reply, UpstreamStream
from runestone.providers.anthropic_native import AnthropicMessagesAdapter
from runestone.providers.anyllm import (
    AnyLLMChatAdapter,
    AnyLLMClients,
    AnyLLMEmbeddingsAdapter,
    AnyLLMMessagesAdapter,
)
from runestone.providers.mock import MockAdapter
from runestone.providers.openai_compat import OpenAICompatibleAdapter
from runestone.sse import OpenAIStreamScanner, StreamScanner, StreamSummary, relay_stream
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


class RoutedStream:
    """An accepted upstream stream, relayed to the client with honest endings."""

    __slots__ = ("_stream", "attempts", "request_id", "scanner", "target")

    def __init__(
        self,
        stream: UpstreamStream,
        target: Target,
        attempts: int,
        request_id: str,
        scanner: StreamScanner,
    ) -> None:
        self._stream = stream
        self.target = target
        self.attempts = attempts
        self.request_id = request_id
        self.scanner = scanner

    @property
    def summary(self) -> StreamSummary:
        return self.scanner.summary

    def events(self) -> AsyncGenerator[bytes, None]:
        return relay_stream(self._stream.chunks(), self.scanner, self.request_id)

    def close(self) -> None:
        """Drop the upstream connection at once (the client went away)."""
        self._stream.close()

    async def aclose(self) -> None:
        """Release the upstream: kept for reuse after a complete stream, else cut."""
        if self.scanner.summary.done:
            await self._stream.finish()
        else:
            self._stream.close()


class Router:
    """Resolves model names against the live alias table and calls providers."""

    def __init__(
        self,
        aliases: AliasStore,
        session: aiohttp.ClientSession,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.aliases = aliases
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

    def _attempts(
        self,
        operation: Operation,
        body: dict[str, object],
        request_id: str,
        forward_headers: tuple[tuple[str, str], ...],
    ) -> list[tuple[Target, Call]]:
        table = self.aliases.table  # read once: the whole request uses this snapshot
        registry = self.registry(table)
        targets = self.resolve(str(body["model"]), table)
        calls: list[tuple[Target, Call]] = []
        first_error: GatewayError | None = None
        for target in targets:
            endpoint = registry.endpoint(target.provider)
            error = _unusable(target, endpoint, registry)
            if error is not None:
                first_error = first_error or error
                continue
            assert endpoint is not None
            calls.append(
                (
                    target,
                    Call(endpoint, target.model, body, request_id, operation, forward_headers),
                )
            )
        if not calls:
            assert first_error is not None
            raise first_error
        return calls

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
        last: GatewayError | None = None
        calls = self._attempts(operation, body, request_id, forward_headers)
        for attempt, (target, call) in enumerate(calls, start=1):
            try:
                reply = await self._adapter(call).complete(call)
            except GatewayError as exc:
                if not exc.retryable:
                    raise
                last = exc
                continue
            return Routed(reply, target, attempt)
        assert last is not None
        raise last

    async def open_stream(
        self,
        body: dict[str, object],
        request_id: str,
        operation: Operation = "chat",
        forward_headers: tuple[tuple[str, str], ...] = (),
    ) -> RoutedStream:
        """Open a streamed request; return once an upstream accepted it."""
        last: GatewayError | None = None
        calls = self._attempts(operation, body, request_id, forward_headers)
        scanner_type = AnthropicStreamScanner if operation == "messages" else OpenAIStreamScanner
        for attempt, (target, call) in enumerate(calls, start=1):
            try:
                stream = await self._adapter(call).open_stream(call)
            except GatewayError as exc:
                if not exc.retryable:
                    raise
                last = exc
                continue
            return RoutedStream(stream, target, attempt, request_id, scanner_type(target.provider))
        assert last is not None
        raise last


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
