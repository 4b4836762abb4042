"""Prompt-cache breakpoints for a request translated to Anthropic's Messages API.

Anthropic caches a prompt's prefix only up to a ``cache_control`` breakpoint, which an
OpenAI-format client cannot send; without one, nothing is cached, and a long agent
conversation pays for its whole context on every turn. So the bridge places them, at
most four (Anthropic's limit), where a growing conversation's prefix stays the same:

- after the tools, and after the system prompt (the same on every turn);
- at the end of the last message: written now, read by the next turn;
- at the end of the message before the latest assistant answer: the previous request's
  last message, whose prefix that request wrote, so this one reads it.

A request that already carries a breakpoint is left as it is.
"""

from __future__ import annotations

from typing import Any

EPHEMERAL = {"type": "ephemeral"}
MAX_BREAKPOINTS = 4
#: Blocks that cannot carry a breakpoint.
_UNMARKABLE = frozenset({"thinking", "redacted_thinking"})


def with_breakpoints(request: dict[str, Any]) -> dict[str, Any]:
    """``request`` with breakpoints placed (changed in place; its parts are copied)."""
    if _has_breakpoints(request):
        return request
    left = MAX_BREAKPOINTS
    tools = request.get("tools")
    if tools:
        request["tools"] = [*tools[:-1], {**tools[-1], "cache_control": EPHEMERAL}]
        left -= 1
    system = request.get("system")
    if isinstance(system, str) and system:
        request["system"] = [{"type": "text", "text": system, "cache_control": EPHEMERAL}]
        left -= 1
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return request
    marks = [len(messages) - 1]
    answered = next(
        (i for i in range(len(messages) - 2, 0, -1) if messages[i].get("role") == "assistant"),
        None,
    )
    if answered is not None:
        marks.append(answered - 1)
    for index in marks[:left]:
        marked = _marked(messages[index])
        if marked is not None:
            messages[index] = marked
    return request


def _marked(message: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of ``message`` with a breakpoint on its last block, or None if none fits."""
    content = message.get("content")
    if isinstance(content, str):
        if not content:
            return None
        return {
            **message,
            "content": [{"type": "text", "text": content, "cache_control": EPHEMERAL}],
        }
    if not isinstance(content, list):
        return None
    for position in range(len(content) - 1, -1, -1):
        block = content[position]
        if isinstance(block, dict) and block.get("type") not in _UNMARKABLE:
            if block.get("type") == "text" and not block.get("text"):
                continue
            blocks = [*content]
            blocks[position] = {**block, "cache_control": EPHEMERAL}
            return {**message, "content": blocks}
    return None


def _has_breakpoints(request: dict[str, Any]) -> bool:
    def marked(blocks: object) -> bool:
        return isinstance(blocks, list) and any(
            isinstance(b, dict) and "cache_control" in b for b in blocks
        )

    if marked(request.get("tools")) or marked(request.get("system")):
        return True
    return any(
        isinstance(m, dict) and marked(m.get("content")) for m in request.get("messages") or ()
    )
