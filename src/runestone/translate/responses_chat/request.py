"""An OpenAI Responses request as a chat-completions request, for targets without the
Responses API (the bridge). Pure: decoded JSON in, decoded JSON out.

Translated: ``model``, ``input`` (a string, or items: ``message`` items with
``input_text`` / ``input_image`` / ``output_text`` parts and the roles ``developer``,
``system``, ``user``, ``assistant``; the call items of every tool type and their
``*_output`` items, see ``tools`` and ``items``), ``instructions``, ``tools`` and
``tool_choice`` of every kind, ``parallel_tool_calls``, ``max_output_tokens``,
``temperature``, ``top_p``, ``reasoning.effort``, ``text.format`` (``json_schema``,
``json_object``, ``text``), ``stream``.

The conversation is made into one that strict upstreams accept: consecutive assistant
items become one message (its text and its tool calls), each call's result follows its
call (a call whose result is missing gets one saying so; a result without its call
becomes user text), and reasoning items, which only their own provider can read, are
left out.

Accepted and not forwarded, since they only carry the client's bookkeeping: ``store``,
``include``, ``prompt_cache_key``, ``client_metadata``, ``metadata``, ``user``,
``safety_identifier``, ``service_tier``, ``truncation: disabled``, ``background: false``,
``stream_options``, ``text.verbosity``. ``previous_response_id`` and ``item_reference``
items are expanded by the gateway's response store before a request gets here; one
left means the gateway never stored it. Anything else is a 400 that names the field.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from runestone.translate.responses_chat.items import (
    RESULT_TYPES,
    chat_call,
    chat_result,
    found_tools,
    is_call,
)
from runestone.translate.responses_chat.tools import HOSTED, ToolMap, refuse

log = logging.getLogger("runestone.translate")

_BOOKKEEPING = frozenset(
    {
        "store",
        "include",
        "prompt_cache_key",
        "client_metadata",
        "metadata",
        "user",
        "safety_identifier",
        "service_tier",
        "stream_options",
    }
)
_SAME = ("temperature", "top_p", "parallel_tool_calls", "stream")
_ROLES = {"developer": "system", "system": "system", "user": "user", "assistant": "assistant"}
#: Records of what a provider ran itself (a search, an image): nothing a chat target
#: can be shown, so a conversation that moves to one goes on without them.
_PROVIDER_RECORDS = frozenset(
    {f"{kind}_call" for kind in HOSTED}
    | {"mcp_list_tools", "mcp_approval_request", "mcp_approval_response", "compaction"}
)
_NO_OUTPUT = "(no output was recorded for this call)"


def chat_request(body: Mapping[str, object], provider: str) -> tuple[dict[str, object], ToolMap]:
    """The chat-completions body for a Responses request, and how its tools were bridged;
    or a 400 naming the field."""
    chat: dict[str, object] = {"model": body["model"]}
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    tools = ToolMap(body.get("tools"), provider, found_tools(items))
    for field, value in body.items():
        if field in ("model", "input", "instructions", "tools") or field in _BOOKKEEPING:
            continue
        if field in _SAME:
            chat[field] = value
        elif field == "max_output_tokens":
            chat["max_tokens"] = value
        elif field == "tool_choice":
            choice, narrowed = tools.choice(value)
            chat["tool_choice"] = choice
            if narrowed is not None:
                chat["tools"] = narrowed
        elif field == "reasoning":
            effort = value.get("effort") if isinstance(value, dict) else None
            if effort is not None:
                chat["reasoning_effort"] = effort
        elif field == "text":
            response_format = _text_format(value)
            if response_format is not None:
                chat["response_format"] = response_format
        elif field == "previous_response_id":
            if value is not None:
                raise refuse(
                    field,
                    f"{value!r} is not stored by the gateway (made with store: false, by "
                    f"another key, or expired), and {provider} is reached through the "
                    "gateway's bridge: send the whole conversation as input items",
                    "unsupported_parameter",
                )
        elif field == "truncation":
            if value not in (None, "disabled", "auto"):
                raise refuse(field, f"{value!r} cannot be honoured by {provider}")
        elif field == "background":
            if value:
                raise refuse(field, f"cannot be honoured by {provider}")
        else:
            raise refuse(
                field,
                f"cannot be honoured by {provider}, which has no Responses API (the gateway "
                "bridges to its chat completions); remove it, or route to a target with the "
                "Responses API",
            )
    if tools.chat_tools and "tools" not in chat:
        chat["tools"] = tools.chat_tools
    if "tools" not in chat and isinstance(chat.get("tool_choice"), dict):
        chat.pop("tool_choice")  # it named a tool that is not there (a dropped one)
    messages.extend(_messages(items, tools))
    chat["messages"] = _strict(messages)
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True}  # for the usage of the answer
    return chat, tools


def _messages(items: object, tools: ToolMap) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise refuse("input", "must be a string or a list of items")
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise refuse("input", f"item {index} is not an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = _ROLES.get(str(item.get("role")))
            if role is None:
                raise refuse("input", f"item {index} has role {item.get('role')!r}")
            messages.append({"role": role, "content": _content(item.get("content"), index)})
        elif is_call(kind):
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [chat_call(item, tools, index)],
                }
            )
        elif kind in RESULT_TYPES:
            messages.append(chat_result(item, index))
        elif kind == "reasoning" or kind in _PROVIDER_RECORDS:
            # The model's own notes, or a record of a tool its provider ran: only that
            # provider can read them.
            log.debug(
                "input item %d of type %s left out: a chat target cannot read it", index, kind
            )
        elif kind == "item_reference":
            raise refuse(
                "input",
                f"item {index} refers to {item.get('id')!r}, which the gateway has not "
                "stored (made with store: false, by another key, or expired): send the "
                "item itself",
            )
        else:
            raise refuse("input", f"item {index} of type {kind!r} cannot be bridged")
    return messages


def _strict(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as strict chat upstreams take it: one assistant message per
    turn, each tool call followed by its result, no result without its call."""
    merged: list[dict[str, Any]] = []
    for message in messages:
        last = merged[-1] if merged else None
        if message["role"] == "assistant" and last is not None and last["role"] == "assistant":
            _merge_assistant(last, message)
        else:
            merged.append(dict(message))
    results: dict[str, dict[str, Any]] = {}
    for message in merged:
        if message["role"] == "tool":
            results.setdefault(str(message["tool_call_id"]), message)
    called = {call["id"] for message in merged for call in message.get("tool_calls") or () if call}
    out: list[dict[str, Any]] = []
    for message in merged:
        if message["role"] == "tool":
            if message["tool_call_id"] not in called:
                text = f"Output of tool call {message['tool_call_id']}:\n{message['content']}"
                out.append({"role": "user", "content": text})
            continue
        out.append(message)
        for call in message.get("tool_calls") or ():
            found = results.pop(call["id"], None)
            out.append(found or {"role": "tool", "tool_call_id": call["id"], "content": _NO_OUTPUT})
    return out


def _merge_assistant(into: dict[str, Any], message: dict[str, Any]) -> None:
    text = [c for c in (into.get("content"), message.get("content")) if c]
    if all(isinstance(c, str) for c in text):
        into["content"] = "\n\n".join(text) if text else None
    else:
        into["content"] = [
            part
            for c in text
            for part in ([{"type": "text", "text": c}] if isinstance(c, str) else c)
        ]
    calls = [*(into.get("tool_calls") or ()), *(message.get("tool_calls") or ())]
    if calls:
        into["tool_calls"] = calls


def _content(content: object, index: int) -> object:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise refuse("input", f"item {index} has content that is neither text nor parts")
    parts: list[dict[str, object]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise refuse("input", f"item {index}: an input_image needs an image_url")
            image: dict[str, object] = {"url": url}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part.get("refusal", "")})
        else:
            raise refuse("input", f"item {index}: content of type {kind!r} cannot be bridged")
    if all(p["type"] == "text" for p in parts):
        return "".join(str(p["text"]) for p in parts)
    return parts


def _text_format(text: object) -> dict[str, object] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise refuse("text", f"format {fmt.get('type')!r} cannot be bridged")
