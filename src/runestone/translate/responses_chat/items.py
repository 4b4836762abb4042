"""Tool calls between the two formats: a chat call as its Responses item, and back.

``call_item`` makes the output item a chat tool call stands for (``function_call``,
``custom_tool_call``, ``local_shell_call``, ``shell_call``, ``apply_patch_call``,
``tool_search_call``); ``chat_call`` and ``chat_result`` turn those items, and their
``*_output`` items, from a conversation's input back into chat tool calls and results.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson

from runestone.translate.responses_chat.tools import Bridged, ToolMap, parse_arguments, refuse

#: Item types of calls, by the kind of tool that makes them.
CALL_TYPES = {
    "function": "function_call",
    "custom": "custom_tool_call",
    "local_shell": "local_shell_call",
    "shell": "shell_call",
    "apply_patch": "apply_patch_call",
    "tool_search": "tool_search_call",
}
_KIND_OF_CALL = {item: kind for kind, item in CALL_TYPES.items()}
_ID_PREFIX = {
    "function": "fc",
    "custom": "ctc",
    "local_shell": "lsh",
    "shell": "sh",
    "apply_patch": "apc",
    "tool_search": "ts",
}
RESULT_TYPES = frozenset(
    {
        "function_call_output",
        "custom_tool_call_output",
        "local_shell_call_output",
        "shell_call_output",
        "apply_patch_call_output",
        "tool_search_output",
    }
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"


def call_item(
    bridged: Bridged, call_id: object, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    """The Responses output item for a chat tool call (its arguments complete)."""
    kind = bridged.kind
    item: dict[str, Any] = {"type": CALL_TYPES[kind], "id": new_id(_ID_PREFIX[kind])}
    item["call_id"] = call_id
    if kind == "function":
        item.update(name=bridged.name, arguments=arguments)
    elif kind == "custom":
        item.update(name=bridged.name, input=custom_input(arguments))
    elif kind == "local_shell":
        given = parse_arguments(arguments)
        command = given.get("command")
        action: dict[str, Any] = {
            "type": "exec",
            "command": command if isinstance(command, list) else [str(command or "")],
            "env": {},
        }
        for name in ("working_directory", "timeout_ms"):
            if given.get(name) is not None:
                action[name] = given[name]
        item["action"] = action
    elif kind == "shell":
        given = parse_arguments(arguments)
        commands = given.get("commands")
        item["action"] = {
            "commands": commands if isinstance(commands, list) else [str(commands or "")],
            "timeout_ms": given.get("timeout_ms"),
            "max_output_length": given.get("max_output_length"),
        }
    elif kind == "apply_patch":
        given = parse_arguments(arguments)
        operation = {"type": given.get("type"), "path": given.get("path")}
        if given.get("type") != "delete_file":
            operation["diff"] = given.get("diff", "")
        item["operation"] = operation
    else:  # tool_search
        item.update(execution="client", arguments=parse_arguments(arguments))
    if bridged.namespace is not None:
        item["namespace"] = bridged.namespace
    item["status"] = status
    return item


def custom_input(arguments: str) -> str:
    """A free-form tool's text: the ``input`` argument, or what the model wrote as is."""
    try:
        given = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(given, dict) and isinstance(given.get("input"), str):
        return str(given["input"])
    return arguments


def is_call(kind: object) -> bool:
    return kind in _KIND_OF_CALL


def chat_call(item: Mapping[str, Any], tools: ToolMap, index: int) -> dict[str, Any]:
    """A call item of an earlier turn as a chat ``tool_calls`` entry."""
    kind = _KIND_OF_CALL[str(item.get("type"))]
    name = str(item.get("name", kind)) if kind in ("function", "custom") else kind
    arguments: object
    if kind == "function":
        arguments = item.get("arguments", "")
    elif kind == "custom":
        arguments = orjson.dumps({"input": item.get("input", "")}).decode()
    elif kind in ("local_shell", "shell"):
        arguments = orjson.dumps(item.get("action") or {}).decode()
    elif kind == "apply_patch":
        arguments = orjson.dumps(item.get("operation") or {}).decode()
    else:
        arguments = orjson.dumps(item.get("arguments") or {}).decode()
    call_id = item.get("call_id") or item.get("id")
    if not isinstance(call_id, str):
        raise refuse("input", f"item {index} of type {item.get('type')!r} has no call_id")
    return {
        "id": call_id,
        "type": "function",
        "function": {
            "name": tools.chat_name(kind, name, item.get("namespace")),
            "arguments": arguments if isinstance(arguments, str) else str(arguments),
        },
    }


def chat_result(item: Mapping[str, Any], index: int) -> dict[str, Any]:
    """A call's output item as a chat ``tool`` message."""
    kind = item.get("type")
    call_id = item.get("call_id")
    if kind == "local_shell_call_output" and not call_id:
        call_id = item.get("id")  # this item names its call by ``id``
    if not isinstance(call_id, str):
        raise refuse("input", f"item {index} of type {kind!r} has no call_id")
    output = item.get("output")
    if kind == "shell_call_output":
        content = _shell_output(output)
    elif kind == "apply_patch_call_output":
        content = output if isinstance(output, str) and output else str(item.get("status", ""))
    elif kind == "tool_search_output":
        names = [_tool_name(tool) for tool in item.get("tools") or []]
        content = "Tools found, callable from now on: " + (", ".join(names) or "none")
    else:
        content = output if isinstance(output, str) else text_of(output)
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _tool_name(tool: object) -> str:
    if not isinstance(tool, dict):
        return "?"
    return str(tool.get("name") or tool.get("type"))


def _shell_output(output: object) -> str:
    if not isinstance(output, list):
        return text_of(output)
    pieces = []
    for run in output:
        if not isinstance(run, dict):
            continue
        outcome = run.get("outcome") or {}
        ended = (
            f"exit code {outcome.get('exit_code')}"
            if outcome.get("type") == "exit"
            else "timed out"
        )
        pieces.append(
            f"stdout:\n{run.get('stdout', '')}\nstderr:\n{run.get('stderr', '')}\n{ended}"
        )
    return "\n\n".join(pieces)


def text_of(parts: object) -> str:
    if not isinstance(parts, list):
        return "" if parts is None else str(parts)
    return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))


def found_tools(items: object) -> list[object]:
    """The tools that client-run tool searches of earlier turns found."""
    if not isinstance(items, list):
        return []
    found: list[object] = []
    for item in items:
        if isinstance(item, dict) and item.get("type") == "tool_search_output":
            tools = item.get("tools")
            if isinstance(tools, list):
                found.extend(tools)
    return found
