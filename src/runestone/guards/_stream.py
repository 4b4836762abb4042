"""A streamed answer through its output guards, event by event, in the client's format.

Each channel of text (a message's content, one tool call's arguments) runs through the
guards as a pipeline: a detect guard holds back only what could still be the start of a
match (``TextWindow``), a webhook or moderation guard holds a segment until its service
has answered. Text held at a channel's end goes out before the event that ends it; the
events that repeat a channel's whole text (Responses' ``done`` events, its completed
response) carry what was sent. A block ends the stream with the protocol's in-band
error; nothing held reaches the client.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Hashable
from typing import Any

import orjson

from runestone.errors import GatewayError
from runestone.guards._run import GuardRun
from runestone.guards._stages import Blocked, Detect, Pipeline, Segment
from runestone.streams import StreamSummary
from runestone.streams.sse import encode, event_data, loads_object, split_events


class GuardedStream:
    """The output guards of one streamed answer: ``relay`` filters its events."""

    def __init__(
        self,
        run: GuardRun,
        summary: Callable[[], StreamSummary],
        error_event: Callable[[GatewayError], bytes],
        on_block: Callable[[GatewayError], None],
    ) -> None:
        self._run = run
        self._summary = summary
        self._error_event = error_event
        self._on_block = on_block
        self._channels: dict[Hashable, Pipeline] = {}
        #: Per channel: how its text is written back into a synthesized event, and what was
        #: sent of it (Responses repeats a channel's whole text in its done events).
        self._shapes: dict[Hashable, tuple[str, dict[str, Any]]] = {}
        self._sent: dict[Hashable, list[str]] = {}
        self._found: dict[str, list[str]] = {}
        #: Responses' next sequence number (from the first event's own).
        self._sequence: int | None = None
        self.blocked: GatewayError | None = None
        self._rewrite = {
            "chat": self._chat,
            "messages": self._messages,
            "responses": self._responses,
        }[run.route]

    async def relay(self, events: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        try:
            async for piece in events:
                if self.blocked is not None:
                    continue  # read on for the usage, for a bounded time; relay nothing
                try:
                    out = await self._piece(piece)
                except Blocked as block:
                    self.blocked = block.error
                    self._on_block(block.error)
                    yield block.before + self._numbered(self._error_event(block.error))
                    continue
                if out:
                    yield out
        finally:
            await events.aclose()
            self._decisions()

    async def _piece(self, piece: bytes) -> bytes:
        events = split_events(piece)
        out = []
        used = 0
        for event in events:
            used += len(event)
            data = event_data(event)
            if data is None:
                out.append(event)  # a comment
                continue
            try:
                payload = loads_object(data)
                if payload is None:  # [DONE]
                    out += await self._flush_all()
                    out.append(event)
                    continue
                out += await self._rewrite(payload, event)
            except Blocked as block:
                block.before = b"".join(out)
                raise
        if used < len(piece):
            out.append(piece[used:])
        return b"".join(out)

    def _channel(self, key: Hashable) -> Pipeline:
        pipeline = self._channels.get(key)
        if pipeline is None:
            stages: list[Detect | Segment] = [
                Detect(self._run, g, self._found) if g.detectors else Segment(self._run, g)
                for g in self._run.outputs
            ]
            pipeline = self._channels[key] = Pipeline(stages)
        return pipeline

    async def _push(self, key: Hashable, text: str) -> str:
        out = await self._channel(key).push(text)
        if out:
            self._sent.setdefault(key, []).append(out)
        return out

    async def _end(self, key: Hashable) -> str:
        """A channel ends: what it still holds, decided."""
        pipeline = self._channels.pop(key, None)
        if pipeline is None:
            return ""
        out = await pipeline.push("", final=True)
        if out:
            self._sent.setdefault(key, []).append(out)
        return out

    async def _whole(self, key: Hashable, text: object) -> object:
        """A channel's whole text as sent; a text never streamed is checked whole now."""
        sent = self._sent.get(key)
        if sent is not None:
            return "".join(sent)
        if not isinstance(text, str) or not text:
            return text
        out = await self._channel(key).push(text)
        return out + await self._end(key)

    async def _flush_all(self) -> list[bytes]:
        out = []
        for key in list(self._channels):
            text = await self._end(key)
            shape = self._shapes.get(key)
            if text and shape is not None:
                out.append(self._synthesized(key, shape, text))
        return out

    def _synthesized(self, key: Hashable, shape: tuple[str, dict[str, Any]], text: str) -> bytes:
        """An event that carries a channel's last text, in the shape its deltas had."""
        field, template = shape
        payload = orjson.loads(orjson.dumps(template))
        _set_path(payload, field, text)
        return self._encoded(payload, _kind_of(payload))

    def _numbered(self, event: bytes) -> bytes:
        """An event of the protocol's own making, numbered in sequence with those sent."""
        payload = loads_object(event_data(event) or b"")
        if payload is None or "sequence_number" not in payload:
            return event
        return self._encoded(payload, _kind_of(payload))

    def _encoded(self, payload: dict[str, Any], kind: str | None) -> bytes:
        number = payload.get("sequence_number")
        if isinstance(number, int):  # Responses: numbered as sent
            if self._sequence is None:
                self._sequence = number
            payload["sequence_number"] = self._sequence
            self._sequence += 1
        return encode(orjson.dumps(payload), kind)

    # Chat completions: ``choices[].delta.content`` and ``.tool_calls[].function.arguments``.
    async def _chat(self, payload: dict[str, Any], event: bytes) -> list[bytes]:
        choices = payload.get("choices")
        if not isinstance(choices, list):
            return [*await self._flush_all(), event]  # an error: held text goes out first
        touched = False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            content = delta.get("content")
            if isinstance(content, str) and content:
                key: Hashable = ("c", index)
                if key not in self._shapes:
                    self._shapes[key] = _chat_shape(payload, index, None)
                delta["content"] = out = await self._push(key, content)
                touched = touched or out != content
            for call in delta.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    continue
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments:
                    key = ("t", index, call.get("index", 0))
                    if key not in self._shapes:
                        self._shapes[key] = _chat_shape(payload, index, call.get("index", 0))
                    function["arguments"] = out = await self._push(key, arguments)
                    touched = touched or out != arguments
            if choice.get("finish_reason") is not None:
                touched = await self._chat_end(index, delta) or touched
        return [encode(orjson.dumps(payload))] if touched else [event]

    async def _chat_end(self, index: object, delta: dict[str, Any]) -> bool:
        """A choice finished: what its channels hold goes out with its last chunk."""
        added = False
        for key in [k for k in self._channels if isinstance(k, tuple) and k[1] == index]:
            text = await self._end(key)
            if not text:
                continue
            added = True
            if key[0] == "c":
                delta["content"] = (delta.get("content") or "") + text
            else:
                calls = delta.setdefault("tool_calls", [])
                calls.append({"index": key[2], "function": {"arguments": text}})
        return added

    # Anthropic Messages: ``text_delta`` and ``input_json_delta`` by content block.
    async def _messages(self, payload: dict[str, Any], event: bytes) -> list[bytes]:
        kind = payload.get("type")
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                return [event]
            field = _MESSAGES_FIELDS.get(str(delta.get("type")))
            text = delta.get(field) if field is not None else None
            if field is None or not isinstance(text, str) or not text:
                return [event]
            key = payload.get("index", 0)
            if key not in self._shapes:
                template = {**payload, "delta": {"type": delta["type"]}}
                self._shapes[key] = (f"delta.{field}", template)
            delta[field] = out = await self._push(key, text)
            if out == text:
                return [event]  # as it came: not written again
            return [encode(orjson.dumps(payload), "content_block_delta")]
        if kind == "content_block_stop":
            key = payload.get("index", 0)
            text = await self._end(key)
            shape = self._shapes.get(key)
            before = [self._synthesized(key, shape, text)] if text and shape else []
            return [*before, event]
        if kind in ("message_delta", "message_stop", "error"):
            return [*await self._flush_all(), event]
        return [event]

    # Responses: text and arguments deltas by item; done events and the final response
    # repeat the whole text, and carry what was sent.
    async def _responses(self, payload: dict[str, Any], event: bytes) -> list[bytes]:
        kind = payload.get("type")
        before: list[bytes] = []
        if kind in _RESPONSES_DELTAS:
            key = _responses_key(payload, kind)
            text = payload.get("delta")
            if isinstance(text, str) and text:
                if key not in self._shapes:
                    self._shapes[key] = ("delta", {**payload, "delta": ""})
                payload["delta"] = out = await self._push(key, text)
                number = payload.get("sequence_number")
                if out == text and isinstance(number, int) and number == self._sequence:
                    self._sequence = number + 1
                    return [event]  # as it came, in its place: not written again
        elif kind in _RESPONSES_DONE:
            key = _responses_key(payload, kind)
            field = _RESPONSES_DONE[kind]
            text = await self._end(key)
            shape = self._shapes.get(key)
            if text and shape is not None:
                before.append(self._synthesized(key, shape, text))
            payload[field] = await self._whole(key, payload.get(field))
        elif kind == "response.content_part.done":
            part = payload.get("part")
            if isinstance(part, dict) and part.get("type") == "output_text":
                key = (payload.get("item_id"), payload.get("content_index", 0))
                part["text"] = await self._whole(key, part.get("text"))
        elif kind == "response.output_item.done":
            await self._item(payload.get("item"))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            before += await self._flush_all()
            response = payload.get("response")
            if isinstance(response, dict):
                for item in response.get("output") or ():
                    await self._item(item)
                if response.get("output_text"):
                    response.pop("output_text")  # the SDK's convenience: rebuilt by clients
                summary = self._summary()  # the stream's now (a rescue may have moved it)
                if summary.final is not None:
                    summary.final = response  # what the store keeps is what was sent
        return [*before, self._encoded(payload, _kind_of(payload))]

    async def _item(self, item: object) -> None:
        if not isinstance(item, dict):
            return
        item_id = item.get("id")
        if item.get("type") == "message":
            for index, part in enumerate(item.get("content") or ()):
                if isinstance(part, dict) and part.get("type") == "output_text":
                    part["text"] = await self._whole((item_id, index), part.get("text"))
        elif item.get("type") == "function_call":
            item["arguments"] = await self._whole((item_id, "arguments"), item.get("arguments"))

    def _decisions(self) -> None:
        """Each output guard's decision on the stream, once, at its end."""
        run = self._run
        for guard in run.outputs:
            if not guard.detectors:
                continue  # a webhook's verdicts are counted as they come
            names = self._found.get(guard.name)
            if not names:
                run.decided(guard, "output", "pass")
            elif guard.spec.action != "block":
                run.decided(guard, "output", guard.spec.action, names)


