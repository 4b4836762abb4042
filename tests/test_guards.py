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
from tests.servers import FakeProvider, Gateway, chunk, completion, free_socket, send_stream
from tests.test_admin_api import within
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
    "  masked-chat: {targets: [together:upstream], guards: [mask-out]}\n"
    "  safe-chat: {targets: [together:upstream], guards: [no-pii, no-secrets]}\n"
    "  safe-bytes: {targets: [openai:bytes], guards: [no-secrets]}\n"
    "  cached-masked: {targets: [openai:upstream], guards: [mask-out], cache: {ttl: 10m}}\n"
    "  cached-safe: {targets: [openai:upstream], guards: [no-secrets], cache: {ttl: 10m}}\n"
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
def gateway(make_gateway: MakeGateway, fake: FakeProvider) -> Gateway:
    # together: a provider of chat completions only (Responses reach it translated).
    env = {"TOGETHER_BASE_URL": f"{fake.url}/v1", "TOGETHER_API_KEY": "together-test"}
    return make_gateway(GUARDS, env=env)


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
    assert answer.json()["usage"] == completion("upstream")["usage"]  # the rest as it came


def test_a_blocked_answer_is_an_error_and_is_still_paid_for(
    gateway: Gateway, upstream: Upstream
) -> None:
    upstream.pieces = [f"The key is {SECRET}."]
    answer = chat(gateway, "safe", "hi")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "content_blocked"
    assert "no-secrets" in answer.json()["error"]["message"] and SECRET not in answer.text
    metrics = scrape(gateway.url)
    assert value(metrics, "runestone_tokens_total", direction="output") == 7  # booked
    assert value(metrics, "runestone_requests_total", status="400", code="content_blocked") == 1


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


# --- Anthropic Messages and Responses ---------------------------------------------------


def messages(gateway: Gateway, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/messages",
        json={"max_tokens": 100, **body},
        headers={"anthropic-version": "2023-06-01"},
        timeout=30,
    )


def sse_payloads(response: httpx.Response) -> list[dict[str, Any]]:
    return [
        orjson.loads(line[6:])
        for line in response.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def test_a_messages_request_is_guarded_tool_use_and_results_included(
    gateway: Gateway, upstream: Upstream
) -> None:
    body = {
        "model": "safe",
        "system": f"The owner is {EMAIL}.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": f"Call {PHONE}."}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "tu_1", "name": "dial", "input": {"to": PHONE}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "tu_1", "content": f"mail {EMAIL}"}
                ],
            },
        ],
    }
    answer = messages(gateway, body)
    assert answer.status_code == 200, answer.text
    sent = orjson.dumps(upstream.bodies[-1]).decode()
    assert EMAIL not in sent and PHONE not in sent
    assert sent.count("[REDACTED:email]") == 2 and sent.count("[REDACTED:phone]") == 2


def test_a_messages_stream_is_redacted_and_blocked_in_its_own_events(
    gateway: Gateway, upstream: Upstream
) -> None:
    upstream.pieces = ["Mail ", EMAIL[:6], EMAIL[6:], " now"]
    body = {"model": "masked", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    answer = messages(gateway, body)
    text = "".join(
        p["delta"].get("text", "")
        for p in sse_payloads(answer)
        if p.get("type") == "content_block_delta"
    )
    assert text == "Mail [REDACTED:email] now"
    assert "event: message_stop" in answer.text
    upstream.pieces = ["Key: ", SECRET[:5], SECRET[5:]]
    answer = messages(gateway, {**body, "model": "safe"})
    payloads = sse_payloads(answer)
    assert payloads[-1]["type"] == "error"
    assert payloads[-1]["error"]["type"] and "no-secrets" in payloads[-1]["error"]["message"]
    assert "sk-" not in answer.text and "message_stop" not in answer.text


def test_a_blocked_messages_request_is_a_400_in_anthropic_shape(
    gateway: Gateway, upstream: Upstream
) -> None:
    answer = messages(
        gateway,
        {"model": "strict", "messages": [{"role": "user", "content": f"use {SECRET}"}]},
    )
    assert answer.status_code == 400
    assert answer.json()["type"] == "error"
    assert "secrets-in" in answer.json()["error"]["message"] and SECRET not in answer.text


def responses(gateway: Gateway, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/responses", json=body, timeout=30)


def test_a_responses_request_and_its_tool_outputs_are_guarded(
    gateway: Gateway, upstream: Upstream
) -> None:
    body = {
        "model": "safe",
        "store": False,
        "instructions": f"Answer {EMAIL}.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": f"Call {PHONE}"}]},
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "dial",
                "arguments": f'{{"to": "{PHONE}"}}',
            },
            {"type": "function_call_output", "call_id": "c1", "output": f"busy; mail {EMAIL}"},
        ],
    }
    answer = responses(gateway, body)
    assert answer.status_code == 200, answer.text
    sent = orjson.dumps(upstream.bodies[-1]).decode()
    assert EMAIL not in sent and PHONE not in sent
    assert sent.count("[REDACTED:email]") == 2 and sent.count("[REDACTED:phone]") == 2


