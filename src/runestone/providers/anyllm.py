"""Cross-format traffic through any-llm (mozilla-ai): its provider logic, not ours.

Used when the client's wire format differs from the target's: OpenAI-format requests to
Anthropic, Gemini, Bedrock and the rest; Anthropic-format (Messages API) requests to
OpenAI-compatible targets. Same-format traffic never comes here.

any-llm costs about a second to import, so it is imported on first use; one AnyLLM
instance is kept per (provider, base URL, key) with its own retries off, since retries
and failover are the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from runestone.errors import GatewayError
from runestone.providers._specs import Endpoint
from runestone.providers.adapter import Call, Reply
from runestone.providers.anyllm_errors import map_anyllm_error
from runestone.streams.sse import DONE_EVENT, encode
from runestone.translate import messages_arguments


class AnyLLMClients:
    """One any-llm provider instance per (provider, base URL, key), created on first use."""

    def __init__(self) -> None:
        self._instances: dict[tuple[str, str, str | None], Any] = {}

    async def aclose(self) -> None:
        """Close the SDK clients (and their connection pools) under the instances."""
        instances, self._instances = list(self._instances.values()), {}
        for instance in instances:
            close = getattr(getattr(instance, "client", None), "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    result = close()
                    if asyncio.iscoroutine(result):
                        await result

    def get(self, endpoint: Endpoint) -> Any:
        spec = endpoint.spec
        key = (spec.name, endpoint.base_url, endpoint.api_key)
        instance = self._instances.get(key)
        if instance is None:
            try:
                instance = self._instances[key] = self._create(endpoint)
            except Exception as exc:
                raise map_anyllm_error(spec.name, exc) from exc
        return instance

    @staticmethod
    def _create(endpoint: Endpoint) -> Any:
        from any_llm import AnyLLM

        # any-llm warns on every request it adjusts (a defaulted max_tokens, say): at
        # gateway rates that is a log line per request, so only its errors are kept.
        logging.getLogger("any_llm").setLevel(logging.ERROR)

        spec = endpoint.spec
        if spec.wire_format == "openai":  # any OpenAI-compatible server, by its base URL
            extra = {k: v for k, v in endpoint.headers.items() if k not in _OWN_HEADERS}
            return AnyLLM.create_openai_compatible(
                spec.name,
                api_base=endpoint.base_url,
                api_key=endpoint.api_key or "no-key-needed",
                unified_exceptions=True,
                max_retries=0,
                default_headers=extra or None,
            )
        return AnyLLM.create(
            spec.name,
            api_key=endpoint.api_key,
            api_base=endpoint.base_url or None,
            unified_exceptions=True,
            max_retries=0,
        )


_OWN_HEADERS = frozenset({"authorization", "x-api-key", "content-type"})


def _dump(value: Any) -> bytes:
    return orjson.dumps(value.model_dump(mode="json", exclude_none=True))


class _SdkStream:
    """An any-llm stream of typed events, as SSE bytes in the client's protocol."""

    def __init__(self, provider: str, events: Any, render: Any, end: bytes) -> None:
        self._provider = provider
        self._events = events
        self._render = render
        self._end = end

    async def chunks(self) -> AsyncIterator[bytes]:
        events = aiter(self._events)
        while True:
            try:  # what the SDK raises is the upstream's; what rendering raises, ours
                event = await anext(events)
            except StopAsyncIteration:
                break
            except GatewayError:
                raise
            except Exception as exc:
                raise map_anyllm_error(self._provider, exc, streaming=True) from exc
            rendered = self._render(event)
            if rendered:
                yield rendered
        if self._end:
            yield self._end

    def failure(self, exc: Exception) -> GatewayError | None:
        return None  # the SDK's own errors are mapped as they are raised, above

    def close(self) -> None:
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            task = asyncio.ensure_future(aclose())
            task.add_done_callback(_ignore_result)

    async def finish(self) -> None:
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _OpenAIChunks:
    """Holds a translated stream to the chat-completions contract any-llm leaves loose.

    One id and creation time for the whole stream; the role in the first delta; no empty
    chunks; tool calls numbered 0, 1, ... (any-llm passes Anthropic's content-block
    index); a usage chunk only when the client asked for one.
    """

    def __init__(self, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._id = ""
        self._created = 0
        self._role_sent = False
        self._tool_index: dict[int, int] = {}

    def __call__(self, chunk: Any) -> bytes:
        data = chunk.model_dump(mode="json", exclude_none=True)
        if not self._id:
            self._id = data.get("id") or f"chatcmpl-{os.urandom(12).hex()}"
            self._created = data.get("created") or int(time.time())
        data["id"], data["created"] = self._id, self._created
        choices = data.get("choices") or []
        if not self._include_usage:
            data.pop("usage", None)
        kept = []
        for choice in choices:
            delta = choice.get("delta") or {}
            for call in delta.get("tool_calls") or []:
                if "index" in call:
                    call["index"] = self._tool_index.setdefault(
                        call["index"], len(self._tool_index)
                    )
            if delta or choice.get("finish_reason"):
                kept.append(choice)
        if not kept and "usage" not in data:
            return b""
        data["choices"] = kept
        out = b""
        if kept and not self._role_sent:
            self._role_sent = True
            first = kept[0].setdefault("delta", {})
            if "role" not in first:
                opening = {
                    **data,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
                }
                opening.pop("usage", None)
                out = encode(orjson.dumps(opening))
        return out + encode(orjson.dumps(data))


def _anthropic_event(event: Any) -> bytes:
    return encode(_dump(event), str(event.type))


class _TranslatingAdapter:
    """Calls one any-llm method (``METHOD``) and renders its stream in the client's protocol."""

    METHOD = ""

    def __init__(self, clients: AnyLLMClients) -> None:
        self._clients = clients

    def _arguments(self, call: Call) -> dict[str, object]:
        """The method's keyword arguments: the client's body, model rewritten."""
        return call.target_body()

    async def _call(self, call: Call, *, stream: bool) -> Any:
        arguments = {**self._arguments(call), "stream": stream}
        method = getattr(self._clients.get(call.endpoint), self.METHOD)
        try:
            return await method(**arguments)
        except Exception as exc:
            raise map_anyllm_error(call.provider, exc) from exc

    async def complete(self, call: Call) -> Reply:
        return Reply(_dump(await self._call(call, stream=False)))

    async def open_stream(self, call: Call) -> _SdkStream:
        events = await self._call(call, stream=True)
        return self._stream(call, events)

    def _stream(self, call: Call, events: Any) -> _SdkStream:
        raise NotImplementedError


class AnyLLMChatAdapter(_TranslatingAdapter):
    """OpenAI chat completions to a provider of another wire format."""

    METHOD = "acompletion"

    def _stream(self, call: Call, events: Any) -> _SdkStream:
        options = call.body.get("stream_options")
        asked = isinstance(options, dict) and bool(options.get("include_usage"))
        render = _OpenAIChunks(asked or call.add_stream_usage)  # hidden again if not asked
        return _SdkStream(call.provider, events, render, DONE_EVENT)


class AnyLLMMessagesAdapter(_TranslatingAdapter):
    """Anthropic Messages requests to a provider of another wire format."""

    METHOD = "amessages"

    def _arguments(self, call: Call) -> dict[str, object]:
        return messages_arguments(call.target_body(), call.provider)

    def _stream(self, call: Call, events: Any) -> _SdkStream:
        return _SdkStream(call.provider, events, _anthropic_event, b"")


class AnyLLMEmbeddingsAdapter:
    """OpenAI embeddings from a provider of another wire format."""

    def __init__(self, clients: AnyLLMClients) -> None:
        self._clients = clients

    async def complete(self, call: Call) -> Reply:
        llm = self._clients.get(call.endpoint)
        arguments = {k: v for k, v in call.body.items() if k not in ("model", "input")}
        try:
            answer = await llm.aembedding(call.model, call.body["input"], **arguments)
        except Exception as exc:
            raise map_anyllm_error(call.provider, exc) from exc
        return Reply(_dump(answer))

    async def open_stream(self, call: Call) -> _SdkStream:
        raise map_anyllm_error(call.provider, NotImplementedError("embeddings do not stream"))
