"""Completing a stream that broke mid-answer on another target, where that is safe.

What the client already has is read back from the bytes relayed to it (a transcript);
the continuation's events are rewritten into the same stream: the same id, no second
role delta or message start, text blocks continued where they were open.

Two ways to continue, by what the next target can do:

- **prefill**: the original request plus the partial answer as a final assistant
  message; the target writes on from there, and its text is relayed as it comes;
- **splice by prefix**: the original request again; its answer is held back until its
  text is known to begin with exactly what the client has, and only the rest is
  relayed. A different beginning ends the stream with the original error: the client
  never sees text that contradicts or repeats what it was sent.

Only plain text can be continued: a stream that had started a tool call is not.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from runestone.streams.sse import encode, event_data, loads_object, split_events


class Diverged(Exception):
    """The continuation's text does not begin with what the client already has."""


def _event(kind: str | None, payload: Mapping[str, object]) -> bytes:
    return encode(orjson.dumps(payload), kind)


class Continuation:
    """What the client has, and how to rewrite a continuation's events for it."""

    def __init__(self) -> None:
        self.text = ""
        self.tool_started = False
        self.usage: dict[str, object] | None = None
        self.prefill = False
        self._matched = 0  # characters of ``text`` a spliced answer has matched so far
        #: A comment line the gateway puts before the end marker, saying what it did.
        self.note = b""

    @property
    def possible(self) -> bool:
        return bool(self.text) and not self.tool_started

    @property
    def committed(self) -> bool:
        """Whether the continuation may now reach the client: a prefill at once, a
        splice once its text has matched all of the client's."""
        return self.prefill or self._matched >= len(self.text)

    def body_for(self, body: dict[str, object], prefill: bool) -> dict[str, object]:
        """The request to send the next target."""
        self.prefill = prefill
        if not prefill:
            return body
        messages = body.get("messages")
        assert isinstance(messages, list)
        # Anthropic refuses a prefill that ends in white space; the rest comes back.
        partial = self.text.rstrip()
        self._matched = len(partial)
        return {**body, "messages": [*messages, {"role": "assistant", "content": partial}]}

    def _new_text(self, piece: str) -> str:
        """Of a continuation's text piece, what the client does not have yet."""
        if self.prefill:
            if self._matched < len(self.text):  # the white space held back from prefill
                rest = self.text[self._matched :]
                common = 0
                while common < min(len(rest), len(piece)) and rest[common] == piece[common]:
                    common += 1
                self._matched += common
                piece = piece[common:]
            return piece
        have = self.text
        if self._matched >= len(have):
            return piece
        wanted = have[self._matched : self._matched + len(piece)]
        if not piece.startswith(wanted):
            raise Diverged
        self._matched += len(wanted)
        return piece[len(wanted) :]

    def rewrite(self, events: bytes) -> bytes:
        raise NotImplementedError

    def _ending(self) -> bytes:
        """At the continuation's end: all of the client's text must have been matched."""
        if self._matched < len(self.text) and not self.prefill:
            raise Diverged  # it ended with less than the client already has
        return self.note


class ChatContinuation(Continuation):
    """Chat-completions chunks: ``choices[0].delta.content`` is the text."""

    def __init__(self, sent: bytes) -> None:
        super().__init__()
        self.id: object = None
        pieces = []
        for event in split_events(sent):
            payload = loads_object(event_data(event) or b"")
            if payload is None:
                continue
            self.id = self.id or payload.get("id")
            if isinstance(payload.get("usage"), dict):
                self.usage = payload["usage"]  # type: ignore[assignment]
            for choice in payload.get("choices") or []:  # type: ignore[attr-defined]
                delta = choice.get("delta") or {}
                if delta.get("tool_calls") or delta.get("function_call"):
                    self.tool_started = True
                if isinstance(delta.get("content"), str):
                    pieces.append(delta["content"])
        self.text = "".join(pieces)

    def rewrite(self, events: bytes) -> bytes:
        out = []
        for event in split_events(events):
            data = event_data(event)
            if data is None:
                continue  # comments: the gateway's own heartbeats say enough
            if data.strip() == b"[DONE]":
                out.append(self._ending() + event)
                continue
            payload = loads_object(data)
            if payload is None:
                continue
            if self.id is not None:
                payload["id"] = self.id
            kept = []
            for choice in payload.get("choices") or []:  # type: ignore[attr-defined]
                delta = dict(choice.get("delta") or {})
                delta.pop("role", None)
                content = delta.get("content")
                if isinstance(content, str):
                    delta["content"] = self._new_text(content)
                    if not delta["content"]:
                        del delta["content"]
                elif (delta.get("tool_calls") or delta.get("function_call")) and (
                    self._matched < len(self.text)
                ):
                    raise Diverged  # a tool call where the client has text
                if delta or choice.get("finish_reason"):
                    kept.append({**choice, "delta": delta})
            if not kept and not isinstance(payload.get("usage"), dict):
                continue
            payload["choices"] = kept
            out.append(_event(None, payload))
        return b"".join(out)


