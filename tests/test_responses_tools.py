"""Every Responses tool type on the bridge, by one rule (docs/api.md: "Tools on the bridge"):
what a chat target is offered, the item each of its calls comes back as (whole and
streamed), the call and output items of later turns, tool_choice of every form, hosted
tools dropped (and said) or refused, and the conversation made strict."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from runestone.access import digest
from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway, chunk, completion, keep, send_stream

ALIASES = f"""
defaults: {{retries: 0}}
providers:
  chatonly: {{base_url: "BASE/v1", responses: bridge}}
aliases:
  chat: chatonly:scripted
  claude: anthropic:claude-3-5-sonnet-20241022
  strict: {{targets: [chatonly:scripted], hosted_tools: refuse}}
keys:
  careful: {{hash: "sha256:{digest("sk-careful")}", hosted_tools: refuse}}
  easy: {{hash: "sha256:{digest("sk-easy")}"}}
"""

NAMESPACE = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Sub-agents.",
    "tools": [
        {"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}},
        {"type": "custom", "name": "note", "description": "A free-form note."},
    ],
}
APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files.",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"},
}
EVERY_KIND = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
    NAMESPACE,
    APPLY_PATCH,
    {"type": "local_shell"},
    {"type": "shell"},
    {"type": "apply_patch"},
    {"type": "tool_search", "execution": "client", "description": "Find tools."},
    {"type": "web_search"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "image_generation"},
    {"type": "mcp", "server_label": "docs", "server_url": "https://example.invalid/mcp"},
]

#: What the scripted model calls next: (function name, arguments) per call.
SCRIPT: list[list[tuple[str, str]]] = []


async def scripted(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    calls = [
        {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": args}}
        for n, (name, args) in enumerate(SCRIPT.pop(0) if SCRIPT else [])
    ]
    model = body["model"]
    if body.get("stream"):
        events = [chunk(model, {"role": "assistant", "content": "Sure."})]
        for n, call in enumerate(calls):
            head = {**call, "index": n, "function": {"name": call["function"]["name"]}}
            events.append(chunk(model, {"tool_calls": [head]}))
            arguments = call["function"]["arguments"]
            for piece in (arguments[:3], arguments[3:]):
                events.append(
                    chunk(model, {"tool_calls": [{"index": n, "function": {"arguments": piece}}]})
                )
        events += [chunk(model, {}, "tool_calls" if calls else "stop"), b"data: [DONE]\n\n"]
        return await send_stream(request, events)
    answer = completion(model, "Sure.")
    if calls:
        answer["choices"][0]["message"]["tool_calls"] = calls
        answer["choices"][0]["finish_reason"] = "tool_calls"
    return web.json_response(answer)


@pytest.fixture
def gateway(make_gateway: MakeGateway, fake: FakeProvider) -> Gateway:
    SCRIPT.clear()
    fake.on("scripted", scripted)
    return make_gateway(
        ALIASES.replace("BASE", fake.url),
        env={"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url},
        service_token="svc",
    )


def post(gateway: Gateway, body: dict[str, Any], key: str = "sk-easy") -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/responses",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


def events_of(raw: bytes) -> list[dict[str, Any]]:
    return [
        orjson.loads(line[6:])
        for event in raw.split(b"\n\n")
        for line in event.split(b"\n")
        if line.startswith(b"data: ")
    ]


def offered(fake: FakeProvider) -> dict[str, dict[str, Any]]:
    return {t["function"]["name"]: t["function"] for t in fake.seen[-1].body.get("tools", [])}


# --- offering ----------------------------------------------------------------------------------


def test_every_tool_type_is_offered_by_the_rule(gateway: Gateway, fake: FakeProvider) -> None:
    answer = post(gateway, {"model": "chat", "input": "Hi", "tools": EVERY_KIND})
    assert answer.status_code == 200, answer.text
    dropped = "web_search,file_search,code_interpreter,image_generation,mcp"
    assert answer.headers["x-runestone-dropped-tools"] == dropped
    tools = offered(fake)
    # The built-in apply_patch clashes with the free-form tool of that name: it gets a
    # name of its own, mapped back on the way out.
    (builtin_patch,) = [name for name in tools if name.startswith("apply_patch_")]
    assert set(tools) == {
        "get_weather",
        "multi_agent_v1__spawn_agent",
        "multi_agent_v1__note",
        "apply_patch",
        builtin_patch,
        "local_shell",
        "shell",
        "tool_search",
    }
    free_form = tools["apply_patch"]
    assert free_form["parameters"]["required"] == ["input"]
    assert "lark grammar" in free_form["description"] and "start: /.+/" in free_form["description"]
    assert tools["local_shell"]["parameters"]["properties"]["command"]["type"] == "array"
    assert all(len(name) <= 64 for name in tools)


def test_names_fit_every_provider(gateway: Gateway, fake: FakeProvider) -> None:
    long_space = {
        "type": "namespace",
        "name": "mcp.server-with.a-very-long-name-indeed-for-its-tools",
        "description": "",
        "tools": [{"type": "function", "name": "lookup.everything/at_once" * 2}],
    }
    SCRIPT.append([])
    post(gateway, {"model": "chat", "input": "Hi", "tools": [long_space]})
    (name,) = offered(fake)
    assert len(name) <= 64
    assert all(c.isalnum() or c in "_-" for c in name)
    SCRIPT.append([(name, "{}")])
    answer = post(gateway, {"model": "chat", "input": "Hi", "tools": [long_space]}).json()
    (call,) = [item for item in answer["output"] if item["type"] == "function_call"]
    assert call["namespace"] == long_space["name"]
    assert call["name"] == "lookup.everything/at_once" * 2


def test_computer_use_is_a_named_400(gateway: Gateway) -> None:
    refused = post(
        gateway,
        {"model": "chat", "input": "Hi", "tools": [{"type": "computer_use_preview"}]},
    )
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "tools" and "computer_use_preview" in error["message"]


# --- calls coming back ---------------------------------------------------------------------------


CALLS = [
    ("multi_agent_v1__spawn_agent", '{"task": "x"}'),
    ("apply_patch", '{"input": "*** Begin Patch\\n*** End Patch\\n"}'),
    ("local_shell", '{"command": ["ls", "-l"], "working_directory": "/tmp"}'),
    ("shell", '{"commands": ["echo hi"], "timeout_ms": 1000}'),
    ("tool_search", '{"query": "calendar"}'),
]


def _check_items(output: list[dict[str, Any]]) -> None:
    assert [item["type"] for item in output] == [
        "message",
        "function_call",
        "custom_tool_call",
        "local_shell_call",
        "shell_call",
        "tool_search_call",
    ]
    by_kind = {item["type"]: item for item in output}
    function = by_kind["function_call"]
    assert (function["namespace"], function["name"]) == ("multi_agent_v1", "spawn_agent")
    assert function["arguments"] == '{"task": "x"}'
    custom = by_kind["custom_tool_call"]
    assert (custom["name"], custom["input"]) == ("apply_patch", "*** Begin Patch\n*** End Patch\n")
    shell = by_kind["local_shell_call"]["action"]
    assert shell["type"] == "exec" and shell["command"] == ["ls", "-l"]
    assert shell["working_directory"] == "/tmp"
    assert by_kind["shell_call"]["action"]["commands"] == ["echo hi"]
    search = by_kind["tool_search_call"]
    assert search["execution"] == "client" and search["arguments"] == {"query": "calendar"}
    assert len({item["call_id"] for item in output if "call_id" in item}) == 5


def test_calls_come_back_as_their_tools_items_whole(gateway: Gateway) -> None:
    SCRIPT.append(CALLS)
    answer = post(gateway, {"model": "chat", "input": "Do it all", "tools": EVERY_KIND[:7]})
    _check_items(answer.json()["output"])


def test_calls_come_back_as_their_tools_items_streamed(gateway: Gateway) -> None:
    SCRIPT.append(CALLS)
    raw = post(
        gateway, {"model": "chat", "input": "Do it all", "tools": EVERY_KIND[:7], "stream": True}
    ).content
    events = events_of(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]
    assert final["type"] == "response.completed"
    _check_items(final["response"]["output"])
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [i["type"] for i in done] == [i["type"] for i in final["response"]["output"]]
    custom = [e for e in events if e["type"].startswith("response.custom_tool_call_input")]
    assert [e["type"] for e in custom] == [
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
    ]
    assert custom[1]["input"] == "*** Begin Patch\n*** End Patch\n"
    # The official SDK reads the same stream into the same items.
    SCRIPT.append(CALLS)
    client = keep(openai.OpenAI(base_url=gateway.base_url, api_key="sk-easy", max_retries=0))
    with client.responses.stream(model="chat", input="Do it all", tools=EVERY_KIND[:7]) as stream:  # type: ignore[arg-type]
        parsed = stream.get_final_response()
    assert [item.type for item in parsed.output] == [i["type"] for i in final["response"]["output"]]


# --- earlier turns -------------------------------------------------------------------------------


def test_call_and_output_items_of_every_kind_go_back_as_tool_messages(
    gateway: Gateway, fake: FakeProvider
) -> None:
    items = [
        {"role": "user", "content": "Do it all"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "On it."}],
        },
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "spawn_agent",
            "namespace": "multi_agent_v1",
            "arguments": "{}",
        },
        {
            "type": "custom_tool_call",
            "call_id": "c2",
            "name": "apply_patch",
            "input": "*** Begin Patch",
        },
        {
            "type": "local_shell_call",
            "id": "ls_1",
            "call_id": "c3",
            "status": "completed",
            "action": {"type": "exec", "command": ["ls"], "env": {}},
        },
        {"type": "shell_call", "call_id": "c4", "action": {"commands": ["echo hi"]}},
        {
            "type": "apply_patch_call",
            "call_id": "c5",
            "status": "completed",
            "operation": {"type": "delete_file", "path": "a.txt"},
        },
        {
            "type": "tool_search_call",
            "call_id": "c6",
            "arguments": {"query": "cal"},
            "execution": "client",
            "status": "completed",
        },
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {"type": "function_call_output", "call_id": "c1", "output": "spawned"},
        {
            "type": "custom_tool_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "patched"}],
        },
        {"type": "local_shell_call_output", "id": "c3", "output": "a.txt"},
        {
            "type": "shell_call_output",
            "call_id": "c4",
            "output": [
                {"stdout": "hi\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}
            ],
        },
        {
            "type": "apply_patch_call_output",
            "call_id": "c5",
            "status": "completed",
            "output": "deleted",
        },
        {
            "type": "tool_search_output",
            "call_id": "c6",
            "execution": "client",
            "status": "completed",
            "tools": [
                {"type": "function", "name": "calendar_add", "parameters": {"type": "object"}}
            ],
        },
        {
            "type": "web_search_call",
            "id": "ws_1",
            "status": "completed",
            "action": {"type": "search"},
        },
    ]
    answer = post(gateway, {"model": "chat", "input": items, "tools": EVERY_KIND[:7]})
    assert answer.status_code == 200, answer.text
    sent = fake.seen[-1].body
    messages = sent["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] + ["tool"] * 6
    assistant = messages[1]
    assert assistant["content"] == "On it."  # the text and every call: one message
    names = [c["function"]["name"] for c in assistant["tool_calls"]]
    assert names == [
        "multi_agent_v1__spawn_agent",
        "apply_patch",
        "local_shell",
        "shell",
        next(n for n in offered(fake) if n.startswith("apply_patch_")),
        "tool_search",
    ]
    assert orjson.loads(assistant["tool_calls"][1]["function"]["arguments"]) == {
        "input": "*** Begin Patch"
    }
    results = {m["tool_call_id"]: m["content"] for m in messages[2:]}
    assert results["c2"] == "patched"
    assert results["c3"] == "a.txt"
    assert "hi" in results["c4"] and "exit code 0" in results["c4"]
    assert results["c5"] == "deleted"
    assert "calendar_add" in results["c6"]
    assert "calendar_add" in offered(fake)  # what the search found is offered from now on


@pytest.mark.parametrize("alias", ["chat", "claude"])
def test_the_conversation_is_made_strict(gateway: Gateway, fake: FakeProvider, alias: str) -> None:
    items = [
        {"role": "user", "content": "Go"},
        {"type": "function_call", "call_id": "a", "name": "get_weather", "arguments": "{}"},
        {"role": "user", "content": "(meanwhile)"},
        {"type": "function_call_output", "call_id": "a", "output": "sunny"},
        {"type": "function_call", "call_id": "b", "name": "get_weather", "arguments": "{}"},
        {"role": "assistant", "content": "No answer for b."},
        {"type": "function_call_output", "call_id": "zzz", "output": "stray"},
        {"role": "user", "content": "Next"},
    ]
    answer = post(gateway, {"model": alias, "input": items, "tools": EVERY_KIND[:1]})
    assert answer.status_code == 200, answer.text
    sent = fake.seen[-1].body["messages"]
    if alias == "chat":
        shape = [(m["role"], m.get("tool_call_id")) for m in sent]
        assert shape == [
            ("user", None),
            ("assistant", None),
            ("tool", "a"),
            ("user", None),
            ("assistant", None),
            ("tool", "b"),
            ("user", None),
            ("user", None),
        ]
        assert sent[4]["content"] == "No answer for b."
        assert "no output was recorded" in sent[5]["content"]
        assert "stray" in sent[6]["content"]
    else:
        roles = [m["role"] for m in sent]
        assert roles[0] == "user"
        assert all(a != b for a, b in itertools.pairwise(roles))
        for at, message in enumerate(sent):
            content = message["content"] if isinstance(message["content"], list) else []
            used = [b["id"] for b in content if b["type"] == "tool_use"]
            if used:
                following = sent[at + 1]["content"]
                results = [b["tool_use_id"] for b in following if b["type"] == "tool_result"]
                assert results[: len(used)] == used


def test_reasoning_of_another_provider_is_left_out_with_a_debug_line(
    gateway: Gateway, fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    items = [
        {"role": "user", "content": "Hi"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again"},
    ]
    with caplog.at_level(logging.DEBUG, logger="runestone.translate"):
        assert post(gateway, {"model": "chat", "input": items}).status_code == 200
    assert "gAAAA" not in fake.seen[-1].raw.decode()
    assert any("reasoning" in r.getMessage() for r in caplog.records)


# --- tool_choice ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "chat_choice", "kept"),
    [
        ("required", "required", None),
        (
            {"type": "function", "name": "spawn_agent", "namespace": "multi_agent_v1"},
            {"type": "function", "function": {"name": "multi_agent_v1__spawn_agent"}},
            None,
        ),
        (
            {"type": "custom", "name": "apply_patch"},
            {"type": "function", "function": {"name": "apply_patch"}},
            None,
        ),
        ({"type": "shell"}, {"type": "function", "function": {"name": "shell"}}, None),
        (
            {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "get_weather"}, {"type": "local_shell"}],
            },
            "required",
            {"get_weather", "local_shell"},
        ),
    ],
)
def test_tool_choice_of_every_form(
    gateway: Gateway, fake: FakeProvider, choice: object, chat_choice: object, kept: object
) -> None:
    body = {"model": "chat", "input": "Hi", "tools": EVERY_KIND[:7], "tool_choice": choice}
    assert post(gateway, body).status_code == 200
    assert fake.seen[-1].body["tool_choice"] == chat_choice
    if kept is not None:
        assert set(offered(fake)) == kept


def test_forcing_a_hosted_tool_is_a_named_400(gateway: Gateway) -> None:
    body = {
        "model": "chat",
        "input": "Hi",
        "tools": [{"type": "web_search"}],
        "tool_choice": {"type": "web_search_preview"},
    }
    refused = post(gateway, body)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "tool_choice"


# --- hosted tools: dropped and said, or refused ---------------------------------------------------


def test_hosted_tools_are_dropped_and_said_in_the_header_and_log(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"model": "chat", "input": "Hi", "tools": [{"type": "web_search"}]}
    with caplog.at_level(logging.INFO, logger="runestone.providers"):
        whole = post(gateway, body)
    assert whole.headers["x-runestone-dropped-tools"] == "web_search"
    assert any("web_search dropped" in r.getMessage() for r in caplog.records)
    streamed = post(gateway, {**body, "stream": True})
    assert streamed.headers["x-runestone-dropped-tools"] == "web_search"
    assert b"response.completed" in streamed.content


@pytest.mark.parametrize(("alias", "key"), [("strict", "sk-easy"), ("chat", "sk-careful")])
def test_hosted_tools_refuse_makes_it_a_400(gateway: Gateway, alias: str, key: str) -> None:
    body = {"model": alias, "input": "Hi", "tools": [{"type": "web_search"}]}
    refused = post(gateway, body, key)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "tools" and "hosted_tools: refuse" in error["message"]
    assert post(gateway, {**body, "tools": EVERY_KIND[:1]}, key).status_code == 200


# --- text formats -------------------------------------------------------------------------------


def test_json_formats_reach_an_anthropic_target(gateway: Gateway, fake: FakeProvider) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema}
    post(gateway, {"model": "claude", "input": "Hi", "text": {"format": fmt}})
    assert fake.seen[-1].body["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }
    post(gateway, {"model": "claude", "input": "Hi", "text": {"format": {"type": "json_object"}}})
    (system,) = fake.seen[-1].body["system"]  # one block, with a prompt-cache breakpoint
    assert "JSON object" in system["text"] and system["cache_control"] == {"type": "ephemeral"}
