"""POST /v1/responses: pass-through to targets with the Responses API, and the bridge to
chat-only and Anthropic-format targets, with the official OpenAI SDK (and the OpenAI
Agents SDK) as clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway, chunk, keep, send_stream

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def native_response(model: str) -> dict[str, Any]:
    return {
        "id": "resp_native",
        "object": "response",
        "created_at": 1700000000,
        "status": "completed",
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_native",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Native hello.", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
    }


def native_events(model: str, cut: bool = False) -> list[bytes]:
    response = native_response(model)
    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    item = {
        "type": "message",
        "id": "msg_native",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    steps: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": pending}),
        ("response.in_progress", {"response": pending}),
        ("response.output_item.added", {"output_index": 0, "item": item}),
        (
            "response.content_part.added",
            {
                "item_id": "msg_native",
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            },
        ),
        (
            "response.output_text.delta",
            {"item_id": "msg_native", "output_index": 0, "content_index": 0, "delta": "Native "},
        ),
        (
            "response.output_text.delta",
            {"item_id": "msg_native", "output_index": 0, "content_index": 0, "delta": "hello."},
        ),
    ]
    if not cut:
        steps.append(("response.completed", {"response": response}))
    return [
        f"event: {kind}\ndata: ".encode()
        + orjson.dumps({"type": kind, "sequence_number": n, **data})
        + b"\n\n"
        for n, (kind, data) in enumerate(steps)
    ]


async def native(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    assert request.path == "/v1/responses"
    if body.get("stream"):
        return await send_stream(request, native_events(body["model"]))
    return web.json_response(native_response(body["model"]))


async def native_cut(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return await send_stream(request, native_events(body["model"], cut=True), then="drop")


async def chat_cut(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    assert request.path == "/v1/chat/completions"
    events = [chunk("m", {"role": "assistant", "content": ""}), chunk("m", {"content": "Hal"})]
    return await send_stream(request, events, then="drop")


ALIASES = """
defaults: {retries: 0}
providers:
  chatonly: {base_url: "BASE/v1", responses: bridge}
  ownnative: {base_url: "BASE/v1", responses: native}
aliases:
  native: openai:gpt-4.1
  own: ownnative:gpt-4.1
  native-cut: openai:cut
  chat: chatonly:llama
  chat-cut: chatonly:cut
  claude: anthropic:claude-3-5-sonnet-20241022
