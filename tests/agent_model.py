"""A scripted model for real agent clients (Codex, the AI SDK, the Agents SDK): it runs
the client's shell tool and then answers with what the command printed.

Served in both wire formats the bridge reaches: chat completions (a chat-only server)
and Anthropic's Messages API. Each turn it looks at the conversation it was sent: while
it has fewer tool results than it wants (two if the first user text says "twice", else
one), it calls the shell tool; then it answers ``The command printed: <output>``. It
checks what a strict upstream checks (every call answered right after it, one assistant
message per turn, alternating roles), and answers 400 as one would when a check fails.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from aiohttp import web

from tests.servers import (
    anthropic_message,
    anthropic_stream,
    chunk,
    completion,
    send_stream,
)

COMMAND = "echo $((6*7))"
ANSWER_PREFIX = "The command printed: "
_SHELL_NAMES = ("exec_command", "shell", "local_shell", "run_shell")
_calls = itertools.count(1)


def _shell_call(tools: list[dict[str, Any]], names: list[str]) -> tuple[str, dict[str, Any]]:
    """The shell tool among those offered, and arguments that run ``COMMAND``."""
    for wanted in _SHELL_NAMES:
        if wanted in names:
            tool = tools[names.index(wanted)]
            break
    else:
        raise web.HTTPBadRequest(text=f"no shell tool among {names}")
    schema = tool.get("parameters") or tool.get("input_schema") or {}
    properties = schema.get("properties") or {}
    name = names[names.index(wanted)]
    if "cmd" in properties:
        return name, {"cmd": COMMAND}
    if "commands" in properties:
        return name, {"commands": [COMMAND]}
    if properties.get("command", {}).get("type") == "array":
        return name, {"command": ["bash", "-lc", COMMAND]}
    return name, {"command": COMMAND}


def _wanted(first_user_text: str) -> int:
    return 2 if "twice" in first_user_text else 1


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _strict_chat(messages: list[dict[str, Any]]) -> None:
    """What OpenAI's chat completions refuse: an unanswered call, a stray result, two
    assistant messages in a row."""
    waiting: list[str] = []
    previous = None
    for message in messages:
        role = message["role"]
        if role == "tool":
            if message.get("tool_call_id") not in waiting:
                raise web.HTTPBadRequest(text="a tool message that answers no call")
            waiting.remove(message["tool_call_id"])
        elif waiting:
            raise web.HTTPBadRequest(text="tool calls without their results")
        if role == "assistant" and previous == "assistant":
            raise web.HTTPBadRequest(text="two assistant messages in a row")
        waiting += [call["id"] for call in message.get("tool_calls") or ()]
        previous = role


async def agent_chat(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    messages = body["messages"]
    _strict_chat(messages)
    results = [_text(m.get("content")) for m in messages if m["role"] == "tool"]
    users = [_text(m.get("content")) for m in messages if m["role"] == "user"]
    tools = [t["function"] for t in body.get("tools") or []]
    model = body["model"]
    if len(results) < _wanted(users[0] if users else ""):
        name, arguments = _shell_call(tools, [t["name"] for t in tools])
        call = {
            "id": f"call_{next(_calls)}",
            "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
        }
        if body.get("stream"):
            head = {**call, "index": 0, "function": {"name": name, "arguments": ""}}
            arguments_text = call["function"]["arguments"]
            events = [
                chunk(model, {"role": "assistant", "content": "Running it."}),
                chunk(model, {"tool_calls": [head]}),
                chunk(
                    model,
                    {"tool_calls": [{"index": 0, "function": {"arguments": arguments_text}}]},
                ),
                chunk(model, {}, "tool_calls"),
                _usage_chunk(model),
                b"data: [DONE]\n\n",
            ]
            return await send_stream(request, events)
        answer = completion(model, "")
        answer["choices"][0]["message"] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [call],
        }
        answer["choices"][0]["finish_reason"] = "tool_calls"
        return web.json_response(answer)
    text = ANSWER_PREFIX + results[-1].strip() if results else "Nothing to run."
    if body.get("stream"):
        events = [
            chunk(model, {"role": "assistant", "content": ""}),
            chunk(model, {"content": text}),
            chunk(model, {}, "stop"),
            _usage_chunk(model),
            b"data: [DONE]\n\n",
        ]
        return await send_stream(request, events)
    return web.json_response(completion(model, text))


def _usage_chunk(model: str) -> bytes:
    payload = {
        "id": "chatcmpl-agent",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _strict_messages(messages: list[dict[str, Any]]) -> None:
    """What Anthropic's Messages API refuses: a first turn that is not the user's, a
    tool_use not answered by tool_result blocks first in the next user turn."""
    if not messages or messages[0]["role"] != "user":
        raise web.HTTPBadRequest(text="the first message must be the user's")
    for at, message in enumerate(messages):
        content = message["content"] if isinstance(message["content"], list) else []
        used = [b["id"] for b in content if b.get("type") == "tool_use"]
        if not used:
            continue
        following = messages[at + 1]["content"] if at + 1 < len(messages) else None
        if not isinstance(following, list):
            raise web.HTTPBadRequest(text="tool_use ids were found without tool_result blocks")
        answered = [b.get("tool_use_id") for b in following if b.get("type") == "tool_result"]
        if answered[: len(used)] != used and sorted(answered) != sorted(used):
            raise web.HTTPBadRequest(text="tool_use ids were found without tool_result blocks")


async def agent_messages(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    messages = body["messages"]
    _strict_messages(messages)
    results = [
        _text(block.get("content"))
        for m in messages
        if isinstance(m["content"], list)
        for block in m["content"]
        if block.get("type") == "tool_result"
    ]
    users = [_text(m["content"]) for m in messages if m["role"] == "user"]
    model = body["model"]
    if len(results) < _wanted(users[0] if users else ""):
        tools = body.get("tools") or []
        name, arguments = _shell_call(tools, [t["name"] for t in tools])
        tool = {"id": f"toolu_{next(_calls)}", "name": name, "input": arguments}
        if body.get("stream"):
            return await send_stream(request, anthropic_stream(model, ["Running it."], tool))
        content = [{"type": "text", "text": "Running it."}, {"type": "tool_use", **tool}]
        return web.json_response(anthropic_message(model, content, "tool_use"))
    text = ANSWER_PREFIX + results[-1].strip() if results else "Nothing to run."
    if body.get("stream"):
        return await send_stream(request, anthropic_stream(model, [text]))
    return web.json_response(anthropic_message(model, [{"type": "text", "text": text}]))
