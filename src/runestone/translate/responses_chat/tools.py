"""Responses tools on a chat-completions target: one rule for every tool type.

The rule (the README has it as a table):

- **function** tools stay functions; **namespace** tools are flattened, each of their
  tools a function named ``<namespace>__<name>``;
- tools the **client runs** become functions with the arguments their call item
  carries, and the model's calls come back as that tool's own item: ``custom``
  (free-form text, its format or grammar described to the model, one string argument
  ``input``) as ``custom_tool_call``; ``local_shell`` as ``local_shell_call``; ``shell``
  as ``shell_call``; ``apply_patch`` as ``apply_patch_call``; a client-run
  ``tool_search`` as ``tool_search_call`` (the tools its output finds are offered from
  then on);
- tools only a **provider runs** (``web_search``, ``file_search``, ``code_interpreter``,
  ``image_generation``, hosted ``mcp``, a server-run ``tool_search``) cannot run on a
  chat target: they are dropped, and the answer says so (``x-runestone-dropped-tools``);
  ``computer_use`` needs the provider's screen loop, and is a named 400.

Every name sent is 64 characters of ``[a-zA-Z0-9_-]`` at most (every provider's limit);
a longer or clashing one is cut and given a digest, and mapped back on the way out.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from runestone.errors import GatewayError, error_for

#: Run by the provider only: dropped on the bridge (or refused, where configured).
HOSTED = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "web_search_2025_08_26",
        "file_search",
        "code_interpreter",
        "image_generation",
        "mcp",
        "programmatic_tool_calling",
    }
)
_SCREEN = frozenset({"computer", "computer_use", "computer_use_preview"})
_MAX_NAME = 64
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")

_STRING = {"type": "string"}
_CLIENT_RUN: dict[str, dict[str, Any]] = {
    "local_shell": {
        "description": "Run a command on the user's machine; returns its output.",
        "parameters": {
            "type": "object",
            "properties": {
                "command": {"type": "array", "items": _STRING, "description": "argv"},
                "working_directory": _STRING,
                "timeout_ms": {"type": "integer"},
            },
            "required": ["command"],
        },
    },
    "shell": {
        "description": "Run shell commands on the user's machine; returns their output.",
        "parameters": {
            "type": "object",
            "properties": {
                "commands": {"type": "array", "items": _STRING},
                "timeout_ms": {"type": "integer"},
                "max_output_length": {"type": "integer"},
            },
            "required": ["commands"],
        },
    },
    "apply_patch": {
        "description": (
            "Create, update or delete one file. For update_file and create_file, `diff` is "
            "a V4A diff of the file."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["create_file", "update_file", "delete_file"]},
                "path": _STRING,
                "diff": _STRING,
            },
            "required": ["type", "path"],
        },
    },
    "tool_search": {
        "description": "Search for more tools; those found can be called from then on.",
        "parameters": {
            "type": "object",
            "properties": {"query": _STRING, "limit": {"type": "number"}},
            "required": ["query"],
        },
    },
}
_CUSTOM_PARAMETERS = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The tool's whole input text."}},
    "required": ["input"],
    "additionalProperties": False,
}


def hosted_in(tools: object) -> list[str]:
    """The provider-run tool types among a request's ``tools``."""
    if not isinstance(tools, list):
        return []
    found = []
    for tool in tools:
        kind = tool.get("type") if isinstance(tool, dict) else None
        server_search = kind == "tool_search" and tool.get("execution") != "client"
        if (kind in HOSTED or server_search) and kind not in found:
            found.append(str(kind))
    return found


@dataclass(frozen=True, slots=True)
class Bridged:
    """What one chat function stands for: a tool of ``kind`` named ``name``."""

    kind: str  # function, custom, local_shell, shell, apply_patch, tool_search
    name: str
    namespace: str | None = None


def refuse(field: str, why: str, code: str = "invalid_request") -> GatewayError:
    return error_for(code, f"{field!r} {why}", param=field)


