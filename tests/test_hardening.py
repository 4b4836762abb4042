"""What new users, real clients and an attacker hit (the hardening issue), item by item.

Each test drives the real app against the fake provider on loopback, with the official
SDKs as clients where a client is involved.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from aiohttp import web

from runestone.aliases import AliasFileError, parse_alias_file
from runestone.aliases._watch import watch_file
from tests.conftest import MakeGateway
from tests.servers import (
    FakeProvider,
    Gateway,
    ServerThread,
    chunk,
    error_response,
    keep,
    send_stream,
)
from tests.test_telemetry import scrape, value

HI = [{"role": "user", "content": "hi"}]


async def hang(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    await asyncio.sleep(60)
    raise AssertionError("unreachable")


def chat(gateway: Gateway, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": HI, **extra}
    return httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=30)


def request_logs(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        json.loads(r.getMessage())
        for r in caplog.records
        if r.name == "runestone.requests" and r.getMessage().startswith("{")
    ]


# --- 1. attempt_timeout ---------------------------------------------------------------------


ATTEMPTS = """
aliases:
  patient:
    timeout: 10
    attempt_timeout: 0.5
    retries: 0
    targets: [openai:hang, openai:ok]
  streamy:
    timeout: 10
    attempt_timeout: 0.5
    retries: 0
    targets: [openai:hang, openai:ok]
"""


def test_a_hung_non_stream_attempt_fails_over(make_gateway: MakeGateway, fake: FakeProvider):
    fake.on("hang", hang)
    gateway = make_gateway(ATTEMPTS)
    started = time.monotonic()
    response = chat(gateway, "patient")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.headers["x-runestone-target"] == "openai:ok"
    assert response.headers["x-runestone-attempts"] == "2"
    assert 0.5 <= elapsed < 3


def test_attempt_timeout_bounds_a_stream_until_first_content(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    fake.on("hang", hang)
    gateway = make_gateway(ATTEMPTS)
    started = time.monotonic()
    response = chat(gateway, "streamy", stream=True)
    assert response.status_code == 200
    assert response.content.endswith(b"data: [DONE]\n\n")
    assert time.monotonic() - started < 3


def test_attempt_timeout_is_validated() -> None:
    with pytest.raises(AliasFileError, match="attempt_timeout must be a positive number"):
        parse_alias_file(b"aliases:\n  a: {provider: openai, model: m, attempt_timeout: 0}\n", "f")


# --- 2 and 3. failed requests report their attempts, target and the gateway's own time ---------


FLAKY = """
aliases:
  flaky: {targets: [openai:down], retries: 2, timeout: 10}
  stuck: {targets: [openai:hang], retries: 0, timeout: 1}
