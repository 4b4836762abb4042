"""Where the text is in a request or an answer, in each wire format.

A guard reads and rewrites text in place: message contents (strings or text parts), the
system prompt and instructions, the arguments of tool calls the model made, the results
a client sends back, and an answer's refusals. Whatever is structure (roles, types,
ids, tool names, images and files) is left alone; inside a tool's arguments given as an
object (Anthropic's ``tool_use.input``) every string is text.
"""

from __future__ import annotations

from typing import Any, NamedTuple

#: Fields whose values hold text, or hold what holds it.
_CARRIES_TEXT = frozenset(
    {
        "messages",
        "choices",
        "message",
        "content",
        "text",
        "tool_calls",
        "function",
        "arguments",
        "input",
        "output",
        "output_text",
        "instructions",
        "system",
        "refusal",
        "summary",
    }
)
#: Where each operation's request keeps its text, and its answer.
_REQUEST_ROOTS = {
    "chat": ("messages",),
    "messages": ("system", "messages"),
    "count_tokens": ("system", "messages"),
    "responses": ("instructions", "input"),
    "embeddings": ("input",),
}
_ANSWER_ROOTS = {
    "chat": ("choices",),
    "messages": ("content",),
    "responses": ("output", "output_text"),
}
#: How deep a request's JSON is followed (a client's nesting is bounded by the parser too).
_MAX_DEPTH = 64


class Slot(NamedTuple):
    """A string in a JSON document, and how to put another in its place."""

    holder: Any  # the dict or list that holds it
    key: Any  # its key or index

    @property
    def text(self) -> str:
        value: str = self.holder[self.key]
        return value

    def replace(self, text: str) -> None:
        self.holder[self.key] = text


def request_slots(operation: str, body: dict[str, object]) -> list[Slot]:
    return _slots(body, _REQUEST_ROOTS.get(operation, ()))


def answer_slots(operation: str, answer: dict[str, object]) -> list[Slot]:
    return _slots(answer, _ANSWER_ROOTS.get(operation, ()))


def _slots(document: dict[str, object], roots: tuple[str, ...]) -> list[Slot]:
    found: list[Slot] = []
    for root in roots:
        if root in document:
            _walk(document, root, False, found, 0)
    return found


def _walk(holder: Any, key: Any, every: bool, found: list[Slot], depth: int) -> None:
    value = holder[key]
    if isinstance(value, str):
        if value:
            found.append(Slot(holder, key))
        return
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, list):
        for index in range(len(value)):
            _walk(value, index, every, found, depth + 1)
    elif isinstance(value, dict):
        # A tool's arguments given as an object: every string in it is text.
        inner = every or (key == "input" and isinstance(holder, dict) and "name" in holder)
        for name in value:
            if inner or name in _CARRIES_TEXT:
                _walk(value, name, inner, found, depth + 1)