def test_a_responses_stream_done_events_and_stored_response_hold_only_what_was_sent(
    gateway: Gateway, upstream: Upstream
) -> None:
    upstream.pieces = ["Write ", EMAIL[:10], EMAIL[10:], " today"]
    answer = responses(gateway, {"model": "masked-chat", "input": "hi", "stream": True})
    assert answer.status_code == 200
    payloads = sse_payloads(answer)
    deltas = "".join(p["delta"] for p in payloads if p["type"] == "response.output_text.delta")
    assert deltas == "Write [REDACTED:email] today"
    (done,) = [p for p in payloads if p["type"] == "response.output_text.done"]
    assert done["text"] == deltas
    (completed,) = [p for p in payloads if p["type"] == "response.completed"]
    output = completed["response"]["output"][0]["content"][0]["text"]
    assert output == deltas
    numbers = [p["sequence_number"] for p in payloads]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # in order
    assert EMAIL not in answer.text
    stored = httpx.get(f"{gateway.base_url}/responses/{completed['response']['id']}", timeout=30)
    assert stored.status_code == 200, stored.text
    assert EMAIL not in stored.text and "[REDACTED:email]" in stored.text


def test_a_blocked_responses_stream_is_failed_in_band_and_not_stored(
    gateway: Gateway, upstream: Upstream
) -> None:
    upstream.pieces = ["Key ", SECRET]
    answer = responses(gateway, {"model": "safe-chat", "input": "hi", "stream": True})
    payloads = sse_payloads(answer)
    assert "sk-" not in answer.text
    assert payloads[-1]["type"] in ("error", "response.failed")
    assert "no-secrets" in answer.text
    assert not any(p["type"] == "response.completed" for p in payloads)
    numbers = [p["sequence_number"] for p in payloads]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))


# --- Webhook and moderation guards --------------------------------------------------------


