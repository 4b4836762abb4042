"""The HTTP API against a running gateway: auth, validation, routing, errors, health."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

import runestone.routing.router
from tests.conftest import TEST_ALIASES, MakeGateway
from tests.servers import (
    FakeProvider,
    Gateway,
    error_response,
    free_socket,
    send_stream,
    stream_events,
)

HELLO = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}


def chat(gateway: Gateway, body: Any = None, **kwargs: Any) -> httpx.Response:
    if "content" not in kwargs:
        kwargs["json"] = HELLO if body is None else body
    return httpx.post(f"{gateway.base_url}/chat/completions", timeout=10, **kwargs)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    error: dict[str, Any] = body["error"]
    assert error["status"] == response.status_code
    return error


# --- auth -------------------------------------------------------------------------------------


@pytest.fixture
def guarded(make_gateway: MakeGateway) -> Gateway:
    return make_gateway(service_token="s3cret-token")


def test_token_required_on_v1(guarded: Gateway) -> None:
    missing = chat(guarded)
    assert missing.status_code == 401
    assert error_of(missing)["code"] == "unauthorized"
    wrong = chat(guarded, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    models = httpx.get(f"{guarded.base_url}/models")
    assert models.status_code == 401


def test_right_token_passes(guarded: Gateway) -> None:
    response = chat(guarded, headers={"authorization": "Bearer s3cret-token"})
    assert response.status_code == 200


def test_health_stays_open_with_a_token(guarded: Gateway) -> None:
    assert httpx.get(f"{guarded.url}/health/live").status_code == 200
    assert httpx.get(f"{guarded.url}/health/ready").status_code == 200


# --- request validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "code", "needle"),
    [
        (b'{"model": "smart", "messages": [', "invalid_json", "not valid JSON"),
        (b"", "invalid_json", "empty"),
        (b"[1, 2]", "invalid_request", "JSON object"),
        (b'{"model": "smart"}', "invalid_request", "'messages'"),
        (b'{"model": "smart", "messages": []}', "invalid_request", "'messages'"),
        (
            b'{"model": 42, "messages": [{"role": "user", "content": "x"}]}',
            "invalid_request",
            "'model'",
        ),
        (
            b'{"model": "", "messages": [{"role": "user", "content": "x"}]}',
            "invalid_request",
            "'model'",
        ),
        (
            b'{"model": "smart", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}',
            "invalid_request",
            "'stream'",
        ),
    ],
)
def test_bad_requests_get_a_400_envelope(
    gateway: Gateway, fake: FakeProvider, content: bytes, code: str, needle: str
) -> None:
    response = chat(gateway, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert needle in error["message"]
    assert fake.seen == []


def test_body_over_the_limit_is_413(make_gateway: MakeGateway, fake: FakeProvider) -> None:
    gateway = make_gateway(max_body_bytes=1000)
    big = {**HELLO, "messages": [{"role": "user", "content": "x" * 2000}]}
    response = chat(gateway, big)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"
    # and without a content-length header (chunked upload)
    chunked = chat(gateway, content=iter([b'{"model": "smart", "messages": "', b"x" * 2000, b'"}']))
    assert chunked.status_code == 413
    assert fake.seen == []


def test_unknown_path_and_wrong_method(gateway: Gateway) -> None:
    missing = httpx.get(f"{gateway.url}/v1/nope")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"
    wrong = httpx.get(f"{gateway.base_url}/chat/completions")
    assert wrong.status_code == 405
    assert error_of(wrong)["code"] == "method_not_allowed"


# --- request ids -----------------------------------------------------------------------------


def test_request_id_is_generated(gateway: Gateway) -> None:
    one, two = chat(gateway), chat(gateway)
    assert one.headers["x-request-id"].startswith("req_")
    assert one.headers["x-request-id"] != two.headers["x-request-id"]


def test_sane_client_request_id_is_kept_insane_one_replaced(gateway: Gateway) -> None:
    kept = chat(gateway, headers={"x-request-id": "trace-abc.123"})
    assert kept.headers["x-request-id"] == "trace-abc.123"
    replaced = chat(gateway, headers={"x-request-id": "bad id with spaces" + "x" * 200})
    assert replaced.headers["x-request-id"].startswith("req_")


# --- routing and upstream failures -----------------------------------------------------------


def test_unknown_alias_is_404_with_hints(gateway: Gateway) -> None:
    response = chat(gateway, {**HELLO, "model": "Smart"})
    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert "'smart'" in error["message"]
    assert "provider:model" in error["message"]


def test_unknown_provider_lists_the_known_ones(gateway: Gateway) -> None:
    response = chat(gateway, {**HELLO, "model": "opnai:gpt-4"})
    assert response.status_code == 404
    assert "known providers:" in error_of(response)["message"]
    assert "openai" in error_of(response)["message"]


def test_missing_key_names_the_variable(make_gateway: MakeGateway, fake: FakeProvider) -> None:
    gateway = make_gateway(env={"GROQ_API_KEY": ""})
    response = chat(gateway, {**HELLO, "model": "fast"})
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "provider_not_configured"
    assert "GROQ_API_KEY" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert fake.seen == []


def test_retryable_failure_falls_over_to_the_next_target(
    gateway: Gateway, fake: FakeProvider
) -> None:
    fake.on("broken", error_response(503, {"error": {"message": "overloaded"}}))
    response = chat(gateway, {**HELLO, "model": "pair"})
    assert response.status_code == 200
    assert response.headers["x-runestone-attempts"] == "2"
    assert response.headers["x-runestone-target"] == "openai:gpt-4o"
    assert [s.body["model"] for s in fake.seen] == ["broken", "gpt-4o"]


def test_client_error_is_not_failed_over(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("broken", error_response(400, {"error": {"message": "bad 'tools'", "param": "tools"}}))
    response = chat(gateway, {**HELLO, "model": "pair"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "upstream_bad_request"
    assert len(fake.seen) == 1


def test_upstream_401_is_a_gateway_fault_not_a_401(gateway: Gateway, fake: FakeProvider) -> None:
    fake.on(
        "gpt-4",
        error_response(
            401,
            {
                "error": {
                    "message": "Incorrect API key provided: sk-ope***test",
                    "code": "invalid_api_key",
                }
            },
        ),
    )
    response = chat(gateway)
    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "upstream_auth_failed"
    assert "sk-ope" not in response.text


def test_connection_refused(make_gateway: MakeGateway) -> None:
    closed = free_socket()
    port = closed.getsockname()[1]
    closed.close()
    gateway = make_gateway(env={"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"})
    response = chat(gateway)
    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "upstream_connection_failed"
    assert error["retryable"] is True
    assert f"127.0.0.1:{port}" in error["message"]


def test_upstream_that_never_answers_times_out(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    gateway = make_gateway(read_timeout=0.3)

    async def hang(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    fake.on("gpt-4", hang)
    started = time.monotonic()
    response = chat(gateway)
    assert time.monotonic() - started < 3
    assert response.status_code == 504
    assert error_of(response)["code"] == "upstream_timeout"


def test_a_connection_reused_after_a_stream_keeps_its_read_timeout(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    # A stream drops aiohttp's read timer on its connection once relaying (the relay
    # bounds silence itself); the pool reuses that connection, and the next request on
    # it must be bounded by RUNESTONE_READ_TIMEOUT again.
    gateway = make_gateway(read_timeout=0.3)
    events = stream_events("gpt-4", ["Hi", "!"])

    async def stream(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, events, delay=0.01)

    async def hang(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    fake.on("gpt-4", stream)
    streamed = chat(gateway, {**HELLO, "stream": True})
    assert streamed.content.endswith(b"data: [DONE]\n\n")
    fake.on("gpt-4", hang)
    started = time.monotonic()
    response = chat(gateway)
    assert time.monotonic() - started < 3
    assert error_of(response)["code"] == "upstream_timeout"
    assert len({seen.peer for seen in fake.seen}) == 1  # the same upstream connection


def test_upstream_200_that_is_not_json(gateway: Gateway, fake: FakeProvider) -> None:
    async def html(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    fake.on("gpt-4", html)
    response = chat(gateway)
    assert response.status_code == 502
    assert error_of(response)["code"] == "upstream_invalid_response"


def test_an_operation_a_target_cannot_do_is_501(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.base_url}/messages/count_tokens",
        json={"model": "smart", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 501
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["code"] == "provider_not_supported"
    assert "token counting" in body["error"]["message"]


# --- providers declared in the alias file, hot-reloaded ---------------------------------------


def test_custom_provider_from_the_file_with_hot_reload(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    gateway = make_gateway(env={"MYLLM_KEY": "k-123"})
    assert chat(gateway, {**HELLO, "model": "mine"}).status_code == 404
    path = Path(gateway.app.aliases.path)
    path.write_text(
        TEST_ALIASES
        + "  mine: myllm:tiny-1\nproviders:\n  myllm:\n"
        + f"    base_url: {fake.url}/custom/v1\n    api_key_env: MYLLM_KEY\n"
        + "    headers: {X-Title: runestone-tests}\n"
    )
    deadline = time.monotonic() + 3
    while gateway.app.aliases.get("mine") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    response = chat(gateway, {**HELLO, "model": "mine"})
    assert response.status_code == 200
    seen = fake.seen[-1]
    assert seen.path == "/custom/v1/chat/completions"
    assert seen.headers["Authorization"] == "Bearer k-123"
    assert seen.headers["X-Title"] == "runestone-tests"
    assert seen.body["model"] == "tiny-1"


def test_routes_are_worked_out_once_per_table(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model name is resolved once per alias table: after a reload it goes where the
    new table says; names a client makes up do not grow the kept routes without end; a
    target that cannot be called fails alike every time (its error is not kept)."""
    monkeypatch.setattr(runestone.routing.router, "_ROUTES_KEPT", 4)
    gateway = make_gateway()
    routes = gateway.app.router._routes  # type: ignore[union-attr]
    assert chat(gateway, {**HELLO, "model": "fast"}).headers["x-runestone-target"] == (
        "groq:llama3-8b-8192"
    )
    path = Path(gateway.app.aliases.path)
    path.write_text(TEST_ALIASES.replace("groq:llama3-8b-8192", "openai:gpt-4o-mini"))
    deadline = time.monotonic() + 3
    while str(gateway.app.aliases.get("fast").targets[0]) != "openai:gpt-4o-mini":  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the alias file was not reloaded"
        time.sleep(0.02)
    assert chat(gateway, {**HELLO, "model": "fast"}).headers["x-runestone-target"] == (
        "openai:gpt-4o-mini"
    )
    for i in range(10):
        answered = chat(gateway, {**HELLO, "model": f"openai:made-up-{i}"})
        assert answered.headers["x-runestone-target"] == f"openai:made-up-{i}"
    assert len(gateway.app.router._routes) == 4  # type: ignore[union-attr]
    assert routes is not gateway.app.router._routes  # type: ignore[union-attr]
    unconfigured = [chat(gateway, {**HELLO, "model": "mistral:small"}) for _ in range(2)]
    assert [r.status_code for r in unconfigured] == [500, 500]
    first, second = (error_of(r) for r in unconfigured)
    assert first == second and first["code"] == "provider_not_configured"


# --- models and health -----------------------------------------------------------------------


def test_models_lists_aliases_and_usable_targets(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.base_url}/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    for expected in ("fast", "smart", "pair", "echo", "openai:gpt-4", "mock:echo"):
        assert expected in ids
    assert all(m["object"] == "model" for m in body["data"])


def test_health(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.url}/health/live").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/health/ready").json()
    assert ready["status"] == "ready"
    assert ready["aliases"]["count"] == 5
    assert ready["aliases"]["version"] == gateway.app.aliases.table.version
    assert ready["aliases"]["ok"] is True


def test_ready_reports_a_failed_reload(gateway: Gateway) -> None:
    Path(gateway.app.aliases.path).write_text("aliases:\n  a: nocolon\n")
    deadline = time.monotonic() + 3
    while gateway.app.aliases.status.reloads_failed == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    ready = httpx.get(f"{gateway.url}/health/ready")
    assert ready.status_code == 200  # still serving the last good table
    assert ready.json()["aliases"]["ok"] is False
    assert "nocolon" in ready.json()["aliases"]["error"]
    assert chat(gateway).status_code == 200