_MESSAGES_FIELDS = {"text_delta": "text", "input_json_delta": "partial_json"}
_RESPONSES_DELTAS = frozenset(
    {"response.output_text.delta", "response.function_call_arguments.delta"}
)
_RESPONSES_DONE = {
    "response.output_text.done": "text",
    "response.function_call_arguments.done": "arguments",
}


def _responses_key(payload: dict[str, Any], kind: str) -> Hashable:
    if "function_call" in kind:
        return (payload.get("item_id"), "arguments")
    return (payload.get("item_id"), payload.get("content_index", 0))


def _kind_of(payload: dict[str, Any]) -> str | None:
    kind = payload.get("type")
    return kind if isinstance(kind, str) else None


def _chat_shape(payload: dict[str, Any], index: object, call: object) -> tuple[str, dict[str, Any]]:
    """A chunk of one choice that carries only text: its content, or one call's arguments."""
    template: dict[str, Any] = {
        k: payload[k] for k in ("id", "object", "created", "model") if k in payload
    }
    if call is None:
        delta: dict[str, Any] = {"content": ""}
        field = "choices.0.delta.content"
    else:
        delta = {"tool_calls": [{"index": call, "function": {"arguments": ""}}]}
        field = "choices.0.delta.tool_calls.0.function.arguments"
    template["choices"] = [{"index": index, "delta": delta, "finish_reason": None}]
    return field, template


def _set_path(payload: dict[str, Any], path: str, value: str) -> None:
    *parents, last = path.split(".")
    holder: Any = payload
    for name in parents:
        holder = holder[int(name)] if isinstance(holder, list) else holder[name]
    holder[last] = value
