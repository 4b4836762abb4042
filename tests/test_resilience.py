"""Fault injection: a primary target that misbehaves, a fallback, and what the client sees.

Every scenario asserts what the client gets (status, body, how the stream ends), how many
attempts reached each upstream, and the time taken against the alias's deadline.
README.md has these as a table.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from tests.conftest import MakeGateway
from tests.servers import (
    Behaviour,
    FakeProvider,
    Gateway,
    chunk,
    complete_normally,
    error_response,
    free_socket,
    send_stream,
    stream_events,
)

TIMEOUT = 3.0


def aliases(dead_port: int) -> str:
    return f"""
defaults: {{retries: 0, timeout: 5}}
providers:
  dead: {{base_url: "http://127.0.0.1:{dead_port}/v1"}}
aliases:
  duo:
    strategy: fallback
    retries: 1
    timeout: {TIMEOUT}
    first_token_timeout: 0.5
    idle_timeout: 0.5
    on_stream_cut: error      # the honest ending, not the default rescue
    context_fallback: []      # the client's error, not the default fallback
    targets: [openai:primary, openai:backup]
  refused: {{targets: [dead:primary, openai:backup], retries: 1, timeout: {TIMEOUT}}}
  single: {{targets: [openai:primary], retries: 0, timeout: {TIMEOUT}}}
  long: {{targets: [openai:primary], timeout: 1.5, idle_timeout: 1}}
  slow-reader: {{targets: [openai:primary], timeout: 30, idle_timeout: 0.5, on_stream_cut: error}}
  spread:
    strategy: weighted
    retries: 0
    targets:
      - {{target: openai:a, weight: 3}}
      - {{target: openai:b, weight: 1}}
  busy: {{strategy: least_busy, targets: [openai:a, openai:b]}}
