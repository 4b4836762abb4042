"""OpenAI chat completions to an Anthropic Messages target, and its answer back.

Pure functions over decoded JSON: ``messages_request`` turns a chat request into a
Messages request, ``chat_completion`` turns a Message into a chat completion, and
``ChatChunks`` (a small state machine) turns Messages stream events into chat chunks.
The rules are any-llm's (its Anthropic provider), which the differential tests hold us
to; what is deliberately different is said where it is done.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from runestone.errors import error_for
from runestone.streams.sse import DONE_EVENT, encode
from runestone.translate import _checks as checks

DEFAULT_MAX_TOKENS = 8192  # Anthropic requires max_tokens; any-llm's default
REFUSAL_TEXT = "Response blocked by Anthropic content filtering."
FINISH_REASONS = {
    "end_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
THINKING_BUDGETS = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
    "max": 32768,
}
MIN_THINKING_BUDGET = 1024
#: What a request for ``response_format: json_object`` tells an Anthropic model.
JSON_OBJECT = "Answer with one JSON object and nothing else: no prose, no code fences."

# Fields passed on as they are, and fields with no Anthropic equivalent that change
# nothing in the answer (dropped, as any-llm drops them).
_SAME = ("temperature", "top_p", "top_k", "stream", "metadata", "service_tier")
_IGNORED = frozenset(
    {"stream_options", "n", "logprobs", "top_logprobs", "store", "prompt_cache_key", "seed"}
)


def messages_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The Anthropic Messages request for a chat completions request."""
    out: dict[str, Any] = {"model": model}
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    out["max_tokens"] = max_tokens if isinstance(max_tokens, int) else DEFAULT_MAX_TOKENS
    for name in _SAME:
        if name in body and body[name] is not None:
            out[name] = body[name]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    user = body.get("user")
    if isinstance(user, str) and "metadata" not in out:
        out["metadata"] = {"user_id": user}
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(tool) for tool in tools if tool.get("type") == "function"]
    if body.get("tool_choice") is not None or body.get("parallel_tool_calls") is not None:
        out["tool_choice"] = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in ("none", "auto"):
        budget = min(
            THINKING_BUDGETS.get(str(effort), 8192), out["max_tokens"] - MIN_THINKING_BUDGET
        )
        if budget < MIN_THINKING_BUDGET:
            raise error_for(
                "unsupported_parameter",
                f"reasoning_effort needs max_tokens of at least {2 * MIN_THINKING_BUDGET} on "
                "an Anthropic target (a thinking budget plus room for the answer)",
                param="reasoning_effort",
            )
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    system, messages = _messages(body.get("messages") or [])
    if isinstance(response_format, dict) and response_format.get("type") == "json_object":
        # The Messages API has no JSON mode: the model is told, as OpenAI's requires.
        system = f"{system}\n\n{JSON_OBJECT}" if system else JSON_OBJECT
    if system:
        out["system"] = system
    out["messages"] = messages
    return out


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    schema = {
        "type": "object",
        "properties": {},
        "required": [],
        **(function.get("parameters") or {}),
    }
    return {
        "name": function["name"],
        "description": function.get("description", ""),
        "input_schema": schema,
    }


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any]:
    disable_parallel = parallel is False
    choice = choice or "auto"
    if choice == "none":
        return {"type": "none"}  # Anthropic's "none" takes no other field
    if choice == "required":
        choice = "any"
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind in ("function", "custom"):
            name = (choice.get(kind) or {}).get("name")
            return {"type": "tool", "name": name, "disable_parallel_tool_use": disable_parallel}
        raise error_for(
            "invalid_request", f"unsupported tool_choice {choice!r}", param="tool_choice"
        )
    return {"type": choice, "disable_parallel_tool_use": disable_parallel}


def _messages(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """System text apart; tool results as user turns, consecutive ones merged."""
    system: str | None = None
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = _text_of(content)
            system = text if system is None else system + "\n" + text
            continue
        if role == "assistant" and message.get("tool_calls"):
            blocks: list[dict[str, Any]] = []
            if isinstance(content, str) and content:
                blocks.append({"type": "text", "text": content})
            for call in message["tool_calls"]:
                function = call["function"]
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": function["name"],
                        "input": _arguments(function.get("arguments")),
                    }
                )
            out.append({"role": "assistant", "content": blocks})
            continue
        if role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": content,
            }
            last = out[-1] if out else None
            if (
                last is not None
                and last["role"] == "user"
                and isinstance(last["content"], list)
                and last["content"]
                and last["content"][0].get("type") == "tool_result"
            ):
                last["content"].append(result)
            else:
                out.append({"role": "user", "content": [result]})
            continue
        if isinstance(content, list):
            content = [_part(part) for part in content]
        elif content is None:
            content = ""
        out.append({"role": role, "content": content})
    return system, _alternating(out)


