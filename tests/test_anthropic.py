"""The Messages API in front and Anthropic behind, with the official SDKs as clients.

Four paths: Anthropic client to an Anthropic-format upstream (byte pass-through) and to an
OpenAI-format upstream (translated by any-llm); OpenAI client to an Anthropic-format
upstream (translated by any-llm); and the errors of each.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest
from aiohttp import web

from tests.conftest import TEST_ALIASES, MakeGateway
from tests.servers import (
    WEATHER_TOOL_USE,
    FakeProvider,
    Gateway,
    anthropic_stream,
    error_response,
    keep,
    send_stream,
    sse_event,
)

ALIASES = (
    TEST_ALIASES
    + """\
  claude: anthropic:claude-3-5-sonnet-20241022
  gpt: openai:gpt-4o
"""
)
TOKEN = "gw-token"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
OPENAI_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": WEATHER_TOOL["input_schema"],
    },
}
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5E"
    "rkJggg=="
)


@pytest.fixture
def gateway(make_gateway: MakeGateway, fake: FakeProvider) -> Gateway:
    return make_gateway(
        ALIASES,
        env={"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url},
        service_token=TOKEN,
    )


def claude_client(gateway: Gateway) -> anthropic.Anthropic:
    return keep(anthropic.Anthropic(base_url=gateway.url, api_key=TOKEN, max_retries=0))


def openai_client(gateway: Gateway) -> openai.OpenAI:
    return keep(openai.OpenAI(base_url=gateway.base_url, api_key=TOKEN, max_retries=0))


# --- Anthropic client, Anthropic upstream: pass-through ---------------------------------------


def test_messages_pass_through(gateway: Gateway, fake: FakeProvider) -> None:
    message = claude_client(gateway).messages.create(
        model="claude",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    assert message.content[0].text == "Hello from Claude."  # type: ignore[union-attr]
    (seen,) = fake.seen
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == "sk-ant-test"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert "authorization" not in seen.headers
    assert seen.body["model"] == "claude-3-5-sonnet-20241022"
    assert seen.body["system"] == "Be brief."


def test_messages_stream_pass_through_is_byte_exact(gateway: Gateway, fake: FakeProvider) -> None:
    expected = b"".join(anthropic_stream("claude-3-5-sonnet-20241022", ["Hello", " there"]))
    response = httpx.post(
        f"{gateway.url}/v1/messages",
        headers={"x-api-key": TOKEN, "anthropic-version": "2023-06-01"},
        json={
            "model": "claude",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "Hello"}],
        },
    )
    assert response.status_code == 200
    assert response.content == expected  # ping events included
    with claude_client(gateway).messages.stream(
        model="claude", max_tokens=50, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        assert stream.get_final_text() == "Hello there"


def test_tool_round_trip_pass_through(gateway: Gateway, fake: FakeProvider) -> None:
    client = claude_client(gateway)
    question = {"role": "user", "content": "Weather in Paris?"}
    first = client.messages.create(
        model="claude",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[question],  # type: ignore[list-item]
    )
    assert first.stop_reason == "tool_use"
    tool_use = first.content[-1]
    assert tool_use.type == "tool_use"
    second = client.messages.create(
        model="claude",
        max_tokens=100,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[
            question,
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},  # type: ignore[misc]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": tool_use.id, "content": "18C and sunny"}
                ],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    sent = fake.seen[-1].body["messages"]
    assert sent[1]["content"][-1]["id"] == WEATHER_TOOL_USE["id"]
    assert sent[2]["content"][0]["type"] == "tool_result"


def test_count_tokens_pass_through(gateway: Gateway, fake: FakeProvider) -> None:
    count = claude_client(gateway).messages.count_tokens(
        model="claude", messages=[{"role": "user", "content": "Hello"}]
    )
    assert count.input_tokens == 42
    assert fake.seen[-1].path == "/v1/messages/count_tokens"


def test_x_api_key_and_bearer_both_authenticate(gateway: Gateway) -> None:
    body = {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    ok = httpx.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": TOKEN})
    assert ok.status_code == 200
    bearer = httpx.post(
        f"{gateway.url}/v1/messages", json=body, headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert bearer.status_code == 200
    wrong = httpx.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": "nope"})
    assert wrong.status_code == 401
    assert wrong.json()["type"] == "error"
    assert wrong.json()["error"]["type"] == "authentication_error"


# --- errors on the Messages endpoint -----------------------------------------------------------


def test_529_overloaded_keeps_retry_after(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on(
        "claude-3-5-sonnet-20241022",
        error_response(
            529,
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            {"retry-after": "30"},
        ),
    )
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude_client(gateway).messages.create(
            model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    response = caught.value.response
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "overloaded_error"
    assert body["error"]["code"] == "upstream_overloaded"
    assert body["error"]["retryable"] is True
    assert body["error"]["retry_after"] == 30
    assert body["request_id"] == response.headers["x-request-id"]


def test_in_stream_error_event_ends_without_message_stop(
    gateway: Gateway, fake: FakeProvider
) -> None:
    events = anthropic_stream("claude-3-5-sonnet-20241022", ["Hel"])
    broken = [
        *events[:4],
        sse_event(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        ),
    ]

    async def fail(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, broken, delay=0.05)  # content first, then the error

    fake.on("claude-3-5-sonnet-20241022", fail)
    response = httpx.post(
        f"{gateway.url}/v1/messages",
        headers={"x-api-key": TOKEN},
        json={
            "model": "claude",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "Hello"}],
        },
    )
    assert response.content.startswith(b"".join(events[:4]))
    assert b"message_stop" not in response.content
    tail = response.content.split(b"\n\n")[-2]
    assert tail.startswith(b"event: error\ndata: ")
    error = httpx.Response(200, content=tail.split(b"data: ", 1)[1]).json()
    assert error["error"]["type"] == "overloaded_error"
    assert error["error"]["code"] == "upstream_overloaded"


def test_messages_validation_errors_in_anthropic_shape(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/messages",
        headers={"x-api-key": TOKEN},
        json={"model": "claude", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "'max_tokens'" in response.json()["error"]["message"]


# --- Anthropic client, OpenAI-format upstream: translated ------------------------------------


def test_messages_to_an_openai_target(gateway: Gateway, fake: FakeProvider) -> None:
    message = claude_client(gateway).messages.create(
        model="gpt",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.content[0].text == "Hello from the fake provider."  # type: ignore[union-attr]
    (seen,) = fake.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.body["model"] == "gpt-4o"
    assert seen.body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_messages_stream_to_an_openai_target(gateway: Gateway) -> None:
    with claude_client(gateway).messages.stream(
        model="gpt", max_tokens=50, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        assert stream.get_final_text() == "Hello there!"
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"


def test_tool_round_trip_to_an_openai_target(gateway: Gateway, fake: FakeProvider) -> None:
    client = claude_client(gateway)
    question = {"role": "user", "content": "Weather in Paris?"}
    first = client.messages.create(
        model="gpt",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[question],  # type: ignore[list-item]
    )
    assert first.stop_reason == "tool_use"
    tool_use = next(block for block in first.content if block.type == "tool_use")
    assert tool_use.input == {"city": "Paris"}  # type: ignore[union-attr]
    second = client.messages.create(
        model="gpt",
        max_tokens=100,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[
            question,
            {
                "role": "assistant",
                "content": [b.model_dump(exclude_none=True) for b in first.content],
            },  # type: ignore[misc]
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": tool_use.id,  # type: ignore[union-attr]
                        "content": "18C and sunny",
                    }
                ],
            },
        ],
    )
    assert second.content[0].text == "Hello from the fake provider."  # type: ignore[union-attr]
    sent = fake.seen[-1].body
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["messages"][-1]["role"] == "tool"
    assert sent["messages"][-1]["tool_call_id"] == tool_use.id  # type: ignore[union-attr]


# --- OpenAI client, Anthropic upstream: translated --------------------------------------------


def test_openai_client_to_anthropic_with_tools_and_an_image(
    gateway: Gateway, fake: FakeProvider
) -> None:
    answer = openai_client(gateway).chat.completions.create(
        model="claude",
        max_tokens=200,
        temperature=0.3,
        stop=["END"],
        tools=[OPENAI_WEATHER_TOOL],  # type: ignore[list-item]
        messages=[
            {"role": "system", "content": "You are terse."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Where is this? And the weather there?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
        ],
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert call.function.arguments.replace(" ", "") == '{"city":"Paris"}'  # type: ignore[union-attr]
    (seen,) = fake.seen
    assert seen.path == "/v1/messages"
    sent = seen.body
    assert sent["model"] == "claude-3-5-sonnet-20241022"
    assert "You are terse." in str(sent["system"])
    assert sent["temperature"] == 0.3
    assert sent["stop_sequences"] == ["END"]
    assert sent["max_tokens"] == 200
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["tools"][0]["input_schema"] == WEATHER_TOOL["input_schema"]
    image = sent["messages"][0]["content"][1]
    assert image["type"] == "image"
    assert image["source"]["data"] == PNG


def test_openai_client_stream_from_anthropic(gateway: Gateway) -> None:
    chunks = list(
        openai_client(gateway).chat.completions.create(
            model="claude",
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Hello"}],
        )
    )
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == "Hello there"
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert any(c.usage is not None and c.usage.completion_tokens == 6 for c in chunks)


def test_openai_client_stream_tool_call_deltas_from_anthropic(
    gateway: Gateway, fake: FakeProvider
) -> None:
    chunks = list(
        openai_client(gateway).chat.completions.create(
            model="claude",
            max_tokens=50,
            stream=True,
            tools=[OPENAI_WEATHER_TOOL],  # type: ignore[list-item]
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Weather where this photo was taken?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    ],
                }
            ],
        )
    )
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert calls
    assert all(call.index == 0 for call in calls)
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert arguments.replace(" ", "") == '{"city":"Paris"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    image = fake.seen[-1].body["messages"][0]["content"][1]
    assert image["type"] == "image"
    assert image["source"]["data"] == PNG


def test_openai_client_sees_anthropic_overload_as_the_envelope(
    gateway: Gateway, fake: FakeProvider
) -> None:
    fake.on(
        "claude-3-5-sonnet-20241022",
        error_response(
            529,
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            {"retry-after": "12"},
        ),
    )
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client(gateway).chat.completions.create(
            model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 503
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "upstream_overloaded"
    assert body["provider"] == "anthropic"
    assert body["retry_after"] == 12
    assert len(fake.seen) == 1, "any-llm's own retries are off"


# --- embeddings ---------------------------------------------------------------------------------


def test_embeddings_pass_through(gateway: Gateway, fake: FakeProvider) -> None:
    async def embed(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "model": body["model"],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )

    fake.on("text-embedding-3-small", embed)
    result = openai_client(gateway).embeddings.create(
        model="openai:text-embedding-3-small", input="hello world"
    )
    assert result.data[0].embedding == [0.1, 0.2, 0.3]
    assert fake.seen[-1].path == "/v1/embeddings"
    assert fake.seen[-1].body["input"] == "hello world"
