"""Metrics scraped from /metrics after real requests, and the request log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from runestone.telemetry import RequestFinished
from tests.conftest import MakeGateway
from tests.servers import (
    FakeProvider,
    Gateway,
    StreamLog,
    chunk,
    error_response,
    free_socket,
    send_stream,
    wait_ready,
)

HI = [{"role": "user", "content": "hi"}]


def scrape(
    url: str, token: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return samples_of(response.text)


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def post(gateway: Gateway, **body: Any) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/chat/completions", json={"messages": HI, **body})


def test_metrics_after_real_requests(gateway: Gateway, fake: FakeProvider) -> None:
    assert post(gateway, model="smart").status_code == 200
    assert post(gateway, model="smart", stream=True).content.endswith(b"[DONE]\n\n")
    assert post(gateway, model="nope").status_code == 404
    fake.on("broken", error_response(503, {"error": {"message": "overloaded"}}))
    assert post(gateway, model="pair").status_code == 200  # fails over: 2 attempts
    m = scrape(gateway.url)
    assert value(m, "runestone_requests_total", alias="smart", status="200") == 2
    assert value(m, "runestone_requests_total", code="model_not_found", status="404") == 1
    assert value(m, "runestone_requests_total", alias="-", code="model_not_found") == 1
    assert value(m, "runestone_stream_outcomes_total", outcome="complete") == 1
    assert value(m, "runestone_extra_attempts_total", alias="pair") == 1
    # 5 input tokens each, the stream's included: the gateway asked for its usage
    assert value(m, "runestone_tokens_total", provider="openai", direction="input") == 15
    assert value(m, "runestone_request_duration_seconds_count", route="chat") == 4
    assert value(m, "runestone_gateway_overhead_seconds_count", route="chat") == 4
    assert value(m, "runestone_time_to_first_token_seconds_count") == 1
    # The start-up load is not a reload (the hardening issue, item 5).
    assert value(m, "runestone_alias_reloads_total", result="ok") == 0
    assert sum(v for (n, _), v in m.items() if n == "runestone_alias_table_info") == 1
    assert value(m, "runestone_in_flight_requests") == 0
    states = {dict(ls)["target"]: v for (n, ls), v in m.items() if n == "runestone_breaker_state"}
    assert set(states.values()) == {0.0}  # closed


def test_metrics_for_a_truncated_and_a_cancelled_stream(
    gateway: Gateway, fake: FakeProvider
) -> None:
    async def drop(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        events = [chunk("m", {"role": "assistant", "content": ""}), chunk("m", {"content": "x"})]
        return await send_stream(request, events, delay=0.05, then="drop")

    log = StreamLog()

    async def endless(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        events = [chunk("m", {"content": f"w{i}"}) for i in range(200)]
        return await send_stream(request, events, delay=0.02, log=log)

    fake.on("gpt-4", drop)
    post(gateway, model="smart", stream=True)
    fake.on("gpt-4", endless)
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        json={"model": "smart", "stream": True, "messages": HI},
    ) as response:
        next(response.iter_raw())
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        m = scrape(gateway.url)
        if value(m, "runestone_stream_outcomes_total", outcome="client_cancelled") == 1:
            break
        time.sleep(0.05)
    assert value(m, "runestone_stream_outcomes_total", outcome="truncated") == 1
    assert value(m, "runestone_stream_outcomes_total", outcome="client_cancelled") == 1


def test_metrics_can_be_protected(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(service_token="svc", metrics_token="scraper")
    assert httpx.get(f"{gateway.url}/metrics").status_code == 401
    assert (
        httpx.get(f"{gateway.url}/metrics", headers={"authorization": "Bearer svc"}).status_code
        == 403  # a known token, not the scraper's
    )
    scrape(gateway.url, "scraper")


def test_overhead_headers(gateway: Gateway) -> None:
    response = post(gateway, model="smart")
    overhead = float(response.headers["x-runestone-overhead-ms"])
    assert 0 <= overhead < 1000
    assert response.headers["server-timing"].startswith("gateway;dur=")
    assert "upstream;dur=" in response.headers["server-timing"]


def test_one_json_log_line_per_request_without_content(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="runestone.requests"):
        post(gateway, model="smart", messages=[{"role": "user", "content": "a secret prompt"}])
        time.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "runestone.requests"]
    assert len(lines) == 1
    record = orjson.loads(lines[0])
    assert record["alias"] == "smart"
    assert record["target"] == "openai:gpt-4"
    assert record["status"] == 200
    assert record["input_tokens"] == 5
    assert "secret" not in lines[0]
    assert "Hello from the fake" not in lines[0]


def test_overhead_is_duration_minus_upstream() -> None:
    event = RequestFinished(
        request_id="r",
        route="chat",
        alias="-",
        provider="p",
        model="m",
        status=200,
        duration=0.5,
        upstream=0.45,
        outcome="complete",
    )
    assert event.overhead == pytest.approx(0.05)


def test_metrics_sum_over_two_workers(tmp_path: Any, fake: FakeProvider) -> None:
    aliases = tmp_path / "aliases.yaml"
    aliases.write_text("aliases:\n  smart: openai:gpt-4\n")
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNESTONE_", "PROMETHEUS"))}
    env.update(
        RUNESTONE_ALIASES_PATH=str(aliases),
        OPENAI_BASE_URL=f"{fake.url}/v1",
        OPENAI_API_KEY="sk-test",
        RUNESTONE_LOG_FORMAT="json",
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runestone",
            "serve",
            "--port",
            str(port),
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url)
        for _ in range(20):  # new connections, so both workers take some
            with httpx.Client() as client:
                client.post(f"{url}/v1/chat/completions", json={"model": "smart", "messages": HI})
        totals = [value(scrape(url), "runestone_requests_total", alias="smart") for _ in range(4)]
        assert totals == [20, 20, 20, 20]
        samples = scrape(url)
        assert value(samples, "runestone_request_duration_seconds_count", alias="smart") == 20
        inf = value(samples, "runestone_request_duration_seconds_bucket", alias="smart", le="+Inf")
        assert inf == 20
        assert value(samples, "runestone_in_flight_requests") == 0
    finally:
        process.terminate()
        process.wait(20)


def test_cost_from_the_packaged_price_table(gateway: Gateway) -> None:
    response = post(gateway, model="smart")  # openai:gpt-4 at $30/$60 per million
    assert float(response.headers["x-runestone-cost-usd"]) == pytest.approx((5 * 30 + 7 * 60) / 1e6)


def test_prices_in_the_alias_file_win_and_reach_metrics(make_gateway: MakeGateway) -> None:
    from tests.conftest import TEST_ALIASES

    gateway = make_gateway(TEST_ALIASES + "prices:\n  openai:gpt-4: {input: 1000, output: 2000}\n")
    response = post(gateway, model="smart")
    assert float(response.headers["x-runestone-cost-usd"]) == pytest.approx(0.019)
    m = scrape(gateway.url)
    assert value(m, "runestone_cost_usd_total", provider="openai") == pytest.approx(0.019)


def test_no_cost_header_without_a_price(gateway: Gateway) -> None:
    response = post(gateway, model="openai:some-unpriced-model")
    assert response.status_code == 200
    assert "x-runestone-cost-usd" not in response.headers


def test_stream_cost_reaches_metrics(gateway: Gateway) -> None:
    post(gateway, model="smart", stream=True, stream_options={"include_usage": True})
    m = scrape(gateway.url)
    # the fake's stream reports 5 input and 3 output tokens; openai:gpt-4 is $30/$60
    assert value(m, "runestone_cost_usd_total", provider="openai") == pytest.approx(
        (5 * 30 + 3 * 60) / 1e6
    )


def test_stream_usage_is_asked_for_and_hidden_from_the_client(
    gateway: Gateway, fake: FakeProvider
) -> None:
    response = post(gateway, model="smart", stream=True)
    assert response.content.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in response.content, "no chunk the client did not ask for"
    assert fake.seen[-1].body["stream_options"] == {"include_usage": True}
    m = scrape(gateway.url)
    assert value(m, "runestone_tokens_total", direction="output") == 3


def test_stream_usage_the_client_asked_for_is_relayed(gateway: Gateway, fake: FakeProvider) -> None:
    response = post(gateway, model="smart", stream=True, stream_options={"include_usage": True})
    assert b'"usage":{' in response.content.replace(b" ", b"")


def test_overhead_excludes_the_upstream_time(gateway: Gateway, fake: FakeProvider) -> None:
    async def slow(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        import asyncio

        await asyncio.sleep(0.3)
        return web.json_response({"choices": [], "usage": {"prompt_tokens": 1}})

    fake.on("gpt-4", slow)
    response = post(gateway, model="smart")
    timing = dict(
        part.strip().split(";dur=") for part in response.headers["server-timing"].split(",")
    )
    assert float(timing["upstream"]) >= 300
    assert float(timing["gateway"]) < 100
    assert float(response.headers["x-runestone-overhead-ms"]) == float(timing["gateway"])


def test_in_flight_gauges_return_to_zero(gateway: Gateway) -> None:
    post(gateway, model="smart", stream=True)
    m = scrape(gateway.url)
    assert value(m, "runestone_in_flight_streams") == 0
    assert value(m, "runestone_in_flight_requests") == 0


def test_tallied_times_are_exported_as_prometheus_client_would_observe_them() -> None:
    """Times counted in the tallies' buckets, added to a histogram of ours (one process)
    and to prometheus_client's own (the one shared through files), expose exactly what
    observing each time would."""
    from bisect import bisect_left

    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from runestone.telemetry._local_metrics import LocalCounter, LocalHistogram
    from runestone.telemetry.prometheus import _LATENCY_AT, _observed
    from runestone.telemetry.tallies import BOUNDS, LATENCY_BUCKETS

    ours, theirs, observed = CollectorRegistry(), CollectorRegistry(), CollectorRegistry()
    local_h = LocalHistogram("h_seconds", "h", ["route"], ours, LATENCY_BUCKETS)
    local_c = LocalCounter("c", "c", ["route"], ours)
    added_h = Histogram("h_seconds", "h", ["route"], buckets=LATENCY_BUCKETS, registry=theirs)
    added_c = Counter("c", "c", ["route"], registry=theirs)
    real_h = Histogram("h_seconds", "h", ["route"], buckets=LATENCY_BUCKETS, registry=observed)
    real_c = Counter("c", "c", ["route"], registry=observed)
    times = (0.0001, 0.003, 0.005, 0.0051, 0.3, 1.0, 7.0, 300.0, 301.0, 5000.0)  # "le" is <=
    tallied: dict[int, int] = {}
    for seconds in times:
        at = bisect_left(BOUNDS, seconds)
        tallied[at] = tallied.get(at, 0) + 1
        real_h.labels("chat").observe(seconds)
        real_c.labels("chat").inc(seconds)
    _observed(local_h.labels("chat"), tallied, sum(times), _LATENCY_AT)
    _observed(added_h.labels("chat"), tallied, sum(times), _LATENCY_AT)
    local_c.labels("chat").inc(sum(times))
    added_c.labels("chat").inc(sum(times))

    def samples(registry: CollectorRegistry) -> set[str]:
        lines = generate_latest(registry).decode().splitlines()
        return {line for line in lines if not line.startswith("#") and "_created" not in line}

    assert samples(ours) == samples(observed)
    assert samples(theirs) == samples(observed)


def test_usage_is_the_answers_own_and_only_counts() -> None:
    from runestone.telemetry.usage import UNKNOWN, Usage, from_body

    nested = (
        b'{"id":"x","choices":[{"message":{"content":"{\\"usage\\": 1}"}}],"usage":'
        b'{"prompt_tokens":9,"completion_tokens":5,"total_tokens":14,'
        b'"prompt_tokens_details":{"cached_tokens":4},'
        b'"completion_tokens_details":{"reasoning_tokens":0,"x":{"y":{}}}}}'
    )
    assert from_body(nested) == Usage(9, 5, 4)
    assert from_body(b'{"usage": {"input_tokens": 3, "output_tokens": 4}}') == Usage(3, 4)
    # Anthropic's cache reads and writes are input too, apart from its input_tokens.
    cached = b'{"usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 10,'
    cached += b' "cache_creation_input_tokens": 5}}'
    assert from_body(cached) == Usage(18, 4, 10, 5)  # 5 written to the cache
    # A usage object anywhere but at the top is a client's or a model's, not the answer's.
    echoed = b'{"usage": {"input_tokens": 3, "output_tokens": 4}, "metadata": {"usage":'
    echoed += b' {"input_tokens": 0, "output_tokens": 0}}}'
    assert from_body(echoed) == Usage(3, 4)
    assert from_body(b'{"choices":[]}') == UNKNOWN
    assert from_body(b'{"usage":null}') == UNKNOWN
    assert from_body(b'{"usage":{"prompt_tokens":1') == UNKNOWN  # cut short
    for bad in (b'"many"', b"-1", b"1.5", b"true", str(2**63).encode(), b"100000001"):
        assert (
            from_body(b'{"usage":{"prompt_tokens":' + bad + b',"completion_tokens":1}}') == UNKNOWN
        )
    assert from_body(b'{"usage":{"prompt_tokens":7,"total_tokens":7}}', output=False) == Usage(7, 0)


def test_model_labels_stay_bounded_whatever_models_clients_name() -> None:
    from runestone.telemetry.prometheus import MAX_MODELS, PrometheusMetrics
    from runestone.telemetry.tallies import Tallies

    tallies = Tallies()
    metrics = PrometheusMetrics(tallies)
    for n in range(MAX_MODELS + 50):  # provider:model names a client made up
        tallies.started("chat", False)
        kind = ("chat", "-", "openai", f"made-up-{n}", 404, "model_not_found", "-", False, "error")
        tallies.finished(kind, False, 0.01, 0.001, None, None, None, None, 1)
    samples = samples_of(metrics.render().decode())
    requests = [dict(labels) for name, labels in samples if name == "runestone_requests_total"]
    models = {labels["model"] for labels in requests}
    assert len(models) == MAX_MODELS + 1 and "other" in models
    assert value(samples, "runestone_requests_total", model="other") == 50
    assert len(metrics._series) == MAX_MODELS + 1
