"""What the mock provider says, whatever wire format it speaks.

- ``echo`` repeats the last user message;
- ``lorem`` answers ``max_tokens`` words of filler (default 20);
- ``tool`` calls the request's first tool (string arguments get the last user text),
  and once the tool's result is in the conversation, answers with it.

Token counts are words, not a tokenizer's count: the mock has no real model.
"""

from __future__ import annotations

from dataclasses import dataclass

from runestone.errors import error_for

MODELS = ("echo", "lorem", "tool")
_LOREM = (
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
)


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: dict[str, object]


@dataclass(frozen=True, slots=True)
class MockAnswer:
    pieces: list[str]  # the text, in the chunks a stream sends
    tool_call: ToolCall | None
    prompt_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces) + (1 if self.tool_call else 0)


def text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts or blocks: keep the text ones
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _tool_result(message: dict[str, object]) -> str | None:
    """The tool's answer, if this message carries one (either wire format)."""
    if message.get("role") == "tool":
        return text_of(message.get("content"))
    content = message.get("content")
    if message.get("role") == "user" and isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                inner = block.get("content")
                return inner if isinstance(inner, str) else text_of(inner)
    return None


def _last_user_text(messages: list[object]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = text_of(message.get("content"))
            if text:
                return text
    return ""


def _words(text: str) -> list[str]:
    return [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]


def _first_tool(tools: object) -> tuple[str, dict[str, object]] | None:
    """(name, JSON schema of its input) of the first tool, in either wire format."""
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            schema = function.get("parameters")
            return function["name"], schema if isinstance(schema, dict) else {}
        if isinstance(tool.get("name"), str):
            schema = tool.get("input_schema")
            return tool["name"], schema if isinstance(schema, dict) else {}
    return None


def _arguments(schema: dict[str, object], text: str) -> dict[str, object]:
    """Values for the schema's required properties: the user's text for strings."""
    properties = schema.get("properties")
    required = schema.get("required")
    if not isinstance(properties, dict) or not isinstance(required, list):
        return {}
    samples: dict[str, object] = {"string": text, "integer": 1, "number": 1, "boolean": True}
    arguments: dict[str, object] = {}
    for name in required:
        spec = properties.get(name)
        kind = spec.get("type") if isinstance(spec, dict) else None
        arguments[str(name)] = samples.get(str(kind))
    return arguments


def answer(model: str, body: dict[str, object]) -> MockAnswer:
    """The mock's answer to a chat-completions or Messages body."""
    if model not in MODELS:
        raise error_for(
            "model_not_found",
            f"the mock provider has no model {model!r}; "
            f"use one of {', '.join('mock:' + m for m in MODELS)}",
            provider="mock",
        )
    raw = body.get("messages")
    messages: list[object] = raw if isinstance(raw, list) else []
    prompt = sum(len(text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))
    if model == "echo":
        return MockAnswer(_words(_last_user_text(messages)), None, prompt)
    if model == "tool":
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        result = _tool_result(last)
        if result is not None:
            return MockAnswer(_words(f"The tool answered: {result}"), None, prompt)
        tool = _first_tool(body.get("tools"))
        if tool is None:
            return MockAnswer(_words("mock:tool has no tools to call"), None, prompt)
        name, schema = tool
        return MockAnswer([], ToolCall(name, _arguments(schema, _last_user_text(messages))), prompt)
    limit = body.get("max_tokens") or body.get("max_completion_tokens") or 20
    count = max(1, min(int(limit), 4096)) if isinstance(limit, int) else 20
    return MockAnswer(
        [(" " if i else "") + _LOREM[i % len(_LOREM)] for i in range(count)], None, prompt
    )