"""


def test_a_failed_request_reports_every_attempt(
    make_gateway: MakeGateway, fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runestone.requests")
    fake.on("down", error_response(503, {"error": {"message": "busy"}}, {"retry-after": "0"}))
    gateway = make_gateway(FLAKY, log_json=True)
    response = chat(gateway, "flaky")
    assert response.status_code == 503
    assert response.headers["x-runestone-attempts"] == "3"
    assert response.headers["x-runestone-target"] == "openai:down"
    (record,) = [r for r in request_logs(caplog) if r["alias"] == "flaky"]
    assert record["attempts"] == 3
    assert record["target"] == "openai:down"
    assert value(scrape(gateway.url), "runestone_extra_attempts_total", alias="flaky") == 2


def test_overhead_of_a_timed_out_request_excludes_the_wait(
    make_gateway: MakeGateway, fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runestone.requests")
    fake.on("hang", hang)
    gateway = make_gateway(FLAKY, log_json=True)
    response = chat(gateway, "stuck")
    assert response.status_code == 504
    (record,) = [r for r in request_logs(caplog) if r["alias"] == "stuck"]
    assert record["duration_ms"] >= 1000
    assert record["overhead_ms"] < 200  # the second of waiting was the upstream's


# --- 4. a client that leaves -----------------------------------------------------------------


def test_a_client_that_leaves_is_not_an_upstream_failure(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    async def endless(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        events = [chunk("m", {"content": f"w{i}"}) for i in range(500)]
        return await send_stream(request, events, delay=0.01)

    fake.on("gpt-4", endless)
    gateway = make_gateway(breaker_failures=1)
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        json={"model": "smart", "stream": True, "messages": HI},
    ) as response:
        next(response.iter_raw())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        metrics = scrape(gateway.url)
        if value(metrics, "runestone_stream_outcomes_total", outcome="client_cancelled"):
            break
        time.sleep(0.05)
    assert value(metrics, "runestone_requests_total", code="client_disconnected") == 1
    assert value(metrics, "runestone_requests_total", code="upstream_stream_interrupted") == 0
    assert value(metrics, "runestone_in_flight_streams") == 0
    ready = httpx.get(f"{gateway.url}/health/ready").json()
    assert all(b["state"] == "closed" for b in ready["breakers"])  # one failure would open it
    del fake.behaviours["gpt-4"]
    assert chat(gateway, "smart").status_code == 200


# --- 7. the watcher and the alias file's neighbours ------------------------------------------


def test_the_watcher_ignores_other_files_in_the_directory(tmp_path: Path) -> None:
    alias_file = tmp_path / "aliases.yaml"
    alias_file.write_text("aliases: {}\n")
    calls: list[float] = []

    async def scenario() -> None:
        task = asyncio.create_task(
            watch_file(alias_file, lambda: calls.append(time.monotonic()), mode="events")
        )
        await asyncio.sleep(0.3)
        log = tmp_path / "gateway.log"
        for i in range(20):
            with log.open("a") as handle:
                handle.write(f"line {i}\n")
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.8)
        quiet = len(calls)
        alias_file.write_text("aliases: {a: mock:echo}\n")
        await asyncio.sleep(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert quiet == 0
        assert len(calls) >= 1

    asyncio.run(scenario())


# --- 9 and 10. Claude Code's fields on a translated target --------------------------------------


CLAUDE_ON_OPENAI = """
defaults: {retries: 0}
aliases:
  gpt: openai:gpt-4o
"""


def claude(gateway: Gateway) -> anthropic.Anthropic:
    return keep(anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0))


def test_claude_code_fields_reach_an_openai_target_translated(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    gateway = make_gateway(CLAUDE_ON_OPENAI)
    message = claude(gateway).messages.create(
        model="gpt",
        max_tokens=100,
        messages=[{"role": "user", "content": "Hello"}],
        metadata={"user_id": "someone"},
        extra_body={
            "output_config": {"effort": "high"},
            "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
            "thinking": {"type": "adaptive"},
        },
    )
    assert message.content[0].text == "Hello from the fake provider."  # type: ignore[union-attr]
    (seen,) = fake.seen
    assert seen.body["reasoning_effort"] == "high"
    assert "context_management" not in seen.body
    assert "metadata" not in seen.body


def test_a_field_that_would_change_the_answer_is_refused_by_name(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    gateway = make_gateway(CLAUDE_ON_OPENAI)
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude(gateway).messages.create(
            model="gpt",
            max_tokens=100,
            messages=[{"role": "user", "content": "Hello"}],
            top_k=5,
        )
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["code"] == "invalid_request"
    assert "'top_k'" in error["message"]
    assert fake.seen == []  # nothing was sent


def test_a_request_that_cannot_be_translated_never_opens_a_breaker(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    gateway = make_gateway(CLAUDE_ON_OPENAI, breaker_failures=2)
    bad = {"model": "gpt", "max_tokens": 10, "messages": HI, "tools": "x"}
    for _ in range(3):
        response = httpx.post(f"{gateway.url}/v1/messages", json=bad)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_request"
    good = claude(gateway).messages.create(model="gpt", max_tokens=10, messages=HI)
    assert good.content[0].text == "Hello from the fake provider."  # type: ignore[union-attr]


# --- 11. the mock speaks every operation ------------------------------------------------------


def test_the_mock_answers_the_anthropic_sdk(make_gateway: MakeGateway) -> None:
    client = claude(make_gateway())
    message = client.messages.create(
        model="mock:echo", max_tokens=50, messages=[{"role": "user", "content": "Hello there"}]
    )
    assert message.content[0].text == "Hello there"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    with client.messages.stream(
        model="mock:lorem", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        assert stream.get_final_text() == "lorem ipsum dolor sit amet"
    count = client.messages.count_tokens(
        model="mock:echo", messages=[{"role": "user", "content": "one two three"}]
    )
    assert count.input_tokens == 3


def test_the_mock_calls_a_tool_and_reads_its_result(make_gateway: MakeGateway) -> None:
    client = claude(make_gateway())
    tool = {
        "name": "get_weather",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    ask = [{"role": "user", "content": "Paris"}]
    first = client.messages.create(model="mock:tool", max_tokens=50, messages=ask, tools=[tool])
    assert first.stop_reason == "tool_use"
    use = first.content[-1]
    assert use.type == "tool_use"
    assert use.input == {"city": "Paris"}  # type: ignore[union-attr]
    with client.messages.stream(
        model="mock:tool", max_tokens=50, messages=ask, tools=[tool]
    ) as stream:
        streamed = stream.get_final_message()
    assert streamed.content[-1].input == {"city": "Paris"}  # type: ignore[union-attr]
    second = client.messages.create(
        model="mock:tool",
        max_tokens=50,
        tools=[tool],
        messages=[
            *ask,
            {"role": "assistant", "content": [use.model_dump()]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],  # type: ignore[union-attr]
            },
        ],
    )
    assert second.content[0].text == "The tool answered: sunny"  # type: ignore[union-attr]


def test_the_mock_makes_deterministic_embeddings(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    client = keep(openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0))
    first = client.embeddings.create(model="mock:echo", input=["a cat", "a dog"])
    again = client.embeddings.create(model="mock:echo", input="a cat")
    assert len(first.data) == 2
    assert len(first.data[0].embedding) == 16
    assert first.data[0].embedding == again.data[0].embedding
    assert first.data[0].embedding != first.data[1].embedding
    sized = client.embeddings.create(model="mock:echo", input="x", dimensions=8)
    assert len(sized.data[0].embedding) == 8


def test_the_mock_calls_a_tool_in_chat_completions(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    client = keep(openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0))
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}},
                "required": ["q"],
            },
        },
    }
    answer = client.chat.completions.create(
        model="mock:tool", messages=[{"role": "user", "content": "cats"}], tools=[tool]
    )
    (call,) = answer.choices[0].message.tool_calls or []
    assert call.function.name == "lookup"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"q": "cats"}  # type: ignore[union-attr]
    assert answer.choices[0].finish_reason == "tool_calls"


# --- 12. pattern aliases and hints -------------------------------------------------------------


PATTERNS = """
aliases:
  claude-special: openai:special
  "claude-*": "openai:{model}"
  "claude-opus-*": openai:never-reached
  "gpt-*": {provider: openai, model: "{model}", retries: 0}
