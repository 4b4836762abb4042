"""The official openai SDK, pointed at a running gateway, against a fake provider."""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest

from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway, keep

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def client(gateway: Gateway, token: str = "unused") -> openai.OpenAI:
    return keep(openai.OpenAI(base_url=gateway.base_url, api_key=token, max_retries=0))


def test_non_stream_through_an_alias(gateway: Gateway, fake: FakeProvider) -> None:
    answer = client(gateway).chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="auto",
        temperature=0.25,
    )
    (tool_call,) = answer.choices[0].message.tool_calls or []
    assert tool_call.function.name == "get_weather"  # type: ignore[union-attr]
    assert answer.choices[0].finish_reason == "tool_calls"
    (seen,) = fake.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["Authorization"] == "Bearer sk-openai-test"
    assert seen.body["model"] == "gpt-4"
    assert seen.body["tools"] == TOOLS
    assert seen.body["tool_choice"] == "auto"
    assert seen.body["temperature"] == 0.25


def test_stream_with_tools_and_usage_passes_through(gateway: Gateway, fake: FakeProvider) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="smart",
        messages=[{"role": "user", "content": "hi"}],
        tools=TOOLS,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-runestone-target"] == "openai:gpt-4"
    assert raw.headers["x-request-id"].startswith("req_")
    chunks = list(raw.parse())
    arguments = "".join(
        call.function.arguments or ""
        for c in chunks
        if c.choices
        for call in c.choices[0].delta.tool_calls or []
        if call.function
    )
    assert arguments == '{"city": "Paris"}'
    (seen,) = fake.seen
    assert seen.body["stream"] is True
    assert seen.body["stream_options"] == {"include_usage": True}
    assert seen.body["tools"] == TOOLS


def test_unknown_fields_reach_the_provider_untouched(gateway: Gateway, fake: FakeProvider) -> None:
    sent = {
        "model": "fast",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                ],
            }
        ],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        "seed": 7,
    }
    future = {"a_field_from_the_future": {"nested": [1, 2.5, None, True]}}
    client(gateway).chat.completions.create(**sent, extra_body=future)  # type: ignore[call-overload]
    (seen,) = fake.seen
    assert seen.path == "/openai/v1/chat/completions"  # GROQ_BASE_URL is an origin
    assert seen.body == {**sent, **future, "model": "llama3-8b-8192"}


def test_body_is_forwarded_byte_for_byte_but_the_model(
    gateway: Gateway, fake: FakeProvider
) -> None:
    sent = (
        rb'{"model":"fast","messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00"}],'
        b'"logit_bias":{"50256":-100},"n":1,"temperature":0.7,"x":{"y":[]}}'
    )
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        content=sent,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200
    (seen,) = fake.seen
    expected = orjson.dumps({**orjson.loads(sent), "model": "llama3-8b-8192"})
    assert seen.raw == expected
    assert list(seen.body) == ["model", "messages", "logit_bias", "n", "temperature", "x"]


def test_provider_model_spec_with_slash(gateway: Gateway, fake: FakeProvider) -> None:
    client(gateway).chat.completions.create(
        model="openrouter:meta-llama/llama-3.1-8b-instruct:free",
        messages=[{"role": "user", "content": "hi"}],
    )
    (seen,) = fake.seen
    assert seen.path == "/api/v1/chat/completions"
    assert seen.body["model"] == "meta-llama/llama-3.1-8b-instruct:free"
    assert seen.headers["Authorization"] == "Bearer sk-or-test"


def test_sdk_raises_with_the_envelope(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(gateway).chat.completions.create(
            model="no-such-alias", messages=[{"role": "user", "content": "hi"}]
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"
    assert body["retryable"] is False
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_mock_provider_through_the_sdk(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    sdk = client(gateway)
    answer = sdk.chat.completions.create(
        model="mock:echo", messages=[{"role": "user", "content": "echo me back"}]
    )
    assert answer.choices[0].message.content == "echo me back"
    usage = sdk.chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert [c.usage.completion_tokens for c in usage if c.usage] == [3]
    stream = sdk.chat.completions.create(
        model="mock:lorem",
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        max_tokens=5,
    )
    words = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(words) == 5
