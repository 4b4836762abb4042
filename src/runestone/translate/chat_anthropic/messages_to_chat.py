"""Anthropic Messages to an OpenAI chat completions target, and its answer back.

Pure functions over decoded JSON: ``chat_request`` turns a Messages request (already
checked by ``messages_arguments``) into a chat request, ``message`` turns a chat
completion into a Message (and ``messages_events.MessageEvents`` its stream). The rules
are any-llm's (its Messages bridge), which the differential tests hold us to.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from runestone.errors import error_for
from runestone.translate import _checks as checks

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "function_call": "tool_use",
}
EFFORTS = ("low", "medium", "high", "xhigh", "max")


def chat_request(arguments: dict[str, Any], model: str) -> dict[str, Any]:
    """The chat request for checked Messages arguments (see ``messages_arguments``)."""
    messages: list[dict[str, Any]] = []
    system = arguments.get("system")
    if system:
        text = (
            system
            if isinstance(system, str)
            else "".join(block.get("text", "") for block in system if block.get("type") == "text")
        )
        messages.append({"role": "system", "content": text})
    for turn in arguments.get("messages") or []:
        messages.extend(_turn(turn))
    out: dict[str, Any] = {"model": model, "messages": messages}
    if "max_tokens" in arguments:  # the current name; max_tokens is deprecated at OpenAI
        out["max_completion_tokens"] = arguments["max_tokens"]
    for name in ("prompt_cache_key", "service_tier", "temperature", "top_p"):
        if arguments.get(name) is not None:
            out[name] = arguments[name]
    metadata = arguments.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user, str) and user:
        out["safety_identifier"] = user  # OpenAI's name for the end user, for its caches
    if arguments.get("stop_sequences") is not None:
        out["stop"] = arguments["stop_sequences"]
    out["stream"] = bool(arguments.get("stream"))
    if out["stream"]:
        out["stream_options"] = {"include_usage": True}  # else no usage in the stream
    output = arguments.get("output_format")
    if isinstance(output, dict):
        schema = (output.get("format") or {}).get("schema") if output.get("format") else None
        if isinstance(schema, dict):
            out["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": schema, "strict": True},
            }
    tools = arguments.get("tools")
    if tools:
        out["tools"] = [_tool(tool) for tool in tools]
    choice = arguments.get("tool_choice")
    if isinstance(choice, dict):
        out["tool_choice"] = _tool_choice(choice)
        if choice.get("disable_parallel_tool_use") is True:
            out["parallel_tool_calls"] = False
    thinking = arguments.get("thinking") or {}
    effort = output.get("effort") if isinstance(output, dict) else None
    if effort is not None and effort not in EFFORTS:
        raise error_for(
            "invalid_request",
            f"output_config effort {effort!r} is not one of {', '.join(EFFORTS)}",
            param="output_config",
        )
    if thinking.get("type") == "disabled":
        out["reasoning_effort"] = "none"
    elif effort is not None:
        out["reasoning_effort"] = effort
    elif thinking.get("type") == "enabled":
        out["reasoning_effort"] = _effort_for_budget(int(thinking.get("budget_tokens", 8192)))
    return out


def _effort_for_budget(budget: int) -> str:
    for limit, effort in ((1024, "minimal"), (2048, "low"), (8192, "medium"), (24576, "high")):
        if budget <= limit:
            return effort
    return "xhigh"


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if not {"name", "type", "input_schema"} & tool.keys():
        return tool  # a provider's own tool, as any-llm passes it on
    return {
        "type": "function",
        "function": {
            "name": tool.get("name", ""),
            "description": tool.get("description", ""),
            "parameters": tool.get("input_schema", {}),
        },
    }


def _tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice.get("type", "auto")
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    return "auto"


def _turn(turn: dict[str, Any]) -> list[dict[str, Any]]:
    role = turn.get("role", "user")
    content = turn.get("content")
    if not isinstance(content, list):
        return [{"role": role, "content": content}]
    if role == "assistant":
        return [_assistant(content)]
    if role == "user":
        return _user(content)
    return [{"role": role, "content": content}]


def _assistant(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "thinking":
            thinking.append(block.get("thinking", ""))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": _json(block.get("input", {})),
                    },
                }
            )
    text = "".join(texts)
    # Empty text beside tool calls carries nothing, and some backends reject it.
    out: dict[str, Any] = {
        "role": "assistant",
        "content": text if texts and (text or not calls) else None,
    }
    if calls:
        out["tool_calls"] = calls
    if thinking and "".join(thinking):
        out["reasoning_content"] = "".join(thinking)
    return out


def _json(value: Any) -> str:
    # json.dumps's spacing, as any-llm and most SDKs write tool arguments (a replayed turn
    # is sent as the model first wrote it, which keeps provider prompt caches warm).
    return json.dumps(value)


def _user(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool results become ``tool`` messages; their images, and the rest, a user message."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "tool_result":
            if parts:
                out.append({"role": "user", "content": parts})
                parts = []
            text, extra = _tool_result(block.get("content", ""))
            if block.get("is_error") is True:
                text = (
                    "Error" if not text else text if text.startswith("Error:") else f"Error: {text}"
                )
            out.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text}
            )
            held.extend(extra)
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_image(block))
        else:
            parts.append(block)
    if held or parts:
        out.append({"role": "user", "content": held + parts})
    return out


def _tool_result(content: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(content, list):
        return str(content), []
    texts: list[str] = []
    extra: list[dict[str, Any]] = []
    for block in content:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "image":
            extra.append(_image(block))
    return "".join(texts), extra


def _image(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        if not source.get("data"):
            raise error_for("invalid_request", "an image block's base64 source has no data")
        media = source.get("media_type", "image/png")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{source['data']}"}}
    if not source.get("url"):
        raise error_for("invalid_request", "an image block's source has no data and no url")
    return {"type": "image_url", "image_url": {"url": source["url"]}}


def usage(raw: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI usage as Anthropic's: cache reads and writes apart from ``input_tokens``."""
    raw = raw or {}
    details = raw.get("prompt_tokens_details") or {}
    cached, written = details.get("cached_tokens"), details.get("cache_write_tokens")
    prompt = int(raw.get("prompt_tokens") or 0)
    remaining = prompt - min(max(written or 0, 0), prompt)
    read = min(max(cached or 0, 0), remaining)
    out: dict[str, Any] = {
        "input_tokens": remaining - read,
        "output_tokens": int(raw.get("completion_tokens") or 0),
    }
    if cached is not None and (cached == 0 or read > 0):
        out["cache_read_input_tokens"] = read
    if written is not None:
        out["cache_creation_input_tokens"] = written
    return out