class Hook:
    """A webhook guard's service: denies "forbidden", replaces "replace-me", is slow on
    "slow", allows the rest; remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/check", self._check)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = free_socket()
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _check(self, request: web.Request) -> web.Response:
        asked = await request.json()
        self.asked.append(asked)
        texts: list[str] = asked["texts"]
        if any("slow" in t for t in texts):
            await asyncio.sleep(2)
        if any("forbidden" in t for t in texts):
            return web.json_response({"action": "deny", "reason": "house rules"})
        if any("replace-me" in t for t in texts):
            replaced = [t.replace("replace-me", "[house]") for t in texts]
            return web.json_response({"action": "replace", "texts": replaced})
        return web.json_response({"action": "allow"})


async def _moderations(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    results = [
        {"flagged": "violent" in text, "categories": {"violence": "violent" in text}}
        for text in body["input"]
    ]
    return web.json_response({"id": "modr-1", "model": body["model"], "results": results})


@pytest.fixture
def hook(server_thread: Any) -> Any:
    service = Hook()
    server_thread.run(service.start())
    yield service
    server_thread.run(service.stop())


@pytest.fixture
def remote_gateway(
    make_gateway: MakeGateway, fake: FakeProvider, hook: Hook, upstream: Upstream
) -> Gateway:
    fake.on("omni-moderation-latest", _moderations)
    fake.on("broken-moderation", lambda request, body: _broken(request))
    url = f"http://127.0.0.1:{hook.port}/check"
    return make_gateway(
        "defaults: {retries: 0}\n"
        "guards:\n"
        f"  house: {{webhook: {{url: '{url}', timeout: 500ms}}, segment: 50}}\n"
        f"  house-open: {{webhook: {{url: '{url}', timeout: 200ms, on_error: open}}}}\n"
        "  moderated: {moderation: {target: openai:omni-moderation-latest}, stage: input}\n"
        "  moderated-broken: {moderation: {target: openai:broken-moderation}, stage: input}\n"
        "  moderated-log: {moderation: {target: openai:omni-moderation-latest,"
        " categories: [violence]}, stage: input, action: log}\n"
        "aliases:\n"
        "  hooked: {targets: [openai:upstream], guards: [house]}\n"
        "  hooked-open: {targets: [openai:upstream], guards: [house-open]}\n"
        "  moderated: {targets: [openai:upstream], guards: [moderated]}\n"
        "  moderated-broken: {targets: [openai:upstream], guards: [moderated-broken]}\n"
        "  moderated-log: {targets: [openai:upstream], guards: [moderated-log]}\n"
    )


async def _broken(request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": {"message": "down"}}, status=500)


def test_a_webhook_allows_denies_and_replaces_with_the_context_it_needs(
    remote_gateway: Gateway, hook: Hook, upstream: Upstream
) -> None:
    allowed = chat(remote_gateway, "hooked", "a fine question")
    assert allowed.status_code == 200
    asked = hook.asked[0]
    assert asked["guard"] == "house" and asked["stage"] == "input"
    assert asked["texts"] == ["a fine question"] and asked["model"] == "hooked"
    assert asked["request_id"] == allowed.headers["x-request-id"]
    assert hook.asked[1]["stage"] == "output"  # both stages, by default
    denied = chat(remote_gateway, "hooked", "something forbidden")
    assert denied.status_code == 400 and "house" in denied.json()["error"]["message"]
    assert "forbidden" not in denied.text
    replaced = chat(remote_gateway, "hooked", "please replace-me now")
    assert replaced.status_code == 200
    assert upstream.bodies[-1]["messages"][0]["content"] == "please [house] now"
    upstream.pieces = ["this answer is forbidden"]
    assert chat(remote_gateway, "hooked", "hi").status_code == 400


def test_a_webhook_that_fails_passes_or_blocks_as_it_says(
    remote_gateway: Gateway, hook: Hook, upstream: Upstream
) -> None:
    closed = chat(remote_gateway, "hooked", "slow one")  # 500 ms, fails closed (default)
    assert closed.status_code == 400 and "its check failed" in closed.json()["error"]["message"]
    opened = chat(remote_gateway, "hooked-open", "slow one")  # 200 ms, fails open
    assert opened.status_code == 200
    metrics = scrape(remote_gateway.url)
    assert value(metrics, "runestone_guard_decisions_total", guard="house", decision="error") >= 1
    assert (
        value(metrics, "runestone_guard_decisions_total", guard="house-open", decision="error") >= 1
    )


def test_a_streamed_answer_is_checked_by_the_webhook_a_segment_at_a_time(
    remote_gateway: Gateway, hook: Hook, upstream: Upstream
) -> None:
    upstream.pieces = ["word " * 20, "replace-me ", "then more words " * 5, "forbidden"]
    answer = chat(remote_gateway, "hooked", "hi", stream=True)
    text, events = streamed_text(answer)
    output = [a for a in hook.asked if a["stage"] == "output"]
    assert len(output) >= 3  # segments of 50 characters, not the whole answer at once
    assert "[house]" in text and "replace-me" not in text
    assert "forbidden" not in text and events[-1]["error"]["code"] == "content_blocked"


def test_a_moderation_model_of_a_configured_provider_guards_input(
    remote_gateway: Gateway, fake: FakeProvider, upstream: Upstream
) -> None:
    assert chat(remote_gateway, "moderated", "a calm question").status_code == 200
    flagged = chat(remote_gateway, "moderated", "a violent question")
    assert flagged.status_code == 400 and "moderated" in flagged.json()["error"]["message"]
    assert [s.path for s in fake.seen].count("/v1/moderations") == 2
    assert len(upstream.bodies) == 1
    broken = chat(remote_gateway, "moderated-broken", "anything")
    assert broken.status_code == 400  # fails closed by default
    logged = chat(remote_gateway, "moderated-log", "a violent question")
    assert logged.status_code == 200  # log: counted, let through
    metrics = scrape(remote_gateway.url)
    assert (
        value(metrics, "runestone_guard_decisions_total", guard="moderated-log", decision="log")
        == 1
    )


# --- Keys and teams ----------------------------------------------------------------------

ADMIN = "admin-token-for-the-guards-tests"
KEYS = {
    name: f"rsk-guards-test-{name}-0123456789abcdef"
    for name in ("team", "own", "plain", "budgeted")
}


@pytest.fixture
def keyed_gateway(make_gateway: MakeGateway, upstream: Upstream) -> Gateway:
    from runestone.access import digest

    return make_gateway(
        "defaults: {retries: 0}\n"
        "guards:\n"
        "  no-pii: {detect: [email], stage: input, action: redact}\n"
        "  secrets-in: {detect: [secret], stage: input, action: block}\n"
        "  secrets-out: {detect: [secret], stage: output, action: block}\n"
        "teams:\n  careful: {guards: [no-pii]}\n"
        "keys:\n"
        f"  team: {{hash: 'sha256:{digest(KEYS['team'])}', team: careful}}\n"
        f"  own: {{hash: 'sha256:{digest(KEYS['own'])}', guards: [secrets-in]}}\n"
        f"  plain: {{hash: 'sha256:{digest(KEYS['plain'])}'}}\n"
        f"  budgeted: {{hash: 'sha256:{digest(KEYS['budgeted'])}',"
        " budgets: [{usd: 100, per: day}]}\n"
        "aliases:\n  open: openai:upstream\n"
        "  safe-out: {targets: [openai:upstream], guards: [secrets-out]}\n"
        'prices:\n  "openai:upstream": {input: 1000, output: 2000}\n',
        env={"RUNESTONE_ADMIN_TOKEN": ADMIN},
    )


def keyed_chat(gateway: Gateway, secret: str, content: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "open", "messages": [{"role": "user", "content": content}]},
        headers={"authorization": f"Bearer {secret}"},
        timeout=30,
    )


def test_keys_and_teams_bring_their_own_guards(keyed_gateway: Gateway, upstream: Upstream) -> None:
    content = f"mail {EMAIL} with {SECRET}"
    assert keyed_chat(keyed_gateway, KEYS["plain"], content).status_code == 200
    assert upstream.bodies[-1]["messages"][0]["content"] == content  # no guard of its own
    assert keyed_chat(keyed_gateway, KEYS["team"], content).status_code == 200
    sent = upstream.bodies[-1]["messages"][0]["content"]
    assert sent == f"mail [REDACTED:email] with {SECRET}"  # its team's guard
    refused = keyed_chat(keyed_gateway, KEYS["own"], content)
    assert refused.status_code == 400 and "secrets-in" in refused.json()["error"]["message"]


def test_a_key_made_by_the_admin_api_carries_guards(
    keyed_gateway: Gateway, upstream: Upstream
) -> None:
    headers = {"authorization": f"Bearer {ADMIN}"}
    made = httpx.post(
        f"{keyed_gateway.url}/admin/keys",
        json={"id": "api-made", "guards": ["secrets-in", "no-pii"]},
        headers=headers,
        timeout=10,
    )
    assert made.status_code == 201, made.text
    assert made.json()["settings"]["guards"] == ["secrets-in", "no-pii"]
    secret = made.json()["secret"]
    assert keyed_chat(keyed_gateway, secret, f"mail {EMAIL}").status_code == 200
    assert upstream.bodies[-1]["messages"][0]["content"] == "mail [REDACTED:email]"
    assert keyed_chat(keyed_gateway, secret, f"key {SECRET}").status_code == 400
    # A guard the file does not declare: refused when the key is made...
    unknown = httpx.post(
        f"{keyed_gateway.url}/admin/keys",
        json={"id": "api-unknown", "guards": ["no-such-guard"]},
        headers=headers,
        timeout=10,
    )
    assert unknown.status_code == 400 and "unknown guard 'no-such-guard'" in unknown.text
    # ... and when the file stops declaring one a key names, its requests are refused,
    # not let through unguarded.
    path = keyed_gateway.app.gateway.aliases.path
    text = path.read_text()
    text = text.replace("  secrets-in: {detect: [secret], stage: input, action: block}\n", "")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("  own:"))
    path.write_text(text + "\n")
    within(10, lambda: "secrets-in" not in keyed_gateway.app.gateway.aliases.table.guards)
    refused = keyed_chat(keyed_gateway, secret, "hi")
    assert refused.status_code == 400
    assert "'secrets-in' is not declared" in refused.json()["error"]["message"]
    assert len(upstream.bodies) == 1


def test_a_stream_blocked_mid_answer_is_booked_in_full(
    keyed_gateway: Gateway, upstream: Upstream
) -> None:
    upstream.pieces = ["Here: ", SECRET, " and more"]
    answer = httpx.post(
        f"{keyed_gateway.base_url}/chat/completions",
        json={"model": "safe-out", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {KEYS['budgeted']}"},
        timeout=30,
    )
    text, events = streamed_text(answer)
    assert text == "Here: " and events[-1]["error"]["code"] == "content_blocked"
    headers = {"authorization": f"Bearer {ADMIN}"}

    def booked() -> bool:
        usage = httpx.get(f"{keyed_gateway.url}/admin/usage", headers=headers, timeout=10)
        rows = [r for r in usage.json()["spend"]["today"] if r["key"] == "budgeted"]
        return bool(rows) and rows[0]["usd"] == pytest.approx((5 * 1000 + 7 * 2000) / 1e6)

    within(5, booked)  # the upstream was read on for its usage, then settled


# --- What is kept: logs, metrics, the cache ------------------------------------------------


def test_a_log_guard_holds_nothing_back_and_logs_no_text(
    gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.pieces = ["Mail ", EMAIL, " soon"]
    answer = chat(gateway, "watched", f"from {EMAIL}", stream=True)
    text, _ = streamed_text(answer)
    assert text == f"Mail {EMAIL} soon"  # log only: the answer as it came
    assert upstream.bodies[-1]["messages"][0]["content"] == f"from {EMAIL}"
    assert EMAIL not in caplog.text and "ada.lovelace" not in caplog.text
    assert "guard watch: log" in caplog.text
    metrics = scrape(gateway.url)
    for stage in ("input", "output"):
        assert (
            value(
                metrics,
                "runestone_guard_decisions_total",
                guard="watch",
                stage=stage,
                decision="log",
            )
            == 1
        )
    assert EMAIL not in httpx.get(f"{gateway.url}/metrics").text


def test_redaction_leaves_no_trace_in_logs_or_metrics(
    gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.pieces = [f"Sure: {SECRET} and {EMAIL}"]
    assert chat(gateway, "masked", f"from {EMAIL} {PHONE}", stream=True).status_code == 200
    assert chat(gateway, "safe", f"from {EMAIL} {PHONE}").status_code == 400  # the secret
    for found in (EMAIL, PHONE, SECRET, "lovelace", "7946"):
        assert found not in caplog.text
        assert found not in httpx.get(f"{gateway.url}/metrics").text


def test_the_cache_keeps_only_what_was_sent_and_never_a_blocked_answer(
    gateway: Gateway, upstream: Upstream, tmp_path: Any
) -> None:
    upstream.pieces = [f"Mail {EMAIL} today"]
    for stream in (False, True):
        first = chat(gateway, "cached-masked", "hi", stream=stream)
        within(
            5,
            lambda s=stream: (
                chat(gateway, "cached-masked", "hi", stream=s).headers.get("x-runestone-cache")
                == "hit"
            ),
        )
        again = chat(gateway, "cached-masked", "hi", stream=stream)
        assert again.headers["x-runestone-cache"] == "hit"
        assert EMAIL not in again.text and "[REDACTED:email]" in again.text
        assert again.text == first.text or stream
    upstream.pieces = [f"Key {SECRET}"]
    calls = len(upstream.bodies)
    for _ in range(2):
        blocked = chat(gateway, "cached-safe", "hi", stream=True)
        assert "content_blocked" in blocked.text
    assert len(upstream.bodies) == calls + 2  # a blocked answer is never kept
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert EMAIL.encode() not in path.read_bytes(), path
            assert SECRET.encode() not in path.read_bytes(), path


# --- The library -------------------------------------------------------------------------


async def test_the_library_runs_the_same_guards(
    fake: FakeProvider, upstream: Upstream, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runestone
    from tests.test_library import library_env

    library_env(monkeypatch, fake, tmp_path / "aliases.yaml", GUARDS)
    try:
        asked = {"model": "safe", "messages": [{"role": "user", "content": f"mail {EMAIL}"}]}
        upstream.pieces = ["Fine."]
        answer = await runestone.route_chat(asked)
        assert answer["choices"][0]["message"]["content"] == "Fine."
        assert upstream.bodies[-1]["messages"][0]["content"] == "mail [REDACTED:email]"
        upstream.pieces = ["Key ", SECRET]
        with pytest.raises(runestone.ClientError) as caught:
            await runestone.route_chat(asked)
        assert caught.value.code == "content_blocked"
        upstream.pieces = ["Mail ", EMAIL[:4], EMAIL[4:]]
        streamed = b"".join(
            [e async for e in runestone.route_stream({**asked, "model": "masked"}, raw=True)]
        )
        assert EMAIL.encode() not in streamed and b"[REDACTED:email]" in streamed
    finally:
        await runestone.aclose()


def test_streamed_tool_call_arguments_are_guarded_in_every_format(
    gateway: Gateway, upstream: Upstream
) -> None:
    upstream.pieces = ["Sending."]
    upstream.tool_arguments = ['{"to": "', EMAIL[:7], EMAIL[7:] + '", "n": 1}']
    tools = [{"type": "function", "function": {"name": "send", "parameters": {}}}]
    answer = chat(gateway, "masked", "hi", stream=True, tools=tools)
    _, events = streamed_text(answer)
    arguments = "".join(
        call["function"].get("arguments") or ""
        for event in events
        for choice in event.get("choices", ())
        for call in choice["delta"].get("tool_calls") or ()
    )
    assert arguments == '{"to": "[REDACTED:email]", "n": 1}'
    body = {
        "model": "masked",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "send", "input_schema": {"type": "object"}}],
    }
    answer = messages(gateway, body)
    partial = "".join(
        p["delta"].get("partial_json", "")
        for p in sse_payloads(answer)
        if p.get("type") == "content_block_delta"
    )
    assert orjson.loads(partial) == {"to": "[REDACTED:email]", "n": 1}
    assert EMAIL not in answer.text
    body = {
        "model": "masked-chat",
        "stream": True,
        "input": "hi",
        "store": False,
        "tools": [{"type": "function", "name": "send", "parameters": {"type": "object"}}],
    }
    answer = responses(gateway, body)
    payloads = sse_payloads(answer)
    deltas = "".join(
        p["delta"] for p in payloads if p["type"] == "response.function_call_arguments.delta"
    )
    assert deltas == '{"to": "[REDACTED:email]", "n": 1}'
    (done,) = [p for p in payloads if p["type"] == "response.function_call_arguments.done"]
    assert done["arguments"] == deltas and EMAIL not in answer.text
