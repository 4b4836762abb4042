"""The library calls, in-process and in gateway mode against a second running gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from starlette.applications import Starlette
from starlette.routing import Mount

import runestone
from runestone.access import digest
from runestone.config import Settings
from runestone.http import create_app
from tests.conftest import TEST_ALIASES, MakeGateway, provider_env
from tests.servers import (
    FakeProvider,
    ServerThread,
    free_socket,
    same_minute,
    send_stream,
    stream_events,
)

HELLO = [{"role": "user", "content": "hello library"}]


def test_public_api_is_pinned() -> None:
    assert sorted(runestone.__all__) == [
        "Alias",
        "AliasStore",
        "AliasTable",
        "ClientError",
        "GatewayError",
        "GatewayFault",
        "Target",
        "UpstreamError",
        "__version__",
        "aclose",
        "route_chat",
        "route_stream",
    ]


def library_env(
    monkeypatch: pytest.MonkeyPatch, fake: FakeProvider, path: Path, aliases: str
) -> None:
    """The library in process, with ``aliases`` and every provider pointed at the fake."""
    path.write_text(aliases)
    monkeypatch.setenv("RUNESTONE_ALIASES_PATH", str(path))
    monkeypatch.delenv("RUNESTONE_GATEWAY_MODE", raising=False)
    for name, value in provider_env(fake).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
async def in_process(
    fake: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[None]:
    library_env(monkeypatch, fake, tmp_path / "aliases.yaml", TEST_ALIASES)
    yield
    await runestone.aclose()


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([event async for event in stream])


async def chunks(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in stream]


@pytest.mark.usefixtures("in_process")
async def test_route_chat_in_process(fake: FakeProvider) -> None:
    answer = await runestone.route_chat({"model": "smart", "messages": HELLO})
    assert answer["choices"][0]["message"]["content"] == "Hello from the fake provider."  # type: ignore[index]
    assert fake.seen[0].body["model"] == "gpt-4"


@pytest.mark.usefixtures("in_process")
async def test_route_stream_in_process() -> None:
    out = await collect(runestone.route_stream({"model": "echo", "messages": HELLO}, raw=True))
    assert out.endswith(b"data: [DONE]\n\n")
    assert b'"content":" library"' in out
    decoded = await chunks(runestone.route_stream({"model": "echo", "messages": HELLO}))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in decoded if c["choices"])
    assert text == "hello library"


@pytest.mark.usefixtures("in_process")
async def test_route_stream_raises_when_the_stream_breaks(fake: FakeProvider) -> None:
    async def cut(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        events = stream_events(body["model"], ["Hello", " there"])
        return await send_stream(request, events[:3], then="drop")

    fake.on("gpt-4", cut)
    received: list[dict[str, Any]] = []

    async def read() -> None:
        async for chunk in runestone.route_stream({"model": "smart", "messages": HELLO}):
            received.append(chunk)

    with pytest.raises(runestone.UpstreamError) as caught:
        await read()
    assert caught.value.code == "upstream_stream_interrupted"
    assert [c["choices"][0]["delta"].get("content") for c in received] == ["", "Hello", " there"]
    with pytest.raises(runestone.UpstreamError):
        await collect(runestone.route_stream({"model": "smart", "messages": HELLO}, raw=True))


@pytest.mark.usefixtures("in_process")
async def test_route_chat_raises_gateway_errors() -> None:
    with pytest.raises(runestone.ClientError) as caught:
        await runestone.route_chat({"model": "nope", "messages": HELLO})
    assert caught.value.code == "model_not_found"
    with pytest.raises(runestone.ClientError, match="'messages'"):
        await runestone.route_chat({"model": "smart", "messages": []})


@pytest.fixture
async def remote_mode(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    central = make_gateway(service_token="central-token")
    monkeypatch.setenv("RUNESTONE_GATEWAY_MODE", "true")
    monkeypatch.setenv("RUNESTONE_URL", central.base_url)
    monkeypatch.setenv("RUNESTONE_SERVICE_TOKEN", "central-token")
    # Proof that nothing is routed locally: this process has no alias file or keys.
    monkeypatch.setenv("RUNESTONE_ALIASES_PATH", "/nonexistent/aliases.yaml")
    yield central.url
    await runestone.aclose()


@pytest.mark.usefixtures("remote_mode")
async def test_gateway_mode_chat_goes_to_the_central_gateway(fake: FakeProvider) -> None:
    answer = await runestone.route_chat({"model": "smart", "messages": HELLO}, request_id="lib-1")
    assert answer["model"] == "gpt-4"
    (seen,) = fake.seen
    assert seen.body["messages"] == HELLO


@pytest.mark.usefixtures("remote_mode")
async def test_gateway_mode_stream() -> None:
    out = await collect(runestone.route_stream({"model": "smart", "messages": HELLO}, raw=True))
    assert out.endswith(b"data: [DONE]\n\n")
    assert b"Hello" in out


@pytest.mark.usefixtures("remote_mode")
async def test_gateway_mode_errors_keep_their_code() -> None:
    with pytest.raises(runestone.ClientError) as caught:
        await runestone.route_chat({"model": "nope", "messages": HELLO})
    assert caught.value.code == "model_not_found"
    with pytest.raises(runestone.ClientError) as streamed:
        await chunks(runestone.route_stream({"model": "nope", "messages": HELLO}))
    assert streamed.value.code == "model_not_found"


async def test_gateway_mode_with_a_wrong_token(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    central = make_gateway(service_token="central-token")
    monkeypatch.setenv("RUNESTONE_GATEWAY_MODE", "true")
    monkeypatch.setenv("RUNESTONE_URL", central.url)
    monkeypatch.setenv("RUNESTONE_SERVICE_TOKEN", "wrong")
    try:
        with pytest.raises(runestone.ClientError) as caught:
            await runestone.route_chat({"model": "smart", "messages": HELLO})
        assert caught.value.code == "unauthorized"
    finally:
        await runestone.aclose()


def test_a_server_never_forwards_to_another_gateway(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    gateway = make_gateway(
        env={"RUNESTONE_GATEWAY_MODE": "true", "RUNESTONE_URL": "http://127.0.0.1:9"}
    )
    response = httpx.post(
        f"{gateway.base_url}/chat/completions", json={"model": "smart", "messages": HELLO}
    )
    assert response.status_code == 200
    assert len(fake.seen) == 1


def test_mounted_in_a_starlette_app(
    server_thread: ServerThread, fake: FakeProvider, tmp_path: Path
) -> None:
    import uvicorn

    path = tmp_path / "aliases.yaml"
    path.write_text(TEST_ALIASES)
    env = provider_env(fake)
    gateway_app = create_app(Settings.from_env(env), aliases_path=path, environ=env)
    host = Starlette(routes=[Mount("/llm", app=gateway_app)])
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(host, log_level="warning", lifespan="on"))

    async def start() -> asyncio.Task[None]:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        return task

    task = server_thread.run(start())
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/llm/v1/chat/completions"
        response = httpx.post(url, json={"model": "smart", "messages": HELLO})
        assert response.status_code == 200, response.text
        assert orjson.loads(response.content)["model"] == "gpt-4"
        stream = httpx.post(url, json={"model": "echo", "stream": True, "messages": HELLO})
        assert stream.content.endswith(b"data: [DONE]\n\n")
    finally:
        server.should_exit = True
        server_thread.run(asyncio.wait_for(task, 10))
        server_thread.run(gateway_app.shutdown())
        sock.close()


LIBRARY_KEY = "rsk-library-key-0123456789"
KEYED_ALIASES = (
    TEST_ALIASES
    + 'prices:\n  "openai:gpt-4": {input: 10, output: 1000}\n'
    + f"keys:\n  app:\n    hash: sha256:{digest(LIBRARY_KEY)}\n    rpm: 2\n"
    + "    budgets: [{usd: 1, per: day}]\n"
)


@pytest.fixture
async def keyed(
    fake: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[None]:
    library_env(monkeypatch, fake, tmp_path / "aliases.yaml", KEYED_ALIASES)
    monkeypatch.setenv("RUNESTONE_STATE_PATH", str(tmp_path / "state.sqlite3"))
    yield
    await runestone.aclose()


async def _spend() -> dict[str, Any]:
    from runestone._library import LocalBackend, default_backend

    backend = await default_backend()
    assert isinstance(backend, LocalBackend)
    gateway = backend.gateway
    await asyncio.sleep(0.1)  # settlements are written in a later turn of the loop
    return await gateway.access.report(gateway.aliases.table, "app")


@pytest.mark.usefixtures("keyed")
async def test_the_library_applies_a_keys_limits_and_books_its_spend() -> None:
    same_minute()
    await runestone.route_chat({"model": "smart", "messages": HELLO}, key=LIBRARY_KEY)
    streamed = runestone.route_stream({"model": "smart", "messages": HELLO}, key=LIBRARY_KEY)
    assert [c async for c in streamed]
    with pytest.raises(runestone.ClientError) as caught:
        await runestone.route_chat({"model": "smart", "messages": HELLO}, key=LIBRARY_KEY)
    assert caught.value.code == "rate_limited"
    report = await _spend()
    (row,) = report["spend"]["today"]
    # 5 in and 7 out for the answer, 5 in and 3 out for the stream, as the fake said.
    assert (row["requests"], row["input_tokens"], row["output_tokens"]) == (2, 10, 10)
    assert row["usd"] == pytest.approx(0.00705 + 0.00305)
    # The service's own calls, without a key, are not limited.
    await runestone.route_chat({"model": "smart", "messages": HELLO})


@pytest.mark.usefixtures("keyed")
async def test_the_library_refuses_an_unknown_key() -> None:
    with pytest.raises(runestone.ClientError) as caught:
        await runestone.route_chat({"model": "smart", "messages": HELLO}, key="rsk-not-a-key")
    assert caught.value.code == "unauthorized"
    assert "route_chat" in caught.value.message and "/v1" not in caught.value.message
    with pytest.raises(runestone.ClientError):
        await chunks(runestone.route_stream({"model": "echo", "messages": HELLO}, key="nope"))


@pytest.mark.usefixtures("keyed")
async def test_a_cancelled_library_call_gives_its_lease_back(fake: FakeProvider) -> None:
    async def slow(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.json_response({})

    fake.on("gpt-4", slow)
    call = asyncio.ensure_future(
        runestone.route_chat({"model": "smart", "messages": HELLO}, key=LIBRARY_KEY)
    )
    await asyncio.sleep(0.3)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    report = await _spend()
    budget = next(lim for lim in report["keys"][0]["limits"] if lim["limit"] == "usd/day")
    assert budget["reserved"] == 0
    assert report["spend"]["today"] == []  # no answer came: nothing was charged
