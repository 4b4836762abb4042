"""Every refusal is visible and attributed: in the metrics, the request log and the
console, and an error that had a target says which, with its attempts."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway, error_response, same_minute
from tests.test_access import HI, KEYS, SERVICE, key_entry
from tests.test_accounting import aliases, begin
from tests.test_telemetry import scrape, value

OPERATOR = {"authorization": f"Bearer {SERVICE}"}


def ask(gateway: Gateway, token: str | None, model: str = "smart") -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": model, "messages": HI},
        headers=headers,
        timeout=10,
    )


def console(gateway: Gateway) -> dict[str, object]:
    answer = httpx.get(f"{gateway.url}/console/api/overview", headers=OPERATOR, timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_refusals_are_counted_logged_and_shown(
    make_gateway: MakeGateway,
    fake: FakeProvider,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = {"RUNESTONE_STATE_PATH": str(tmp_path / "state.sqlite3")}
    keys = key_entry("a", rpm="1", models="[smart]")
    gateway = begin(make_gateway, fake, aliases(keys), state)
    same_minute()
    with caplog.at_level(logging.INFO, logger="runestone.requests"):
        assert ask(gateway, "rsk-a-stranger").status_code == 401
        assert ask(gateway, None).status_code == 401
        assert ask(gateway, KEYS["a"], "echo").status_code == 403
        assert ask(gateway, KEYS["a"]).status_code == 200
        assert ask(gateway, KEYS["a"]).status_code == 429
        time.sleep(0.1)
    samples = scrape(gateway.url, SERVICE)
    for code, count in (("unauthorized", 2), ("model_not_allowed", 1), ("rate_limited", 1)):
        assert value(samples, "runestone_requests_total", code=code) == count, code
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "runestone.requests"]
    assert [line["status"] for line in lines] == [401, 401, 403, 200, 429]
    assert lines[0]["code"] == "unauthorized" and lines[0]["key"] is None
    assert not any("rsk-a-stranger" in r.getMessage() for r in caplog.records)
    refusals = console(gateway)["keys"]["refusals"]  # type: ignore[index]
    assert [r["code"] for r in refusals][:5] == [
        "rate_limited",
        "model_not_allowed",
        "unauthorized",
        "unauthorized",
    ][:5]


def test_a_paused_target_is_named_in_the_errors_headers_and_the_console(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    fake.on("gpt-4", error_response(500, {"error": {"message": "boom", "type": "server_error"}}))
    gateway = make_gateway(
        "defaults: {retries: 0}\naliases:\n  smart: openai:gpt-4\n",
        service_token=SERVICE,
        breaker_failures=1,
    )
    assert ask(gateway, SERVICE).status_code == 502
    paused = ask(gateway, SERVICE)
    assert paused.status_code == 503 and paused.json()["error"]["code"] == "no_healthy_upstream"
    assert paused.headers["x-runestone-target"] == "openai:gpt-4"
    assert paused.headers["x-runestone-attempts"] == "0"
    (failure, *_) = console(gateway)["failures"]  # type: ignore[misc]
    assert failure["code"] == "no_healthy_upstream" and failure["target"] == "openai:gpt-4"


def test_an_unconfigured_provider_is_named_in_the_errors_headers_and_the_console(
    make_gateway: MakeGateway,
) -> None:
    gateway = make_gateway(
        "aliases:\n  far: together:llama\n", service_token=SERVICE, env={"TOGETHER_API_KEY": ""}
    )
    refused = ask(gateway, SERVICE, "far")
    assert refused.json()["error"]["code"] == "provider_not_configured"
    assert refused.headers["x-runestone-target"] == "together:llama"
    assert refused.headers["x-runestone-attempts"] == "0"
    (failure, *_) = console(gateway)["failures"]  # type: ignore[misc]
    assert failure["target"] == "together:llama"