"""


@pytest.fixture
def gateway(make_gateway: MakeGateway, fake: FakeProvider) -> Gateway:
    fake.on("gpt-4.1", native)
    fake.on("cut", native_cut)
    return make_gateway(
        ALIASES.replace("BASE", fake.url),
        env={"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url},
    )


def client(gateway: Gateway) -> openai.OpenAI:
    return keep(openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0))


# --- pass-through -------------------------------------------------------------------------------


def test_pass_through_keeps_the_bytes(gateway: Gateway, fake: FakeProvider) -> None:
    answer = client(gateway).responses.create(model="native", input="Hi", store=False)
    assert answer.output_text == "Native hello."
    (seen,) = fake.seen
    assert seen.path == "/v1/responses"
    assert seen.body == {"model": "gpt-4.1", "input": "Hi", "store": False}
    body = {"model": "native", "input": "Hi", "stream": True}
    raw = httpx.post(f"{gateway.base_url}/responses", json=body).content
    assert raw == b"".join(native_events("gpt-4.1"))
    with client(gateway).responses.stream(model="native", input="Hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Native hello."
    # A provider of one's own marked 'responses: native' in the alias file, likewise.
    assert client(gateway).responses.create(model="own", input="Hi").output_text == (
        "Native hello."
    )
    assert fake.seen[-1].path == "/v1/responses"
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'route="responses"' in metrics


# --- the bridge -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["chat", "claude"])
def test_the_bridge_answers_whole_and_streamed(gateway: Gateway, alias: str) -> None:
    sdk = client(gateway)
    answer = sdk.responses.create(model=alias, input="Hi", instructions="Be brief.")
    assert answer.output_text in ("Hello from the fake provider.", "Hello from Claude.")
    assert answer.status == "completed"
    assert answer.usage is not None and answer.usage.input_tokens > 0
    kinds = []
    with sdk.responses.stream(model=alias, input="Hi") as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_response()
    assert final.output_text
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds
    assert kinds[-1] == "response.completed"
    numbers = []
    raw = httpx.post(
        f"{gateway.base_url}/responses", json={"model": alias, "input": "Hi", "stream": True}
    ).content
    for event in raw.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data: "):
                numbers.append(orjson.loads(line[6:])["sequence_number"])
    assert numbers == list(range(len(numbers)))


@pytest.mark.parametrize("alias", ["chat", "claude"])
def test_a_function_call_round_trip_through_the_bridge(gateway: Gateway, alias: str) -> None:
    sdk = client(gateway)
    first = sdk.responses.create(model=alias, input="Weather in Paris?", tools=[WEATHER])  # type: ignore[list-item]
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    second = sdk.responses.create(
        model=alias,
        tools=[WEATHER],  # type: ignore[list-item]
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24C"},
        ],
    )
    assert second.output_text
    with sdk.responses.stream(model=alias, input="Weather in Paris?", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        final = stream.get_final_response()
    (streamed,) = [item for item in final.output if item.type == "function_call"]
    assert json.loads(streamed.arguments) == {"city": "Paris"}


def test_the_mock_answers_responses(gateway: Gateway) -> None:
    sdk = client(gateway)
    assert sdk.responses.create(model="mock:echo", input="Echo me").output_text == "Echo me"
    with sdk.responses.stream(model="mock:lorem", input="x", max_output_tokens=3) as stream:
        final = stream.get_final_response()
    assert final.output_text == "lorem ipsum dolor"


def test_what_the_bridge_cannot_honour_is_a_named_400(gateway: Gateway) -> None:
    sdk = client(gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="chat", input="Hi", previous_response_id="resp_123")
    assert caught.value.body["code"] == "unsupported_parameter"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(
            model="chat",
            input="Hi",
            tools=[{"type": "computer_use_preview", "environment": "linux"}],  # type: ignore[list-item, typeddict-item]
        )
    assert caught.value.body["param"] == "tools"  # type: ignore[index]
    assert "computer_use_preview" in caught.value.body["message"]  # type: ignore[index]
    fine = sdk.responses.create(
        model="chat",
        input="Hi",
        store=False,
        metadata={"k": "v"},
        user="u1",
        include=["reasoning.encrypted_content"],
        prompt_cache_key="p",
    )
    assert fine.output_text


# --- failures after the first event ---------------------------------------------------------


@pytest.mark.parametrize("alias", ["native-cut", "chat-cut"])
def test_a_broken_stream_ends_with_response_failed(
    gateway: Gateway, fake: FakeProvider, alias: str
) -> None:
    fake.on("cut", native_cut if alias == "native-cut" else chat_cut)
    raw = httpx.post(
        f"{gateway.base_url}/responses", json={"model": alias, "input": "Hi", "stream": True}
    ).content
    assert b"response.completed" not in raw
    last = raw.strip().split(b"\n\n")[-1]
    assert last.startswith(b"event: response.failed\n")
    failed = orjson.loads(last.split(b"data: ", 1)[1])
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "upstream_stream_interrupted"
    assert failed["response"]["error"]["retryable"] is True


# --- the OpenAI Agents SDK, on its default Responses model -------------------------------------


def test_an_agent_with_a_function_tool_runs_through_the_bridge(gateway: Gateway) -> None:
    agents = pytest.importorskip("agents")

    calls: list[str] = []

    @agents.function_tool
    def lookup(city: str) -> str:
        """Look a city up."""
        calls.append(city)
        return f"{city} is sunny"

    async def run() -> str:
        sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)
        try:
            model = agents.OpenAIResponsesModel(model="mock:tool", openai_client=sdk)
            agent = agents.Agent(
                name="helper", instructions="Use the tool.", tools=[lookup], model=model
            )
            result = await agents.Runner.run(agent, "Paris")
            return str(result.final_output)
        finally:
            await sdk.close()

    agents.set_tracing_disabled(True)
    output = asyncio.run(run())
    assert calls == ["Paris"]
    assert output == "The tool answered: Paris is sunny"
