"""A chat-completions answer as an OpenAI Responses answer (the bridge's way back).

``response_object`` turns a whole chat completion into a ``response`` object;
``ResponsesEvents`` is the state machine that turns chat-completion chunks into the
Responses event sequence clients consume, a ``sequence_number`` on every event:
``response.created``, ``response.in_progress``, then per output item
``response.output_item.added``, for text ``response.content_part.added``,
``response.output_text.delta`` ... ``.done``, ``response.content_part.done``, for a
function call ``response.function_call_arguments.delta`` ... ``.done``, then
``response.output_item.done``; and at the end ``response.completed`` (or
``response.incomplete`` when the answer was cut by ``max_output_tokens``) with usage.
The call of a tool of another kind (``tools``) is one item, sent whole once its
arguments are (``output_item.added``, for a custom tool its
``response.custom_tool_call_input.delta`` and ``.done``, ``output_item.done``): its
item's fields are worked out from the arguments.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson

from runestone.streams.sse import encode
from runestone.translate.responses_chat.items import call_item, new_id
from runestone.translate.responses_chat.tools import Bridged, ToolMap


def _usage(usage: object) -> dict[str, object] | None:
    if not isinstance(usage, dict):
        return None
    given = usage.get("prompt_tokens", 0) or 0
    taken = usage.get("completion_tokens", 0) or 0
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    reasoning_details = usage.get("completion_tokens_details")
    reasoning = (
        reasoning_details.get("reasoning_tokens", 0) if isinstance(reasoning_details, dict) else 0
    )
    return {
        "input_tokens": given,
        "input_tokens_details": {"cached_tokens": cached or 0},
        "output_tokens": taken,
        "output_tokens_details": {"reasoning_tokens": reasoning or 0},
        "total_tokens": given + taken,
    }


def shell(request: Mapping[str, object], response_id: str, created: int) -> dict[str, object]:
    """The fields of a response object that echo the request."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "model": request.get("model"),
        "output": [],
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "temperature": request.get("temperature"),
        "top_p": request.get("top_p"),
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools", []),
        "text": request.get("text", {"format": {"type": "text"}}),
        "reasoning": request.get("reasoning"),
        "store": request.get("store") is not False,
        "metadata": request.get("metadata") or {},
        "usage": None,
        "error": None,
        "incomplete_details": None,
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, object]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _finish(response: dict[str, object], finish_reason: object) -> None:
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "content_filter"}
    else:
        response["status"] = "completed"


def response_object(
    request: Mapping[str, object],
    completion: Mapping[str, object],
    tools: ToolMap | None = None,
) -> dict:  # type: ignore[type-arg]
    """A whole chat completion as a Responses ``response`` object."""
    if tools is None:
        tools = ToolMap(request.get("tools"), "")
    created = completion.get("created")
    response = shell(
        request, new_id("resp"), created if isinstance(created, int) else int(time.time())
    )
    output: list[dict[str, object]] = []
    finish: object = None
    for choice in completion.get("choices") or []:  # type: ignore[attr-defined]
        message = choice.get("message") or {}
        finish = choice.get("finish_reason")
        text = message.get("content")
        if isinstance(text, str) and text:
            output.append(_message_item(new_id("msg"), text))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            arguments = function.get("arguments")
            bridged = tools.bridged(function.get("name"))
            output.append(
                call_item(bridged, call.get("id"), arguments if isinstance(arguments, str) else "")
            )
        break  # one choice: the Responses API has no n
    response["output"] = output
    response["usage"] = _usage(completion.get("usage"))
    _finish(response, finish)
    return response


_DELTA_START = b'{"type":"response.output_text.delta","sequence_number":'