"""


def test_pattern_aliases_route_client_model_names(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    gateway = make_gateway(PATTERNS)
    for requested, sent in [
        ("claude-opus-4-8[1m]", "claude-opus-4-8[1m]"),  # the first matching pattern wins
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5-20251001"),
        ("claude-special", "special"),  # an exact name before any pattern
        ("gpt-5.1-codex", "gpt-5.1-codex"),
    ]:
        response = chat(gateway, requested)
        assert response.status_code == 200, response.text
        assert fake.seen[-1].body["model"] == sent
    metrics = scrape(gateway.url)
    assert value(metrics, "runestone_requests_total", alias="claude-*") == 2


def test_model_placeholder_only_in_patterns() -> None:
    with pytest.raises(AliasFileError, match=r"only a pattern alias .* can use \{model\}"):
        parse_alias_file(b"aliases:\n  a: openai:{model}\n", "f")


def test_a_bare_model_name_gets_a_provider_hint(make_gateway: MakeGateway) -> None:
    response = chat(make_gateway(), "gpt-4o")
    assert response.status_code == 404
    assert "Did you mean 'openai:gpt-4o'" in response.json()["error"]["message"]


# --- 13. models retrieve, and Anthropic's model shapes --------------------------------------------


def test_models_retrieve_and_anthropic_model_pages(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(PATTERNS)
    client = keep(openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0))
    assert client.models.retrieve("mock:echo").owned_by == "mock"
    assert client.models.retrieve("claude-special").id == "claude-special"
    assert client.models.retrieve("claude-sonnet-5").owned_by == "runestone"  # a pattern
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nothing-like-it")
    page = claude(gateway).models.list()
    ids = [model.id for model in page.data]
    assert "claude-special" in ids
    first = page.data[0]
    assert first.type == "model"
    assert first.display_name == first.id
    assert first.created_at.year == 1970
    raw = httpx.get(f"{gateway.base_url}/models", headers={"anthropic-version": "2023-06-01"})
    body = raw.json()
    assert body["has_more"] is False
    assert body["first_id"] == ids[0]
    assert body["last_id"] == ids[-1]
    one = claude(gateway).models.retrieve("mock:echo")
    assert one.id == "mock:echo"
    with pytest.raises(anthropic.NotFoundError):
        claude(gateway).models.retrieve("nothing-like-it")


# --- 14. a missing provider SDK names its extra --------------------------------------------


def test_a_missing_provider_sdk_says_what_to_install(make_gateway: MakeGateway) -> None:
    pytest.importorskip("any_llm")
    try:
        import google.genai  # noqa: F401

        pytest.skip("the gemini SDK is installed here")
    except ImportError:
        pass
    gateway = make_gateway(env={"GEMINI_API_KEY": "g-test"})
    response = chat(gateway, "gemini:gemini-2.0-flash")
    error = response.json()["error"]
    assert response.status_code == 500
    assert error["code"] == "provider_not_configured"
    assert "pip install 'any-llm-sdk[gemini]'" in error["message"]


# --- 15. what reaches an Anthropic upstream ---------------------------------------------


def test_the_query_string_and_user_agent_reach_anthropic(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    gateway = make_gateway(
        "aliases:\n  claude: anthropic:claude-3-5-sonnet-20241022\n",
        env={"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url},
    )
    response = httpx.post(
        f"{gateway.url}/v1/messages?beta=true",
        headers={"user-agent": "claude-cli/2.0.1 (external, cli)"},
        json={"model": "claude", "max_tokens": 10, "messages": HI},
    )
    assert response.status_code == 200
    (seen,) = fake.seen
    assert seen.query == "beta=true"
    assert seen.headers["user-agent"].startswith("claude-cli/2.0.1 (external, cli) runestone/")


def test_cookies_an_upstream_sets_are_never_sent_for_anyone(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    """Providers set cookies (a CDN's, say); one process serves every tenant, and a shared
    cookie jar would carry one client's cookies on every other's requests."""

    async def sets_a_cookie(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.json_response(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-4",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )
        response.set_cookie("__cf_bm", "tenant-a", path="/")
        return response

    fake.on("gpt-4", sets_a_cookie)
    # By host name: aiohttp's cookie jar ignores cookies from IP addresses.
    upstream = fake.url.replace("127.0.0.1", "localhost")
    gateway = make_gateway(
        "aliases:\n  smart: openai:gpt-4\n", env={"OPENAI_BASE_URL": f"{upstream}/v1"}
    )
    for _ in range(2):
        response = httpx.post(
            f"{gateway.base_url}/chat/completions", json={"model": "smart", "messages": HI}
        )
        assert response.status_code == 200
        assert "set-cookie" not in response.headers
    assert [seen.headers.get("cookie") for seen in fake.seen] == [None, None]


# --- 16. route_stream yields one event per item ---------------------------------------------


def test_route_stream_yields_one_event_per_item(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import runestone

    aliases = tmp_path / "aliases.yaml"
    aliases.write_text("aliases:\n  words: mock:lorem\n")
    monkeypatch.setenv("RUNESTONE_ALIASES_PATH", str(aliases))
    monkeypatch.delenv("RUNESTONE_GATEWAY_MODE", raising=False)

    async def collect() -> list[bytes]:
        try:
            return [
                event
                async for event in runestone.route_stream(
                    {"model": "words", "max_tokens": 30, "messages": HI}, raw=True
                )
            ]
        finally:
            await runestone.aclose()

    events = asyncio.run(collect())
    assert len(events) == 30 + 3  # role, 30 words, finish, [DONE]
    for event in events:
        assert event.endswith(b"\n\n")
        assert event.count(b"\n\n") == 1
    assert events[-1] == b"data: [DONE]\n\n"


# --- the graceful drain, in-process -------------------------------------------------------------


def test_ready_turns_503_as_soon_as_draining_starts(
    make_gateway: MakeGateway, server_thread: ServerThread
) -> None:
    gateway = make_gateway()
    assert httpx.get(f"{gateway.url}/health/ready").status_code == 200

    async def drain() -> None:
        gateway.app.gateway.begin_drain(30)

    server_thread.run(drain())
    ready = httpx.get(f"{gateway.url}/health/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "draining"