def reasoning_of(said: dict[str, Any]) -> str | None:
    """A message's or delta's reasoning, as the providers that send one spell it:
    ``reasoning`` (a string, or ``{"content": ...}``) or ``reasoning_content``."""
    reasoning = said.get("reasoning") or said.get("reasoning_content")
    if isinstance(reasoning, dict):
        reasoning = reasoning.get("content")
    return reasoning if isinstance(reasoning, str) else None


def message(completion: dict[str, Any]) -> dict[str, Any]:
    """The Anthropic Message for a chat completion."""
    blocks: list[dict[str, Any]] = []
    stop = "end_turn"
    choices = completion.get("choices") or []
    if choices:
        choice = choices[0]
        said = choice.get("message") or {}
        reasoning = reasoning_of(said)
        if reasoning:
            blocks.append({"type": "thinking", "thinking": reasoning})
        if said.get("content"):
            blocks.append({"type": "text", "text": said["content"]})
        if said.get("refusal"):
            blocks.append({"type": "text", "text": said["refusal"]})
        for call in said.get("tool_calls") or []:
            function = call.get("function")
            if not function:
                continue
            try:
                given = orjson.loads(function.get("arguments") or "{}")
            except orjson.JSONDecodeError:
                given = {}
            blocks.append(
                {
                    "type": "tool_use",
                    "id": checks.name(call.get("id"), "tool call id"),
                    "name": checks.name(function.get("name"), "tool call name"),
                    "input": given,
                }
            )
        reason = choice.get("finish_reason") or "stop"
        stop = "refusal" if said.get("refusal") else STOP_REASONS.get(reason, "end_turn")
    if not blocks:
        blocks.append({"type": "text", "text": ""})
    return {
        "id": completion.get("id"),
        "type": "message",
        "role": "assistant",
        "content": blocks,
        "model": completion.get("model"),
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage(completion.get("usage")),
    }