class MessagesContinuation(Continuation):
    """Anthropic Messages events: text deltas of the open text block are the text."""

    def __init__(self, sent: bytes) -> None:
        super().__init__()
        pieces = []
        self.next_index = 0  # the index the client's next new block gets
        self.open_text: int | None = None  # the text block still open when it broke
        for event in split_events(sent):
            payload = loads_object(event_data(event) or b"")
            if payload is None:
                continue
            kind = payload.get("type")
            if kind == "content_block_start":
                block = payload.get("content_block") or {}
                index = payload.get("index")
                if isinstance(index, int):
                    self.next_index = max(self.next_index, index + 1)
                if isinstance(block, dict) and block.get("type") != "text":
                    self.tool_started = True
                elif isinstance(index, int):
                    self.open_text = index
            elif kind == "content_block_stop":
                if payload.get("index") == self.open_text:
                    self.open_text = None
            elif kind == "content_block_delta":
                delta = payload.get("delta") or {}
                if isinstance(delta, dict) and isinstance(delta.get("text"), str):
                    pieces.append(delta["text"])
            elif kind == "message_start":
                message = payload.get("message")
                if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                    self.usage = dict(message["usage"])
        self.text = "".join(pieces)
        self._index_map: dict[int, int] = {}

    def _index(self, theirs: object) -> int:
        if not isinstance(theirs, int):
            return self.next_index
        found = self._index_map.get(theirs)
        if found is None:
            if not self._index_map and self.open_text is not None:
                found = self.open_text  # their first text block continues the open one
            else:
                found = self.next_index
                self.next_index += 1
            self._index_map[theirs] = found
        return found

    def rewrite(self, events: bytes) -> bytes:
        out = []
        for event in split_events(events):
            payload = loads_object(event_data(event) or b"")
            if payload is None:
                continue
            kind = payload.get("type")
            if kind in ("message_start", "ping"):
                continue
            if kind == "content_block_start":
                index = self._index(payload.get("index"))
                block = payload.get("content_block") or {}
                if isinstance(block, dict) and block.get("type") != "text":
                    if self._matched < len(self.text):
                        raise Diverged
                elif index == self.open_text:
                    continue  # the client's block is open already
                payload["index"] = index
            elif kind in ("content_block_delta", "content_block_stop"):
                payload["index"] = self._index(payload.get("index"))
                delta = payload.get("delta")
                if isinstance(delta, dict) and isinstance(delta.get("text"), str):
                    text = self._new_text(delta["text"])
                    if not text:
                        continue
                    payload["delta"] = {**delta, "text": text}
            elif kind == "message_stop":
                out.append(self._ending())
            elif kind == "message_delta" and self.usage is not None:
                usage = payload.get("usage")
                if isinstance(usage, dict):
                    # What the client was charged for covers both answers' input.
                    payload["usage"] = {**self.usage, **usage}
            out.append(_event(str(kind), payload))
        return b"".join(out)


def continuation_for(operation: str, sent: bytes) -> Continuation | None:
    if operation == "chat":
        return ChatContinuation(sent)
    if operation == "messages":
        return MessagesContinuation(sent)
    return None