"""


@pytest.fixture
def gateway(make_gateway: MakeGateway) -> Gateway:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here: connections are refused
    return make_gateway(
        aliases(port), breaker_failures=3, breaker_cooldown=0.5, breaker_half_open_trials=1
    )


def sequence(*behaviours: Behaviour) -> Behaviour:
    """The n-th call gets the n-th behaviour; the last one repeats."""
    calls = {"n": 0}

    async def behaviour(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        index = min(calls["n"], len(behaviours) - 1)
        calls["n"] += 1
        return await behaviours[index](request, body)

    return behaviour


def hits(fake: FakeProvider, model: str) -> int:
    return sum(1 for seen in fake.seen if seen.body.get("model") == model)


def ask(
    gateway: Gateway, model: str = "duo", *, stream: bool = False
) -> tuple[httpx.Response, float]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    started = time.monotonic()
    response = httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=30)
    return response, time.monotonic() - started


def in_band_error(content: bytes) -> dict[str, Any] | None:
    for event in content.split(b"\n\n"):
        if event.startswith(b"data: {") and b'"error"' in event:
            payload: dict[str, Any] = orjson.loads(event[6:])
            if "error" in payload:
                return payload
    return None


async def hang(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    await asyncio.sleep(60)
    raise AssertionError("unreachable")


async def headers_then_hang(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    await asyncio.sleep(60)
    return response


EVENTS = stream_events("primary", ["Hello", " there", "!"])


async def chunks_then_hang(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return await send_stream(request, EVENTS[:3], then="hang")


async def chunks_then_drop(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return await send_stream(request, EVENTS[:3], delay=0.02, then="drop")


async def drop_before_content(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return await send_stream(request, EVENTS[:1], then="drop")


IN_BAND = b'data: {"error": {"message": "Internal error", "type": "server_error"}}\n\n'


async def error_after_content(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return await send_stream(request, [*EVENTS[:2], IN_BAND], delay=0.05)


async def error_before_content(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return await send_stream(request, [EVENTS[0], IN_BAND])


async def invalid_json(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return web.Response(text="<html>upstream maintenance</html>", content_type="text/html")


async def slow(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    await asyncio.sleep(1.0)
    return await complete_normally(request, body)


async def steady_but_endless(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    events = [chunk("primary", {"content": f"w{i} "}) for i in range(100)]
    return await send_stream(request, events, delay=0.2)


def overloaded(status: int) -> Behaviour:
    return error_response(status, {"error": {"message": "overloaded", "type": "server_error"}})


# --- before the first byte: retried and failed over invisibly --------------------------------


def test_429_retry_after_is_respected(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on(
        "primary",
        sequence(
            error_response(
                429,
                {"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
                {"retry-after-ms": "400"},
            ),
            complete_normally,
        ),
    )
    response, elapsed = ask(gateway)
    assert response.status_code == 200
    assert response.headers["x-runestone-target"] == "openai:primary"
    assert response.headers["x-runestone-attempts"] == "2"
    assert (hits(fake, "primary"), hits(fake, "backup")) == (2, 0)
    assert 0.4 <= elapsed < 1.0


@pytest.mark.parametrize("status", [500, 503, 529])
def test_server_errors_retry_then_fail_over(
    gateway: Gateway, fake: FakeProvider, status: int
) -> None:
    fake.on("primary", overloaded(status))
    response, elapsed = ask(gateway)
    assert response.status_code == 200
    assert response.headers["x-runestone-target"] == "openai:backup"
    assert response.headers["x-runestone-attempts"] == "3"
    assert (hits(fake, "primary"), hits(fake, "backup")) == (2, 1)
    assert elapsed < TIMEOUT


def test_stream_that_hangs_before_headers_fails_over(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("primary", hang)
    response, elapsed = ask(gateway, stream=True)
    assert response.status_code == 200
    assert response.content.endswith(b"data: [DONE]\n\n")
    assert response.headers["x-runestone-target"] == "openai:backup"
    # A silent target is not retried (the rescue issue, item 4): one first-token timeout
    # of 0.5 s, then the backup at once.
    assert (hits(fake, "primary"), hits(fake, "backup")) == (1, 1)
    assert 0.5 <= elapsed < 1.0


def test_stream_that_sends_headers_then_hangs_fails_over(
    gateway: Gateway, fake: FakeProvider
) -> None:
    fake.on("primary", headers_then_hang)
    response, elapsed = ask(gateway, stream=True)
    assert response.status_code == 200
    assert response.content.endswith(b"data: [DONE]\n\n")
    assert in_band_error(response.content) is None
    assert (hits(fake, "primary"), hits(fake, "backup")) == (1, 1)
    assert elapsed < 1.0


def test_stream_dropped_before_content_fails_over(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("primary", drop_before_content)
    response, _ = ask(gateway, stream=True)
    assert response.status_code == 200
    assert response.content.endswith(b"data: [DONE]\n\n")
    assert response.content.count(b'"role":"assistant"') == 1, "one clean stream"
    assert response.headers["x-runestone-target"] == "openai:backup"


def test_in_band_error_before_content_fails_over(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("primary", error_before_content)
    response, _ = ask(gateway, stream=True)
    assert response.status_code == 200
    assert in_band_error(response.content) is None
    assert response.headers["x-runestone-target"] == "openai:backup"


def test_invalid_json_is_retried_then_failed_over(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("primary", invalid_json)
    response, _ = ask(gateway)
    assert response.status_code == 200
    assert response.headers["x-runestone-target"] == "openai:backup"
    assert (hits(fake, "primary"), hits(fake, "backup")) == (2, 1)


def test_slow_answer_within_the_deadline(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("primary", slow)
    response, elapsed = ask(gateway)
    assert response.status_code == 200
    assert response.headers["x-runestone-target"] == "openai:primary"
    assert 1.0 <= elapsed < TIMEOUT


def test_refused_connection_fails_over(gateway: Gateway, fake: FakeProvider) -> None:
    response, elapsed = ask(gateway, "refused")
    assert response.status_code == 200
    assert response.headers["x-runestone-target"] == "openai:backup"
    assert response.headers["x-runestone-attempts"] == "3"
    assert elapsed < TIMEOUT


def test_client_error_is_never_retried(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("primary", error_response(400, {"error": {"message": "bad 'tools'", "param": "tools"}}))
    response, _ = ask(gateway)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upstream_bad_request"
    assert (hits(fake, "primary"), hits(fake, "backup")) == (1, 0)


def test_context_length_is_never_failed_over(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on(
        "primary",
        error_response(
            400,
            {
                "error": {
                    "message": "maximum context length is 8192 tokens",
                    "code": "context_length_exceeded",
                }
            },
        ),
    )
    response, _ = ask(gateway)
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert (hits(fake, "primary"), hits(fake, "backup")) == (1, 0)


# --- after the first byte: the stream ends honestly -------------------------------------------


def test_chunks_then_hang_ends_with_in_band_timeout(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("primary", chunks_then_hang)
    response, elapsed = ask(gateway, stream=True)
    assert response.status_code == 200
    assert response.content.startswith(b"".join(EVENTS[:3]))
    assert b"data: [DONE]" not in response.content
    error = in_band_error(response.content)
    assert error is not None
    assert error["error"]["code"] == "upstream_timeout"
    assert (hits(fake, "primary"), hits(fake, "backup")) == (1, 0), "no retry once streaming"
    assert 0.5 <= elapsed < 1.5


def test_silence_after_half_an_event_ends_with_in_band_timeout(
    gateway: Gateway, fake: FakeProvider
) -> None:
    # The relay bounds a stream's silence itself (aiohttp's per-read timer is dropped
    # once streaming): bytes that complete no event are not an answer going on.
    async def half_then_hang(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        half = EVENTS[3][: len(EVENTS[3]) // 2]
        return await send_stream(request, [*EVENTS[:3], half], delay=0.1, then="hang")

    fake.on("primary", half_then_hang)
    response, elapsed = ask(gateway, stream=True)
    assert response.status_code == 200
    assert response.content.startswith(b"".join(EVENTS[:3]))
    error = in_band_error(response.content)
    assert error is not None
    assert error["error"]["code"] == "upstream_timeout"
    assert "0.5s" in error["error"]["message"]
    assert 0.5 <= elapsed < 1.5  # the deadline (3 s) would say gateway_timeout


def test_a_slow_reader_is_not_upstream_silence(gateway: Gateway, fake: FakeProvider) -> None:
    # The client stops reading for longer than idle_timeout while the upstream has
    # written everything: time the relay spends on the client is not the upstream's.
    big = [chunk("primary", {"content": "x" * 250_000}) for _ in range(80)]  # 20 MB: more
    # than the socket buffers on both sides hold, so that the relay waits on the client

    async def everything(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, [*EVENTS[:1], *big, *EVENTS[4:]])

    fake.on("primary", everything)
    # A deadline far off: 20 MB through a loaded machine takes what it takes; only the
    # upstream's silence (idle_timeout) is under test.
    body = {"model": "slow-reader", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    received = b""
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", json=body, timeout=30
    ) as response:
        pieces = response.iter_raw()
        received += next(pieces)
        time.sleep(1.2)  # more than idle_timeout (0.5), with the gateway's buffers full
        for piece in pieces:
            received += piece
    assert in_band_error(received) is None
    assert received.endswith(b"data: [DONE]\n\n")
    assert received.count(b'"content":"xxxx') == 80


def test_drop_mid_stream_ends_with_in_band_error(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("primary", chunks_then_drop)
    response, _ = ask(gateway, stream=True)
    assert response.status_code == 200
    assert b"data: [DONE]" not in response.content
    error = in_band_error(response.content)
    assert error is not None
    assert error["error"]["code"] == "upstream_stream_interrupted"


def test_in_band_error_after_content(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("primary", error_after_content)
    response, _ = ask(gateway, stream=True)
    assert response.content.startswith(b"".join(EVENTS[:2]))
    assert b"data: [DONE]" not in response.content
    error = in_band_error(response.content)
    assert error is not None
    assert error["error"]["code"] == "upstream_server_error"


def test_deadline_cuts_a_stream_that_goes_on_too_long(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("primary", steady_but_endless)
    response, elapsed = ask(gateway, "long", stream=True)
    assert response.status_code == 200
    assert b"data: [DONE]" not in response.content
    error = in_band_error(response.content)
    assert error is not None
    assert error["error"]["code"] == "gateway_timeout"
    assert 1.5 <= elapsed < 2.5


def test_non_stream_hang_ends_at_the_deadline(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("primary", hang)
    response, elapsed = ask(gateway, "single")
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "gateway_timeout"
    assert TIMEOUT <= elapsed < TIMEOUT + 1


# --- circuit breaker -----------------------------------------------------------------------


def test_breaker_opens_fails_fast_half_opens_and_closes(
    gateway: Gateway, fake: FakeProvider
) -> None:
    fake.on("primary", overloaded(503))
    for _ in range(3):
        assert ask(gateway, "single")[0].status_code == 503
    assert hits(fake, "primary") == 3
    fast, elapsed = ask(gateway, "single")
    assert fast.status_code == 503
    assert fast.json()["error"]["code"] == "no_healthy_upstream"
    assert int(fast.headers["retry-after"]) >= 1
    assert hits(fake, "primary") == 3, "an open breaker sends nothing upstream"
    assert elapsed < 0.5
    ready = httpx.get(f"{gateway.url}/health/ready").json()
    (breaker,) = [b for b in ready["breakers"] if b["target"].startswith("openai:primary")]
    assert breaker["state"] == "open"

    time.sleep(0.6)  # past the cool-down: half open, one trial
    fake.on("primary", complete_normally)
    assert ask(gateway, "single")[0].status_code == 200
    assert hits(fake, "primary") == 4
    ready = httpx.get(f"{gateway.url}/health/ready").json()
    (breaker,) = [b for b in ready["breakers"] if b["target"].startswith("openai:primary")]
    assert breaker["state"] == "closed"


def test_open_breaker_moves_traffic_to_the_fallback(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("primary", overloaded(500))
    ask(gateway)  # two failures on primary
    ask(gateway)  # the third opens it
    before = hits(fake, "primary")
    response, _ = ask(gateway)
    assert response.status_code == 200
    assert response.headers["x-runestone-target"] == "openai:backup"
    assert response.headers["x-runestone-attempts"] == "1"
    assert hits(fake, "primary") == before


# --- strategies ----------------------------------------------------------------------------


def test_weighted_spreads_by_weight(gateway: Gateway, fake: FakeProvider) -> None:
    # 400 draws: with 3:1 expected, a ratio outside 1.8..6 is a 5-sigma event (at 100
    # draws it was 1 run in 60).
    def send(client: httpx.Client) -> None:
        for _ in range(50):
            client.post(
                f"{gateway.base_url}/chat/completions",
                json={"model": "spread", "messages": [{"role": "user", "content": "x"}]},
            )

    with httpx.Client(timeout=10) as client, ThreadPoolExecutor(8) as pool:
        list(pool.map(send, [client] * 8))
    a, b = hits(fake, "a"), hits(fake, "b")
    assert a + b == 400
    assert 1.8 <= a / b <= 6.0, (a, b)


def test_least_busy_sends_concurrent_requests_to_different_targets(
    gateway: Gateway, fake: FakeProvider
) -> None:
    fake.on("a", slow)
    fake.on("b", slow)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(ask, gateway, "busy")
        time.sleep(0.3)
        second = pool.submit(ask, gateway, "busy")
        targets = {
            first.result()[0].headers["x-runestone-target"],
            second.result()[0].headers["x-runestone-target"],
        }
    assert targets == {"openai:a", "openai:b"}


def test_status_command_shows_breakers(gateway: Gateway, fake: FakeProvider) -> None:
    import subprocess
    import sys

    fake.on("primary", overloaded(503))
    for _ in range(3):
        ask(gateway, "single")
    result = subprocess.run(
        [sys.executable, "-m", "runestone", "status", "--url", gateway.url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "aliases: 7 from" in result.stdout
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("openai:primary@")]
    assert row.split()[1] == "open"


# The attempt loop's own time limit (it replaced asyncio.timeout on the request path):
# a cancel it did not make is never taken for a timeout, and none of its cancels is left
# pending on the task.


def _one_candidate() -> list[Any]:
    from runestone.aliases import Target
    from runestone.providers import Call, default_registry
    from runestone.routing.attempts import Candidate
    from runestone.routing.breakers import Breakers

    endpoint = default_registry({"OPENAI_API_KEY": "k"}).endpoint("openai")
    assert endpoint is not None
    call = Call(endpoint, "m", {"model": "m"}, "req_limit")
    return [Candidate(Target("openai", "m"), call, Breakers().get("openai:m"))]


async def test_an_attempt_over_its_limit_is_an_upstream_timeout_and_leaves_no_cancel() -> None:
    from runestone.aliases import Policy
    from runestone.errors import GatewayError
    from runestone.routing.attempts import run_attempts
    from runestone.streams.clocks import Deadline

    async def silent(_: Any) -> str:
        await asyncio.sleep(10)
        return "never"

    with pytest.raises(GatewayError) as raised:
        await run_attempts(
            _one_candidate(),
            Policy(retries=0),
            Deadline(5),
            silent,
            attempt_timeout=0.05,
            last_attempt_timeout=0.05,  # one candidate: it is the last
        )
    assert raised.value.code == "upstream_timeout"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # a cancel left pending would raise here


async def test_a_cancel_from_outside_stays_a_cancel_even_when_the_limit_fires_too() -> None:
    from runestone.aliases import Policy
    from runestone.routing.attempts import run_attempts
    from runestone.streams.clocks import Deadline

    candidates = _one_candidate()
    cancelled = asyncio.Event()

    async def slow_to_stop(_: Any) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:  # the outside cancel: some clean-up, still running
            cancelled.set()
            await asyncio.sleep(10)  # ... when the limit fires
        return "never"

    async def request() -> object:
        return await run_attempts(
            candidates,
            Policy(retries=0),
            Deadline(5),
            slow_to_stop,
            attempt_timeout=0.1,
            last_attempt_timeout=0.1,
        )

    task = asyncio.create_task(request())
    await asyncio.sleep(0.01)
    task.cancel()
    await cancelled.wait()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert candidates[0].breaker.in_flight == 0


async def test_an_answer_that_beats_its_limit_is_kept_and_the_limit_disarmed() -> None:
    from runestone.aliases import Policy
    from runestone.routing.attempts import run_attempts
    from runestone.streams.clocks import Deadline

    async def quick(_: Any) -> str:
        await asyncio.sleep(0)
        return "answer"

    done = await run_attempts(
        _one_candidate(), Policy(retries=0), Deadline(5), quick, attempt_timeout=0.05
    )
    assert done.result == "answer"
    await asyncio.sleep(0.1)  # past the limit: nothing fires into this task
