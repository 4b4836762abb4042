"""The upstream boundary is the adapter: only its transport's known errors become an
upstream's fault; a bug of the gateway's own is ``internal_error``, logged once with its
traceback, never retried and never counted against a target's breaker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from runestone.providers import _registry as provider_registry
from runestone.providers import register_adapter
from tests.conftest import MakeGateway
from tests.servers import Gateway, chunk

OPERATOR = "boundary-token"
HI = [{"role": "user", "content": "hi"}]


class _BuggyStream:
    """An upstream stream whose second read is not bytes: a bug in an adapter."""

    async def _chunks(self) -> AsyncIterator[Any]:
        yield chunk("m", {"role": "assistant", "content": "Hello"})
        yield "not bytes"

    def chunks(self) -> AsyncIterator[Any]:
        return self._chunks()

    def close(self) -> None:
        pass

    async def finish(self) -> None:
        pass


class _Buggy:
    calls = 0

    async def complete(self, call: Any) -> Any:
        _Buggy.calls += 1
        raise RuntimeError("a bug in an adapter")

    async def open_stream(self, call: Any) -> Any:
        _Buggy.calls += 1
        return _BuggyStream()


@pytest.fixture
def buggy_mock() -> Iterator[None]:
    pair = ("chat", "mock")
    original = provider_registry._ADAPTERS[pair]
    register_adapter("chat", "mock", lambda context: _Buggy())
    _Buggy.calls = 0
    yield
    provider_registry._ADAPTERS[pair] = original


def breaker(gateway: Gateway) -> dict[str, Any]:
    ready = httpx.get(
        f"{gateway.url}/health/ready", headers={"authorization": f"Bearer {OPERATOR}"}
    ).json()
    (found,) = [b for b in ready["breakers"] if b["target"].startswith("mock:echo")]
    return dict(found)


def start(make_gateway: MakeGateway) -> Gateway:
    return make_gateway(
        "defaults: {retries: 2}\naliases:\n  echo: mock:echo\n", service_token=OPERATOR
    )


def ask(gateway: Gateway, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "echo", "messages": HI, **body},
        headers={"authorization": f"Bearer {OPERATOR}"},
        timeout=10,
    )


@pytest.mark.usefixtures("buggy_mock")
def test_a_bug_mid_stream_is_the_gateways_fault(
    make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = start(make_gateway)
    with caplog.at_level(logging.ERROR):
        answer = ask(gateway, stream=True)
    assert answer.status_code == 200
    last = answer.text.strip().split("\n\n")[-1]
    error = orjson.loads(last.removeprefix("data: "))["error"]
    assert error["code"] == "internal_error" and error["retryable"] is False
    assert "[DONE]" not in answer.text
    state = breaker(gateway)
    assert state["consecutive_failures"] == 0 and state["in_flight"] == 0
    tracebacks = [r for r in caplog.records if r.exc_info and "TypeError" in str(r.exc_info[1])]
    tracebacks += [r for r in caplog.records if r.exc_info and r.exc_info[0] is TypeError]
    assert len({id(r) for r in tracebacks}) == 1


@pytest.mark.usefixtures("buggy_mock")
def test_a_bug_in_an_adapter_is_not_retried_nor_counted(
    make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = start(make_gateway)
    with caplog.at_level(logging.ERROR):
        answer = ask(gateway)
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "internal_error"
    assert _Buggy.calls == 1  # not retried, though the alias allows two retries
    state = breaker(gateway)
    assert state["consecutive_failures"] == 0 and state["in_flight"] == 0
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)