def _alternating(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The turns as the Messages API takes them: the user's first, then one turn per
    role in alternation (consecutive ones of a role merged, their blocks in order)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if out and out[-1]["role"] == message["role"]:
            out[-1]["content"] = _blocks(out[-1]["content"]) + _blocks(message["content"])
        else:
            out.append(message)
    if out and out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": "(The conversation so far follows.)"})
    return out


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return content
    return [{"type": "text", "text": content}] if content else []


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _arguments(arguments: Any) -> Any:
    if not arguments:
        return {}
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise error_for(
            "invalid_request",
            "an assistant message's tool call has arguments that are not JSON",
            param="messages",
        ) from None


def _part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "image_url":
        url = (part.get("image_url") or {}).get("url", "")
        return {"type": "image", "source": _source(url)}
    if kind == "file":
        data = (part.get("file") or {}).get("file_data", "")
        return {"type": "document", "source": _source(data)}
    return part


def _source(url: str) -> dict[str, Any]:
    if url[:5] == "data:":
        header, _, data = url.partition("base64,")
        media_type = header[5:].partition(";")[0]
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def usage(raw: dict[str, Any]) -> dict[str, Any]:
    """Anthropic usage as OpenAI's: cache reads and writes count inside prompt_tokens."""
    read = raw.get("cache_read_input_tokens")
    write = raw.get("cache_creation_input_tokens")
    prompt = int(raw.get("input_tokens") or 0) + int(read or 0) + int(write or 0)
    completion = int(raw.get("output_tokens") or 0)
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if read is not None or write is not None:
        out["prompt_tokens_details"] = {"cached_tokens": read, "cache_write_tokens": write}
    return out


def chat_completion(message: dict[str, Any]) -> dict[str, Any]:
    """The chat completion for an Anthropic Message."""
    finish = FINISH_REASONS.get(message.get("stop_reason") or "end_turn", "stop")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    reasoning: str | None = None
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(checks.text(block.get("text", ""), "text"))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": checks.name(block.get("id"), "tool_use id"),
                    "type": "function",
                    "function": {
                        "name": checks.name(block.get("name"), "tool_use name"),
                        "arguments": orjson.dumps(block.get("input", {})).decode(),
                    },
                }
            )
        elif kind == "thinking":
            reasoning = (reasoning or "") + checks.text(block.get("thinking", ""), "thinking")
    answer: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if finish == "content_filter":
        answer["refusal"] = REFUSAL_TEXT
    if reasoning:
        answer["reasoning"] = reasoning  # a string, as OpenRouter and any-llm send it
    if calls:
        answer["tool_calls"] = calls
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": 0,
        "model": message.get("model"),
        "choices": [{"index": 0, "message": answer, "finish_reason": finish}],
        "usage": usage(message.get("usage") or {}),
    }


class ChatChunks:
    """Anthropic Messages stream events in, chat completion chunks (SSE bytes) out.

    One id and creation time for the whole stream, the role in the first chunk, tool
    calls numbered 0, 1, ... in the order they start, a usage chunk only when the client
    asked for one, and ``[DONE]`` after ``message_stop``. What the upstream sends is
    checked first (``_checks``): a field of the wrong type, or a block's delta while
    another block is open, raise.
    """

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = f"chatcmpl-{os.urandom(12).hex()}"
        self.created = int(time.time())
        self._usage: dict[str, Any] = {}
        self._tools: dict[int, int] = {}  # content block index -> tool call index
        self._open: int | None = None  # the content block started and not yet stopped
        self.done = False
        self._head = (
            b'{"id":"'
            + self.id.encode()
            + b'","object":"chat.completion.chunk","created":'
            + str(self.created).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":'
        )

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return encode(self._head + orjson.dumps([choice]) + b"}")

    def _in_open_block(self, data: dict[str, Any]) -> int:
        """The event's block, which must be the one open (Anthropic never interleaves)."""
        index = checks.index(data.get("index", 0), "content block index")
        if index != self._open:
            raise ValueError(f"an event for block {index} while block {self._open} is open")
        return index

    def event(self, kind: str, data: dict[str, Any]) -> bytes:
        """The chunks for one event (often none)."""
        if kind == "content_block_delta":
            open_block = self._in_open_block(data)
            delta = data.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return self._chunk({"content": checks.text(delta.get("text", ""), "text")})
            if dtype == "input_json_delta":
                if open_block not in self._tools:
                    raise ValueError(f"input_json_delta for block {open_block}, not a tool_use")
                partial = checks.text(delta.get("partial_json", ""), "partial_json")
                call = {"index": self._tools[open_block], "function": {"arguments": partial}}
                return self._chunk({"tool_calls": [call]})
            if dtype == "thinking_delta":
                return self._chunk(
                    {"reasoning": checks.text(delta.get("thinking", ""), "thinking")}
                )
            return b""
        if kind == "content_block_start":
            index = checks.index(data.get("index", 0), "content block index")
            if self._open is not None:
                raise ValueError(f"block {index} started while block {self._open} is open")
            self._open = index
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                call_index = self._tools.setdefault(index, len(self._tools))
                call = {
                    "index": call_index,
                    "id": checks.name(block.get("id"), "tool_use id"),
                    "type": "function",
                    "function": {
                        "name": checks.name(block.get("name"), "tool_use name"),
                        "arguments": "",
                    },
                }
                return self._chunk({"tool_calls": [call]})
            return b""
        if kind == "content_block_stop":
            self._in_open_block(data)
            self._open = None
            return b""
        if kind == "message_start":
            message = data.get("message") or {}
            self._usage.update(message.get("usage") or {})
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "message_delta":
            self._usage.update(
                {k: v for k, v in (data.get("usage") or {}).items() if v is not None}
            )
            reason = (data.get("delta") or {}).get("stop_reason")
            if reason is None:
                return b""
            finish = FINISH_REASONS.get(reason, "stop")
            said: dict[str, Any] = {"refusal": REFUSAL_TEXT} if finish == "content_filter" else {}
            return self._chunk(said, finish)
        if kind == "message_stop":
            self.done = True
            tail = b""
            if self.include_usage:
                tail = encode(self._head + b'[],"usage":' + orjson.dumps(usage(self._usage)) + b"}")
            return tail + DONE_EVENT
        return b""  # ping, content_block_stop