class ResponsesEvents:
    """Chat-completion chunks in, Responses events out (bytes of SSE)."""

    def __init__(self, request: Mapping[str, object], tools: ToolMap | None = None) -> None:
        self.request = request
        self.tools = tools if tools is not None else ToolMap(request.get("tools"), "")
        self.response = shell(request, new_id("resp"), int(time.time()))
        self.sequence = 0
        self.started = False
        self.finished = False
        self._text: dict[str, object] | None = None  # the open message item
        self._calls: dict[int, dict[str, object]] = {}  # open function calls by chat index
        self._held: dict[int, dict[str, object]] = {}  # calls of other tools, sent whole
        self._output: list[dict[str, object]] = []
        self._finish_reason: object = None
        self._usage: object = None
        self._pieces: list[str] = []  # the open message's text so far
        self._arguments: dict[int, list[str]] = {}  # each open call's arguments so far
        self._delta_between = b""

    @property
    def saw_finish(self) -> bool:
        return self._finish_reason is not None

    def _event(self, kind: str, **fields: object) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return encode(orjson.dumps(payload), kind)

    def _start(self) -> list[bytes]:
        self.started = True
        return [
            self._event("response.created", response=self.response),
            self._event("response.in_progress", response=self.response),
        ]

    def chunk(self, payload: Mapping[str, object]) -> bytes:
        """One chat-completion chunk's worth of Responses events."""
        out = [] if self.started else self._start()
        if isinstance(payload.get("usage"), dict):
            self._usage = payload["usage"]
        for choice in payload.get("choices") or []:  # type: ignore[attr-defined]
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.extend(self._text_delta(text))
            for call in delta.get("tool_calls") or []:
                out.extend(self._call_delta(call))
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return b"".join(out)

    def _text_delta(self, text: str) -> list[bytes]:
        out = []
        if self._text is None:
            self._text = _message_item(new_id("msg"), "", "in_progress")
            self._text["content"] = []
            index = len(self._output)
            self._output.append(self._text)
            out.append(
                self._event("response.output_item.added", output_index=index, item=self._text)
            )
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=self._text["id"],
                    output_index=index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": []},
                )
            )
            self._text["_index"] = index
            self._pieces = []
            # Text deltas are most of a stream's events: each is written from these bytes,
            # made once per item, around its sequence number and text (what _event writes).
            fields = orjson.dumps({"item_id": self._text["id"], "output_index": index})
            self._delta_between = b"," + fields[1:-1] + b',"content_index":0,"delta":'
        self._pieces.append(text)
        data = (
            _DELTA_START
            + str(self.sequence).encode()
            + self._delta_between
            + orjson.dumps(text)
            + b',"logprobs":[]}'
        )
        out.append(encode(data, "response.output_text.delta"))
        self.sequence += 1
        return out

    def _close_text(self) -> list[bytes]:
        item, self._text = self._text, None
        if item is None:
            return []
        index, text = item.pop("_index"), "".join(self._pieces)
        self._pieces = []
        part = {"type": "output_text", "text": text, "annotations": []}
        item.update(status="completed", content=[part])
        common = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return [
            self._event("response.output_text.done", **common, text=text, logprobs=[]),
            self._event("response.content_part.done", **common, part=part),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _call_delta(self, call: Mapping[str, object]) -> list[bytes]:
        raw_index = call.get("index", 0)
        index = raw_index if isinstance(raw_index, int) else 0
        function = call.get("function") or {}
        assert isinstance(function, dict)
        out = []
        arguments = function.get("arguments")
        held = self._held.get(index)
        found = self._calls.get(index) if held is None else None
        if held is None and found is None:
            out.extend(self._close_text())
            bridged = self.tools.bridged(function.get("name"))
            if bridged.kind != "function":  # sent whole once its arguments are
                self._held[index] = {"bridged": bridged, "call_id": call.get("id")}
                self._arguments[index] = [arguments] if isinstance(arguments, str) else []
                return out
            found = call_item(bridged, call.get("id"), "", "in_progress")
            found["_index"] = len(self._output)
            self._output.append(found)
            self._calls[index] = found
            out.append(
                self._event("response.output_item.added", output_index=found["_index"], item=found)
            )
        if isinstance(arguments, str) and arguments:
            self._arguments.setdefault(index, []).append(arguments)  # joined once, at the end
            if found is not None:
                out.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=found["id"],
                        output_index=found["_index"],
                        delta=arguments,
                    )
                )
        return out

    def _close_held(self, at: int, held: Mapping[str, object]) -> list[bytes]:
        bridged = held["bridged"]
        assert isinstance(bridged, Bridged)
        item = call_item(bridged, held["call_id"], "".join(self._arguments.get(at, ())))
        index = len(self._output)
        self._output.append(item)
        out = [self._event("response.output_item.added", output_index=index, item=item)]
        if item["type"] == "custom_tool_call":
            common = {"item_id": item["id"], "output_index": index}
            out.append(
                self._event("response.custom_tool_call_input.delta", **common, delta=item["input"])
            )
            out.append(
                self._event("response.custom_tool_call_input.done", **common, input=item["input"])
            )
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        return out

    def end(self) -> bytes:
        """The chat stream completed: close every item and complete the response."""
        out = [] if self.started else self._start()
        out.extend(self._close_text())
        for at, found in self._calls.items():
            index = found.pop("_index")
            found["status"] = "completed"
            found["arguments"] = "".join(self._arguments.get(at, ()))
            common = {"item_id": found["id"], "output_index": index}
            out.append(
                self._event(
                    "response.function_call_arguments.done", **common, arguments=found["arguments"]
                )
            )
            out.append(self._event("response.output_item.done", output_index=index, item=found))
        for at, held in self._held.items():
            out.extend(self._close_held(at, held))
        self._held = {}
        self._calls = {}
        self.response["output"] = self._output
        self.response["usage"] = _usage(self._usage)
        _finish(self.response, self._finish_reason)
        kind = (
            "response.completed"
            if self.response["status"] == "completed"
            else ("response.incomplete")
        )
        self.finished = True
        out.append(self._event(kind, response=self.response))
        return b"".join(out)