class ToolMap:
    """A request's tools as chat functions, and the way back from a call to its item."""

    __slots__ = ("_by_name", "_to_name", "chat_tools", "dropped", "hosted")

    def __init__(self, tools: object, provider: str, found: Iterable[object] = ()) -> None:
        self.chat_tools: list[dict[str, Any]] = []
        #: Provider-run tool types the request offered, which the bridge cannot offer.
        self.dropped: list[str] = []
        self.hosted: set[str] = set()
        self._by_name: dict[str, Bridged] = {}
        self._to_name: dict[tuple[str, str | None, str], str] = {}
        if tools is None:
            tools = []
        if not isinstance(tools, list):
            raise refuse("tools", "must be a list")
        for tool in tools:
            self._add(tool, provider)
        for tool in found:  # what a client-run tool search found on earlier turns
            self._add(tool, provider)

    def _add(self, tool: object, provider: str, namespace: str | None = None) -> None:
        if not isinstance(tool, dict):
            raise refuse("tools", f"holds {tool!r}, not a tool object")
        kind = tool.get("type")
        if kind == "function":
            self._function(tool, "function", str(tool.get("name", "")), namespace)
        elif kind == "custom":
            self._function(tool, "custom", str(tool.get("name", "")), namespace)
        elif kind == "namespace" and namespace is None:
            inner = tool.get("tools")
            if not isinstance(inner, list):
                raise refuse("tools", "of type 'namespace' needs a list of 'tools'")
            for each in inner:
                self._add(each, provider, str(tool.get("name", "")))
        elif kind == "tool_search" and tool.get("execution") == "client":
            self._function(tool, "tool_search", "tool_search", None)
        elif kind in _CLIENT_RUN and kind != "tool_search":
            self._function(tool, str(kind), str(kind), None)
        elif kind in HOSTED or kind == "tool_search":
            kind = str(kind)
            self.hosted.add(kind)
            if kind not in self.dropped:
                self.dropped.append(kind)
        elif kind in _SCREEN:
            raise refuse(
                "tools",
                f"of type {kind!r} needs a provider that runs computer use through the "
                f"Responses API; {provider} is reached through the gateway's bridge to chat "
                "completions, which has no equivalent: route to such a target",
                "unsupported_parameter",
            )
        else:
            raise refuse("tools", f"of type {kind!r} cannot be bridged to {provider}")

    def _function(self, tool: Mapping[str, Any], kind: str, name: str, namespace: str | None):  # type: ignore[no-untyped-def]
        key = (kind, namespace, name)
        if key in self._to_name:
            return  # offered twice (a tool search found one already offered)
        chat_name = self._chat_name(f"{namespace}__{name}" if namespace else name)
        self._to_name[key] = chat_name
        self._by_name[chat_name] = Bridged(kind, name, namespace)
        function: dict[str, Any] = {"name": chat_name}
        description = tool.get("description")
        if kind == "custom":
            function["description"] = _custom_description(description, tool.get("format"))
            function["parameters"] = _CUSTOM_PARAMETERS
        elif kind == "function":
            if description:
                function["description"] = description
            function["parameters"] = tool.get("parameters") or {"type": "object"}
            if tool.get("strict") is not None:
                function["strict"] = tool["strict"]
        else:
            shape = _CLIENT_RUN[kind]
            function["description"] = description or shape["description"]
            function["parameters"] = tool.get("parameters") or shape["parameters"]
        self.chat_tools.append({"type": "function", "function": function})

    def _chat_name(self, wanted: str) -> str:
        name = _UNSAFE.sub("_", wanted) or "tool"
        if len(name) > _MAX_NAME or name in self._by_name:
            digest = hashlib.sha256(wanted.encode()).hexdigest()[:8]
            name = f"{name[: _MAX_NAME - 9]}_{digest}"
        return name

    def chat_name(self, kind: str, name: str, namespace: str | None = None) -> str:
        """The chat function a tool (or a call of one, in the input) goes by."""
        found = self._to_name.get((kind, namespace, name))
        return found if found is not None else self._chat_name(name)

    def bridged(self, chat_name: object) -> Bridged:
        """What a chat function the model called stands for (a plain function if unknown)."""
        found = self._by_name.get(chat_name) if isinstance(chat_name, str) else None
        return found if found is not None else Bridged("function", str(chat_name or ""))

    def choice(self, choice: object) -> tuple[object, list[dict[str, Any]] | None]:
        """The chat ``tool_choice`` for a Responses one, and the tools it narrows to."""
        if isinstance(choice, str):
            return choice, None
        kind = choice.get("type") if isinstance(choice, dict) else None
        if not isinstance(choice, dict) or not isinstance(kind, str):
            raise refuse("tool_choice", f"{choice!r} cannot be bridged")
        if kind in ("function", "custom"):
            name = self.chat_name(kind, str(choice.get("name")), choice.get("namespace"))
            return {"type": "function", "function": {"name": name}}, None
        if kind in _CLIENT_RUN:
            return {"type": "function", "function": {"name": self.chat_name(kind, kind)}}, None
        if kind == "allowed_tools":
            allowed = ToolMap(choice.get("tools"), "", ())
            names = {self.chat_name(b.kind, b.name, b.namespace) for b in allowed.entries()}
            kept = [t for t in self.chat_tools if t["function"]["name"] in names]
            return choice.get("mode", "auto"), kept
        raise refuse(
            "tool_choice",
            f"forces the tool {kind!r}, which the provider runs itself; a target reached "
            "through the bridge cannot run it",
            "unsupported_parameter",
        )

    def entries(self) -> list[Bridged]:
        return list(self._by_name.values())


def _custom_description(description: object, fmt: object) -> str:
    lines = [str(description)] if description else []
    lines.append(
        "This tool takes free-form text, not JSON: pass the whole text as the string "
        "argument `input`."
    )
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        lines.append(
            f"The text must match this {fmt.get('syntax', '')} grammar:\n"
            f"{fmt.get('definition', '')}"
        )
    return "\n\n".join(lines)


def parse_arguments(arguments: object) -> dict[str, Any]:
    """A chat call's JSON arguments as an object ({} for anything else)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str | bytes) else None
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
