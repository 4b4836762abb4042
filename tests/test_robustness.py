"""Hostile input, hostile upstreams, leaks and reloads (the robustness issue), item by item."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from runestone.aliases import AliasStore
from runestone.protocols.openai_chat import OpenAIStreamScanner
from runestone.providers.errors import parse_retry_after
from runestone.routing.breakers import Breakers
from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway, chunk, error_response, send_stream
from tests.test_telemetry import scrape, value

HI = [{"role": "user", "content": "hi"}]


def chat(gateway: Gateway, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": HI, **extra}
    return httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=30)


# --- 2. an upstream that never ends an event ---------------------------------------------------


def test_scanning_an_event_that_never_ends_is_linear_and_bounded() -> None:
    scanner = OpenAIStreamScanner("p")
    scanner.limit = 8 * 1024 * 1024
    piece = b"x" * 100
    started = time.monotonic()
    for _ in range(20_000):  # 2 MB in small reads: quadratic joining took minutes
        assert scanner.feed(piece) == b""
    assert time.monotonic() - started < 5
    assert scanner.summary.error is None
    out = scanner.feed(b"\n\ndata: [DONE]\n\n")
    assert out.endswith(b"data: [DONE]\n\n") and len(out) > 2_000_000
    bounded = OpenAIStreamScanner("p")
    bounded.limit = 10_000
    for _ in range(200):
        bounded.feed(piece)
    assert bounded.summary.error is not None
    assert bounded.summary.error.code == "upstream_invalid_response"
    assert bounded._reader._pending_size == 0  # what was held is let go


def test_a_newline_less_stream_fails_over_and_the_loop_stays_responsive(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    async def no_newlines(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, [b"data: " + b"y" * 65536] * 200, delay=0.001)

    fake.on("endless-line", no_newlines)
    gateway = make_gateway(
        "aliases:\n  odd: {targets: [openai:endless-line, openai:fine], retries: 0}\n",
        max_event_bytes=1_000_000,
    )
    response = chat(gateway, "odd", stream=True)
    assert response.status_code == 200
    assert response.headers["x-runestone-target"] == "openai:fine"
    started = time.monotonic()
    assert httpx.get(f"{gateway.url}/health/live").status_code == 200
    assert time.monotonic() - started < 1


async def _hang(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    await asyncio.sleep(30)
    raise AssertionError("unreachable")


def test_a_client_that_leaves_while_connecting_stops_the_attempts(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    fake.on("first", _hang)
    fake.on("second", _hang)
    gateway = make_gateway(
        "aliases:\n  both: {targets: [openai:first, openai:second], retries: 0, "
        "first_token_timeout: 1, timeout: 10}\n"
    )
    chat_body = {"model": "both", "stream": True, "messages": HI}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.base_url}/chat/completions", json=chat_body, timeout=0.3)
    time.sleep(1.5)  # past the first target's first-token timeout
    assert [s.body["model"] for s in fake.seen] == ["first"]  # the fallback was never tried
    metrics = scrape(gateway.url)
    assert value(metrics, "runestone_requests_total", code="client_disconnected") == 1
    assert value(metrics, "runestone_in_flight_requests") == 0
    ready = httpx.get(f"{gateway.url}/health/ready").json()
    assert all(b["in_flight"] == 0 for b in ready["breakers"])


# --- 3. decompression bombs and huge bodies -------------------------------------------------


def _bomb(status: int, megabytes: int) -> Any:
    inflated = b'{"error": {"message": "' + b"a" * (megabytes * 1024 * 1024) + b'"}}'
    packed = gzip.compress(inflated, compresslevel=9)

    async def behaviour(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.Response(
            status=status,
            body=packed,
            headers={"content-encoding": "gzip", "content-type": "application/json"},
        )

    return behaviour, len(packed)


def test_a_decompression_bomb_is_cut_at_the_body_limit(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    bomb, packed = _bomb(200, 50)
    assert packed < 200_000
    fake.on("bomb", bomb)
    gateway = make_gateway(max_upstream_body_bytes=1024 * 1024)
    started = time.monotonic()
    response = chat(gateway, "openai:bomb")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_invalid_response"
    assert "more than 1048576 bytes" in response.json()["error"]["message"]
    assert time.monotonic() - started < 5


def test_an_error_body_is_read_only_as_far_as_needed(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    bomb, _ = _bomb(503, 50)
    fake.on("bomb", bomb)
    gateway = make_gateway()
    for stream in (False, True):
        response = chat(gateway, "openai:bomb", stream=stream)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "upstream_overloaded"
        assert len(response.content) < 10_000  # the message is bounded too


# --- 4. unauthenticated connections are bounded (runestone serve's protocol) ------------------


@pytest.fixture
def bounded_server(tmp_path: Path) -> Any:
    from tests.test_serve import serving

    with serving(
        tmp_path,
        RUNESTONE_SERVICE_TOKEN="tok",
        RUNESTONE_HEADER_TIMEOUT="1",
        RUNESTONE_BODY_TIMEOUT="1",
        RUNESTONE_MAX_HEADER_BYTES="16384",
    ) as served:
        yield served


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def read_all(sock: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        received += data
    return received


def test_huge_headers_are_refused(bounded_server: Any) -> None:
    sock = _connect(bounded_server.url)
    try:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 200_000)
        answer = read_all(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 431")
    many = _connect(bounded_server.url)
    try:
        headers = b"".join(b"x-h%d: v\r\n" % i for i in range(200))
        many.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
        assert read_all(many).startswith(b"HTTP/1.1 431")
    finally:
        many.close()


def test_slow_headers_and_a_stalled_body_are_cut(bounded_server: Any) -> None:
    slow = _connect(bounded_server.url)
    started = time.monotonic()
    try:
        slow.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\n")  # and then nothing
        answer = read_all(slow)
    finally:
        slow.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert 0.8 < time.monotonic() - started < 4
    stalled = _connect(bounded_server.url)
    started = time.monotonic()
    try:
        stalled.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n"
            b'content-type: application/json\r\n\r\n{"model"'
        )
        read_all(stalled)
    finally:
        stalled.close()
    assert time.monotonic() - started < 4
    assert httpx.get(f"{bounded_server.url}/health/live").status_code == 200


# --- 6. state and time from client-chosen names ------------------------------------------------


def test_model_names_are_bounded_and_never_echoed_whole(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    huge = chat(gateway, "openai:" + "m" * 10_000_000)
    assert huge.status_code == 400
    assert huge.json()["error"]["param"] == "model"
    assert len(huge.content) < 2_000
    for name in ("openai:gpt\r\nX-Injected: yes", "openai:gpt\u0000"):
        response = chat(gateway, name)
        assert response.status_code == 400
        assert "control characters" in response.json()["error"]["message"]
    assert value(scrape(gateway.url), "runestone_in_flight_requests") == 0


def test_the_breaker_table_is_bounded() -> None:
    breakers = Breakers(limit=100)
    for i in range(1_000):
        breakers.get(f"openai:model-{i}@http://x")
    assert len(breakers) <= 100
    failing = breakers.get("openai:keep@http://x")
    failing.record_failure()
    for i in range(1_000):
        breakers.get(f"openai:other-{i}@http://x")
    assert breakers.get("openai:keep@http://x") is failing  # remembered: it has failures


# --- 7. /health/ready says ready, not how the gateway is configured ----------------------------


def test_ready_details_need_the_operators_token(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    port = fake.url.rsplit(":", 1)[1]
    gateway = make_gateway(
        "providers:\n"
        f"  house: {{base_url: 'http://admin:hunter2@127.0.0.1:{port}/v1'}}\n"
        "aliases:\n  mine: house:local-model\n",
        service_token="tok",
    )
    assert chat_with_token(gateway, "mine").status_code == 200
    public = httpx.get(f"{gateway.url}/health/ready")
    assert public.status_code == 200
    assert public.json() == {
        "status": "ready",
        "aliases": {"version": gateway.app.aliases.table.version, "ok": True},
    }
    detailed = httpx.get(f"{gateway.url}/health/ready", headers={"authorization": "Bearer tok"})
    (breaker,) = detailed.json()["breakers"]
    assert breaker["target"] == f"house:local-model@http://127.0.0.1:{port}/v1"
    assert "hunter2" not in detailed.text
    assert httpx.head(f"{gateway.url}/health/live").status_code == 200
    assert httpx.head(f"{gateway.url}/health/ready").status_code == 200


def chat_with_token(gateway: Gateway, model: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": model, "messages": HI},
        headers={"authorization": "bearer tok"},  # the scheme in lower case, as some send it
    )


# --- 8. keys quoted back by a provider are masked ----------------------------------------------


def test_a_provider_quoting_the_key_never_shows_it(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    key = "sk-test-very-secret-1234"
    quoted = {"error": {"message": f"Incorrect API key provided: {key}. Bearer {key}"}}
    fake.on("quoting", error_response(400, quoted))

    async def quoting_stream(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        events = [
            chunk("m", {"role": "assistant", "content": "x"}),
            b'data: {"error": {"message": "bad key gsk_abcdefghijkl and '
            + key.encode()
            + b'"}}\n\n',
        ]
        return await send_stream(request, events)

    fake.on("quoting-stream", quoting_stream)
    gateway = make_gateway(env={"OPENAI_API_KEY": key})
    plain = chat(gateway, "openai:quoting")
    assert plain.status_code == 400
    assert key not in plain.text
    assert "[redacted]" in plain.json()["error"]["message"]
    streamed = chat(gateway, "openai:quoting-stream", stream=True)
    assert key not in streamed.text
    assert "gsk_abcdefghijkl" not in streamed.text


# --- 9. Retry-After from an upstream is untrusted ------------------------------------------------


@pytest.mark.parametrize(
    "header", ["inf", "1e400", "nan", "-5", "soon", "Fri, 31 Dec 9999 23:59:59 GMT"]
)
def test_retry_after_values_never_break_the_envelope(
    header: str, make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    seconds = parse_retry_after({"retry-after": header})
    assert seconds is None or 0 <= seconds <= 3600
    fake.on("limited", error_response(429, {"error": {"message": "slow"}}, {"retry-after": header}))
    gateway = make_gateway(
        "aliases:\n  pair: {targets: [openai:limited, openai:fine], retries: 1}\n"
    )
    response = chat(gateway, "pair")
    assert response.status_code == 200
    assert response.headers["x-runestone-target"] == "openai:fine"
    alone = chat(gateway, "openai:limited")
    assert alone.status_code == 429
    assert alone.json()["error"]["code"] == "upstream_rate_limited"


# --- 10. half-written alias files ---------------------------------------------------------------


def test_a_reload_that_drops_most_aliases_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "aliases.yaml"
    names = [f"a{i}" for i in range(10)]
    path.write_text("aliases:\n" + "".join(f"  {n}: mock:echo\n" for n in names))
    store = AliasStore(path)
    store.load()
    path.write_text("aliases:\n  a0: mock:echo\n  a1: mock:echo\n")  # truncated, yet valid
    assert store.reload() is False
    assert len(store.table) == 10
    assert store.status.ok is False
    assert "reload refused" in (store.status.error or "")
    assert "allow_shrink" in (store.status.error or "")
    path.write_text("aliases: {}\n")
    assert store.reload() is False  # dropping every alias, likewise
    path.write_text("allow_shrink: true\naliases:\n  a0: mock:echo\n")
    assert store.reload() is True
    assert len(store.table) == 1
    path.write_text("aliases:\n  a0: mock:echo\n  b: mock:lorem\n")
    assert store.reload() is True  # growing is always fine


# --- 12. smaller ones ----------------------------------------------------------------------------


def test_upstream_redirects_are_not_followed(make_gateway: MakeGateway, fake: FakeProvider) -> None:
    gateway = make_gateway()

    async def redirect(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"{gateway.base_url}/chat/completions")

    fake.on("moved", redirect)
    for stream in (False, True):
        response = chat(gateway, "openai:moved", stream=stream)
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_invalid_response"
        assert "redirect" in response.json()["error"]["message"]
    assert len(fake.seen) == 2  # nothing followed the redirect back into the gateway


def test_local_servers_must_be_configured(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    for name in ("vllm:some-model", "ollama:llama3.1:8b"):
        response = chat(gateway, name)
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["code"] == "provider_not_configured"
        assert "_BASE_URL" in error["message"]
