"""An OpenAI Responses request as a chat-completions request, for targets without the
Responses API (the bridge). Pure: decoded JSON in, decoded JSON out.

Translated: ``model``, ``input`` (a string, or items: ``message`` items with
``input_text`` / ``input_image`` / ``output_text`` parts and the roles ``developer``,
``system``, ``user``, ``assistant``; ``function_call`` and ``function_call_output``
items), ``instructions``, function ``tools``, ``tool_choice``, ``parallel_tool_calls``,
``max_output_tokens``, ``temperature``, ``top_p``, ``reasoning.effort``,
``text.format`` (``json_schema``, ``json_object``, ``text``), ``stream``.

Accepted and not forwarded, since they only carry the client's bookkeeping: ``store``,
``include``, ``prompt_cache_key``, ``client_metadata``, ``metadata``, ``user``,
``safety_identifier``, ``service_tier``, ``truncation: disabled``, ``background: false``,
``stream_options``. ``previous_response_id`` is refused: nothing is stored. Anything
else is a 400 that names the field.
"""

from __future__ import annotations

from collections.abc import Mapping

from runestone.errors import GatewayError, error_for

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


def _refuse(field: str, why: str, code: str = "invalid_request") -> GatewayError:
    return error_for(code, f"{field!r} {why}", param=field)


def chat_request(body: Mapping[str, object], provider: str) -> dict[str, object]:
    """The chat-completions body for a Responses request, or a 400 naming the field."""
    chat: dict[str, object] = {"model": body["model"]}
    messages: list[dict[str, object]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    for field, value in body.items():
        if field in ("model", "input", "instructions") or field in _BOOKKEEPING:
            continue
        if field in _SAME:
            chat[field] = value
        elif field == "max_output_tokens":
            chat["max_tokens"] = value
        elif field == "tools":
            chat["tools"] = _tools(value)
        elif field == "tool_choice":
            chat["tool_choice"] = _tool_choice(value)
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
                raise _refuse(
                    field,
                    f"needs a stored response, and {provider} is reached through the "
                    "gateway's bridge, which stores nothing: send the whole conversation "
                    "as input items instead",
                    "unsupported_parameter",
                )
        elif field == "truncation":
            if value not in (None, "disabled"):
                raise _refuse(field, f"{value!r} cannot be honoured by {provider}")
        elif field == "background":
            if value:
                raise _refuse(field, f"cannot be honoured by {provider}")
        else:
            raise _refuse(
                field,
                f"cannot be honoured by {provider}, which has no Responses API (the gateway "
                "bridges to its chat completions); remove it, or route to a target with the "
                "Responses API",
            )
    messages.extend(_messages(body.get("input")))
    chat["messages"] = messages
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True}  # for the usage of the answer
    return chat


def _messages(items: object) -> list[dict[str, object]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise _refuse("input", "must be a string or a list of items")
    messages: list[dict[str, object]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _refuse("input", f"item {index} is not an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = _ROLES.get(str(item.get("role")))
            if role is None:
                raise _refuse("input", f"item {index} has role {item.get('role')!r}")
            messages.append({"role": role, "content": _content(item.get("content"), index)})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            last = messages[-1] if messages else None
            if last is not None and last.get("role") == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # type: ignore[attr-defined]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": output if isinstance(output, str) else _text_of(output),
                }
            )
        elif kind == "reasoning":
            continue  # the model's own notes from an earlier turn: nothing to send back
        else:
            raise _refuse("input", f"item {index} of type {kind!r} cannot be bridged")
    return messages


def _text_of(parts: object) -> str:
    if not isinstance(parts, list):
        return "" if parts is None else str(parts)
    return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))


def _content(content: object, index: int) -> object:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _refuse("input", f"item {index} has content that is neither text nor parts")
    parts: list[dict[str, object]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise _refuse("input", f"item {index}: an input_image needs an image_url")
            image: dict[str, object] = {"url": url}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part.get("refusal", "")})
        else:
            raise _refuse("input", f"item {index}: content of type {kind!r} cannot be bridged")
    if all(p["type"] == "text" for p in parts):
        return "".join(str(p["text"]) for p in parts)
    return parts


def _tools(tools: object) -> list[dict[str, object]]:
    if not isinstance(tools, list):
        raise _refuse("tools", "must be a list")
    converted: list[dict[str, object]] = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else tool
            raise _refuse("tools", f"of type {kind!r} cannot be bridged: only function tools")
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool
        }
        converted.append({"type": "function", "function": function})
    return converted


def _tool_choice(choice: object) -> object:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise _refuse("tool_choice", f"{choice!r} cannot be bridged")


def _text_format(text: object) -> dict[str, object] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise _refuse("text", f"format {fmt.get('type')!r} cannot be bridged")
