"""Guards through the real server: input checked and redacted before routing, answers
before they go out, streams as they are relayed (a match split across events or across
network reads at any byte is caught), in each wire format, tool calls both ways; blocks
in each protocol's envelope naming the guard, never the text; decisions counted."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from runestone.aliases import AliasFileError, parse_alias_file
from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway, chunk, completion, send_stream
from tests.test_telemetry import scrape, value

SECRET = "sk-proj-Zx81Qw27Lm45Np09Rt63Uv12"
EMAIL = "ada.lovelace@example.org"
PHONE = "+44 20 7946 0958"
CARD = "4111 1111 1111 1111"
GUARDS = (
    "defaults: {retries: 0}\n"
    "guards:\n"
    "  no-pii: {detect: [email, phone, card], stage: input, action: redact}\n"
    "  no-secrets: {detect: [secret], stage: output, action: block}\n"
    "  mask-out: {detect: [email, secret], stage: output, action: redact}\n"
    "  secrets-in: {detect: [secret], stage: input, action: block}\n"
    "  watch: {detect: [email], action: log}\n"
    "aliases:\n"
    "  safe: {targets: [openai:upstream], guards: [no-pii, no-secrets]}\n"
    "  masked: {targets: [openai:upstream], guards: [mask-out]}\n"
    "  strict: {targets: [openai:upstream], guards: [secrets-in]}\n"
    "  watched: {targets: [openai:upstream], guards: [watch]}\n"
    "  open: openai:upstream\n"
    "  safe-bytes: {targets: [openai:bytes], guards: [no-secrets]}\n"
    "  masked-bytes: {targets: [openai:bytes], guards: [mask-out]}\n"
)


class Upstream:
    """A provider that answers with ``text`` (whole, or in ``pieces`` when streamed) and
    remembers what it was sent."""

    def __init__(self, fake: FakeProvider) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.pieces: list[str] = ["Hello ", "there."]
        self.tool_arguments: list[str] | None = None
        fake.on("upstream", self._answer)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        self.bodies.append(body)
        model = body["model"]
        if not body.get("stream"):
            answer = completion(model, self.text)
            if self.tool_arguments is not None:
                message = answer["choices"][0]["message"]
                message["tool_calls"] = [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "send", "arguments": "".join(self.tool_arguments)},
                    }
                ]
            return web.json_response(answer)
        events = [chunk(model, {"role": "assistant", "content": ""})]
        events += [chunk(model, {"content": piece}) for piece in self.pieces]
        if self.tool_arguments is not None:
            start = {"index": 0, "id": "call_1", "type": "function"}
            events.append(
                chunk(
                    model,
                    {"tool_calls": [{**start, "function": {"name": "send", "arguments": ""}}]},
                )
            )
            events += [
                chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                for part in self.tool_arguments
            ]
        events.append(chunk(model, {}, "stop"))
        usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        tail = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage}
        events.append(b"data: " + orjson.dumps(tail) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return await send_stream(request, events)


@pytest.fixture
def upstream(fake: FakeProvider) -> Upstream:
    return Upstream(fake)


@pytest.fixture
def gateway(make_gateway: MakeGateway) -> Gateway:
    return make_gateway(GUARDS)


def chat(gateway: Gateway, model: str, content: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=30)


def streamed_text(response: httpx.Response) -> tuple[str, list[dict[str, Any]]]:
    """The content a chat stream carried, and its events."""
    events = []
    for line in response.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(orjson.loads(line[6:]))
    text = "".join(
        choice["delta"].get("content") or ""
        for event in events
        for choice in event.get("choices", ())
    )
    return text, events


# --- The alias file ------------------------------------------------------------------------


def test_the_issue_example_parses_and_names_are_checked() -> None:
    table = parse_alias_file(
        b"guards:\n"
        b"  no-pii: {detect: [email, phone, card], stage: input, action: redact}\n"
        b"  no-secrets: {detect: [secret], stage: output, action: block}\n"
        b'  house-rules: {webhook: {url: "http://127.0.0.1:9000/check", timeout: 2s,'
        b" on_error: open}, stage: both}\n"
        b"aliases:\n"
        b"  safe: {targets: [openai:gpt-4o-mini], guards: [no-pii, no-secrets]}\n"
        b"keys:\n"
        b'  team-x: {hash: "sha256:' + b"a" * 64 + b'", guards: [house-rules]}\n',
        "aliases.yaml",
    )
    assert table.aliases["safe"].guards == ("no-pii", "no-secrets")
    rules = table.guards["house-rules"]
    assert rules.webhook is not None and rules.webhook.on_error == "open"
    assert rules.webhook.timeout == 2.0 and rules.stage == "both" and rules.action == "block"
    (key,) = table.access.keys.values()
    assert key.guards == ("house-rules",)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "guards: {g: {detect: [email]}}\naliases: {a: {targets: [openai:x], guards: [nope]}}",
            "unknown guard 'nope'",
        ),
        ("guards: {g: {detect: [ssn]}}\naliases: {}", "detect is a list of"),
        ("guards: {g: {patterns: {x: '(unclosed'}}}\naliases: {}", "not a regular expression"),
        ("guards: {g: {patterns: {x: 'a*'}}}\naliases: {}", "matches the empty string"),
        (
            "guards: {g: {webhook: {url: 'http://x'}, action: redact}}\naliases: {}",
            "action is block or log",
        ),
        (
            "guards: {g: {detect: [email], webhook: {url: 'http://x'}}}\naliases: {}",
            "exactly one of",
        ),
        ("guards: {g: {detect: [email], stage: sideways}}\naliases: {}", "stage is one of"),
        (
            "guards: {g: {detect: [email]}}\nteams: {t: {guards: [h]}}\naliases: {}",
            "unknown guard 'h'",
        ),
    ],
)
def test_a_wrong_guard_is_a_problem_with_its_line(text: str, problem: str) -> None:
    with pytest.raises(AliasFileError) as caught:
        parse_alias_file(text.encode(), "aliases.yaml")
    assert problem in str(caught.value)
    assert all(p.line > 0 for p in caught.value.problems)


# --- Input -------------------------------------------------------------------------------


def test_input_is_redacted_before_it_reaches_the_provider(
    gateway: Gateway, upstream: Upstream
) -> None:
    content = f"Write to {EMAIL} or call {PHONE}; card {CARD}. Thanks!"
    answer = chat(gateway, "safe", content)
    assert answer.status_code == 200, answer.text
    sent = upstream.bodies[-1]["messages"][0]["content"]
    assert sent == (
        "Write to [REDACTED:email] or call [REDACTED:phone]; card [REDACTED:card]. Thanks!"
    )
    # An alias without guards sends the request as it came.
    chat(gateway, "open", content)
    assert upstream.bodies[-1]["messages"][0]["content"] == content


def test_tool_calls_and_their_results_are_guarded_on_the_way_in(
    gateway: Gateway, upstream: Upstream
) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": f"Owner: {EMAIL}"}]},
        {"role": "user", "content": "Find the owner."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": f'{{"email": "{EMAIL}"}}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_9", "content": f"phone: {PHONE}"},
    ]
    body = {"model": "safe", "messages": messages}
    answer = httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    sent = upstream.bodies[-1]["messages"]
    assert sent[0]["content"][0]["text"] == "Owner: [REDACTED:email]"
    assert sent[2]["tool_calls"][0]["function"]["arguments"] == '{"email": "[REDACTED:email]"}'
    assert sent[2]["tool_calls"][0]["function"]["name"] == "lookup"  # structure untouched
    assert sent[3]["content"] == "phone: [REDACTED:phone]"
    assert sent[3]["tool_call_id"] == "call_9"
    assert EMAIL not in orjson.dumps(sent).decode()


def test_a_blocked_input_is_a_400_naming_the_guard_not_the_text(
    gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = chat(gateway, "strict", f"my key is {SECRET}, keep it safe")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "content_blocked" and error["retryable"] is False
    assert "secrets-in" in error["message"] and SECRET not in answer.text
    assert "sk-proj" not in answer.text
    assert upstream.bodies == []  # never sent
    assert SECRET not in caplog.text and "sk-proj" not in caplog.text
    assert "secrets-in" in caplog.text  # the decision is logged, by guard
    metrics = scrape(gateway.url)
    assert (
        value(
            metrics,
            "runestone_guard_decisions_total",
            guard="secrets-in",
            stage="input",
            decision="block",
        )
        == 1
    )
    assert chat(gateway, "strict", "nothing to see").status_code == 200
    assert (
        value(
            scrape(gateway.url),
            "runestone_guard_decisions_total",
            guard="secrets-in",
            decision="pass",
        )
        == 1
    )


# --- Whole answers -----------------------------------------------------------------------


def test_a_whole_answer_is_redacted_tool_calls_included(
    gateway: Gateway, upstream: Upstream
) -> None:
    upstream.pieces = [f"Reach me at {EMAIL}."]
    upstream.tool_arguments = [f'{{"to": "{EMAIL}", "key": "{SECRET}"}}']
    answer = chat(gateway, "masked", "hi")
    assert answer.status_code == 200, answer.text
    message = answer.json()["choices"][0]["message"]
    assert message["content"] == "Reach me at [REDACTED:email]."
    arguments = message["tool_calls"][0]["function"]["arguments"]
    assert arguments == '{"to": "[REDACTED:email]", "key": "[REDACTED:secret]"}'
    assert answer.json()["usage"]["total_tokens"] == 12 or "usage" in answer.json()


def test_a_blocked_answer_is_an_error_and_is_still_paid_for(
    gateway: Gateway, upstream: Upstream
) -> None:
    upstream.pieces = [f"The key is {SECRET}."]
    answer = chat(gateway, "safe", "hi")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "content_blocked"
    assert "no-secrets" in answer.json()["error"]["message"] and SECRET not in answer.text
    metrics = scrape(gateway.url)
    assert value(metrics, "runestone_tokens_total", direction="output") > 0  # booked


# --- Streams -----------------------------------------------------------------------------


@pytest.mark.parametrize("split", range(len(SECRET) + 1))
def test_a_secret_split_across_two_events_is_caught_at_every_point(
    gateway: Gateway, upstream: Upstream, split: int
) -> None:
    upstream.pieces = ["My key is ", SECRET[:split], SECRET[split:] + " thanks"]
    blocked = chat(gateway, "safe", "hi", stream=True)
    assert blocked.status_code == 200
    text, events = streamed_text(blocked)
    assert text == "My key is "  # nothing of the secret went out
    assert events[-1]["error"]["code"] == "content_blocked"
    assert "no-secrets" in events[-1]["error"]["message"]
    assert "data: [DONE]" not in blocked.text  # not presented as a complete answer
    masked = chat(gateway, "masked", "hi", stream=True)
    text, _ = streamed_text(masked)
    assert text == "My key is [REDACTED:secret] thanks"
    assert masked.text.rstrip().endswith("data: [DONE]")


def _split_stream() -> bytes:
    events = [chunk("bytes", {"role": "assistant", "content": ""})]
    events += [chunk("bytes", {"content": p}) for p in ("My key is ", SECRET[:9], SECRET[9:])]
    events += [chunk("bytes", {"content": " thanks"}), chunk("bytes", {}, "stop")]
    return b"".join(events) + b"data: [DONE]\n\n"


SPLIT_STREAM = _split_stream()


async def _cut_at(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """The stream in two network writes, cut at the byte the request names."""
    at = int(body["messages"][-1]["content"])
    pieces = [SPLIT_STREAM[:at], SPLIT_STREAM[at:]]
    return await send_stream(request, pieces, delay=0.003)


def test_a_stream_cut_at_every_byte_never_lets_the_secret_through(
    gateway: Gateway, fake: FakeProvider
) -> None:
    fake.on("bytes", _cut_at)
    failures: list[str] = []

    async def one(client: httpx.AsyncClient, model: str, at: int) -> None:
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": str(at)}]}
        answer = await client.post(f"{gateway.base_url}/chat/completions", json=body)
        text, events = streamed_text(answer)
        if model == "safe-bytes":
            ok = (
                text == "My key is "
                and events[-1].get("error", {}).get("code") == "content_blocked"
            )
        else:
            ok = text == "My key is [REDACTED:secret] thanks" and "[DONE]" in answer.text
        if not ok:
            failures.append(f"{model} cut at {at}: {text!r}")

    async def every_byte() -> None:
        gate = asyncio.Semaphore(16)
        async with httpx.AsyncClient(timeout=30) as client:

            async def bounded(model: str, at: int) -> None:
                async with gate:
                    await one(client, model, at)

            await asyncio.gather(
                *(
                    bounded(model, at)
                    for at in range(1, len(SPLIT_STREAM))
                    for model in ("safe-bytes", "masked-bytes")
                )
            )

    asyncio.run(every_byte())
    assert not failures, failures[:5]
