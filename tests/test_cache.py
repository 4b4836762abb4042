"""The exact response cache, against real gateways and a counting fake provider, on
both stores: hits are free and say so, answers are never shared between requests that
differ in what changes an answer nor between keys unless configured, only clean streams
are kept, identical misses make one call, and a failing store fails nothing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from runestone.access import digest
from tests.conftest import provider_env
from tests.servers import FakeProvider, chunk, completion, free_socket, keep, send_stream
from tests.test_admin_api import ADMIN, store_env, within
from tests.test_serve import Served, processes, serve
from tests.test_telemetry import scrape, value

__all__ = ["processes", "store_env"]

KEYS = {name: f"rsk-cache-test-{name}-0123456789" for name in ("a", "b", "c", "d", "e")}
ALIASES = (
    "defaults: {retries: 0}\n"
    "aliases:\n"
    "  cached: {targets: [openai:counting], cache: {ttl: 10m}}\n"
    "  shared: {targets: [openai:counting], cache: {ttl: 10m, scope: global}}\n"
    "  by-team: {targets: [openai:counting], cache: {ttl: 10m, scope: team}}\n"
    "  sampled: {targets: [openai:counting], cache: {ttl: 10m, temperature: true}}\n"
    "  cut: {targets: [openai:cut], cache: {ttl: 10m}}\n"
    "  broken: {targets: [openai:broken], cache: {ttl: 10m}}\n"
    "  slow: {targets: [openai:slow], cache: {ttl: 10m}}\n"
    "  plain: openai:counting\n"
    'prices:\n  "openai:counting": {input: 1000, output: 2000}\n'
    '  "openai:slow": {input: 1000, output: 2000}\n'
    "teams:\n  one: {rpm: 1000}\n  two: {rpm: 1000}\n"
    "keys:\n"
    f"  a:\n    hash: sha256:{digest(KEYS['a'])}\n    team: one\n"
    "    budgets: [{usd: 100, per: day}]\n"
    f"  b:\n    hash: sha256:{digest(KEYS['b'])}\n    team: one\n"
    f"  c:\n    hash: sha256:{digest(KEYS['c'])}\n    team: two\n"
    f"  d:\n    hash: sha256:{digest(KEYS['d'])}\n    cache: {{ttl: 1m}}\n"
    f"  e:\n    hash: sha256:{digest(KEYS['e'])}\n    models: [plain]\n"
)
HI = [{"role": "user", "content": "hi"}]


class Upstream:
    """A provider whose every answer is new (``answer 1``, ``answer 2``...): a repeated
    answer can only have come from the cache."""

    def __init__(self, fake: FakeProvider) -> None:
        self.calls = 0
        self._numbers = itertools.count(1)
        fake.on("counting", self._counting)
        fake.on("slow", self._slow)
        fake.on("cut", self._cut)
        fake.on("broken", self._broken)

    async def _counting(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        self.calls += 1
        text = f"answer {next(self._numbers)}"
        if body.get("stream"):
            events = [chunk(body["model"], {"role": "assistant", "content": ""})]
            events += [chunk(body["model"], {"content": word}) for word in text.split(" ")]
            events.append(chunk(body["model"], {}, "stop"))
            usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
            tail = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage}
            events.append(b"data: " + orjson.dumps(tail) + b"\n\n")
            events.append(b"data: [DONE]\n\n")
            return await send_stream(request, events)
        return web.json_response(completion(body["model"], text))

    async def _slow(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        self.calls += 1
        await asyncio.sleep(0.5)
        return web.json_response(completion(body["model"], f"slow {next(self._numbers)}"))

    async def _cut(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        self.calls += 1
        events = [chunk(body["model"], {"role": "assistant", "content": "half"})]
        return await send_stream(request, events, then="drop")

    async def _broken(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        self.calls += 1
        return web.json_response({"error": {"message": "down"}}, status=500)


@pytest.fixture
def upstream(fake: FakeProvider) -> Upstream:
    return Upstream(fake)


@pytest.fixture
def gateway(
    tmp_path: Path, processes: list[Served], store_env: dict[str, str], fake: FakeProvider
) -> Served:
    processes.append(
        serve(
            tmp_path,
            aliases=ALIASES,
            RUNESTONE_ADMIN_TOKEN=ADMIN,
            **provider_env(fake),
            **store_env,
        )
    )
    return processes[-1]


def ask(
    url: str, key: str = "a", headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    """A chat request with key ``key`` (``none``: no credentials)."""
    sent = {"authorization": f"Bearer {KEYS[key]}"} if key in KEYS else {}
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "cached", "messages": HI} | body,
        headers=sent | (headers or {}),
        timeout=10,
    )


def free_port() -> int:
    sock = free_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def text(answer: httpx.Response) -> str:
    return str(answer.json()["choices"][0]["message"]["content"])


def test_a_repeated_request_is_a_free_hit(gateway: Served, upstream: Upstream) -> None:
    first = ask(gateway.url)
    assert first.status_code == 200 and first.headers["x-runestone-cache"] == "miss"
    cost = float(first.headers["x-runestone-cost-usd"])
    within(2.0, lambda: ask(gateway.url).headers["x-runestone-cache"] == "hit")
    again = ask(gateway.url)
    assert again.headers["x-runestone-cache"] == "hit" and text(again) == text(first)
    assert again.json() == first.json()  # as its client first received it
    assert float(again.headers["x-runestone-cost-usd"]) == 0
    assert float(again.headers["x-runestone-cache-saved-usd"]) == pytest.approx(cost)
    assert upstream.calls == 1
    usage = httpx.get(
        f"{gateway.url}/admin/usage", headers={"authorization": f"Bearer {ADMIN}"}
    ).json()
    (row,) = [r for r in usage["spend"]["today"] if r["key"] == "a"]
    assert row["requests"] == 1 and row["usd"] == pytest.approx(cost)  # hits spend nothing
    metrics = scrape(gateway.url, ADMIN)
    hits = value(metrics, "runestone_cache_lookups_total", result="hit")
    assert hits >= 2 and value(metrics, "runestone_cache_lookups_total", result="miss") == 1
    saved = value(metrics, "runestone_cache_saved_usd_total")
    assert saved == pytest.approx(cost * hits)
    assert '"cache":"hit"' in gateway.stderr() and '"cache":"miss"' in gateway.stderr()
    # An alias without a cache says nothing of one.
    assert "x-runestone-cache" not in ask(gateway.url, model="plain").headers


#: Requests that differ from the first in a field that changes the answer.
DIFFERENT: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "hi!"}]},
    {"messages": [{"role": "system", "content": "be brief"}, *HI]},
    {"max_tokens": 5},
    {"temperature": 0},
    {"top_p": 0.5},
    {"stop": ["x"]},
    {"seed": 7},
    {"n": 2},
    {"response_format": {"type": "json_object"}},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"tool_choice": "none"},
    {"reasoning_effort": "low"},
    {"model": "sampled"},
]
#: Fields that do not change the answer: served from the first one's entry.
SAME: list[dict[str, Any]] = [
    {"user": "someone"},
    {"safety_identifier": "someone"},
    {"metadata": {"run": "7"}},
    {"prompt_cache_key": "abc"},
    {"stream_options": {"include_usage": True}},
]


def test_requests_that_differ_in_the_answer_never_share_an_entry(
    gateway: Served, upstream: Upstream
) -> None:
    first = ask(gateway.url)
    within(2.0, lambda: ask(gateway.url).headers["x-runestone-cache"] == "hit")
    for change in DIFFERENT:
        calls = upstream.calls
        answer = ask(gateway.url, **change)
        assert answer.status_code == 200, (change, answer.text)
        assert answer.headers["x-runestone-cache"] == "miss", change
        assert upstream.calls == calls + 1 and text(answer) != text(first), change
    for change in SAME:
        answer = ask(gateway.url, **change)
        assert answer.headers["x-runestone-cache"] == "hit", change
        assert text(answer) == text(first), change


def test_keys_share_entries_only_when_configured(gateway: Served, upstream: Upstream) -> None:
    for alias, shared_with in (("cached", set()), ("by-team", {"b"}), ("shared", {"b", "c"})):
        first = ask(gateway.url, "a", model=alias)
        within(
            2.0,
            lambda alias=alias: (
                ask(gateway.url, "a", model=alias).headers["x-runestone-cache"] == "hit"
            ),
        )
        for other in ("b", "c"):
            answer = ask(gateway.url, other, model=alias)
            expected = "hit" if other in shared_with else "miss"
            assert answer.headers["x-runestone-cache"] == expected, (alias, other)
            assert (text(answer) == text(first)) == (other in shared_with), (alias, other)


def test_streams_are_kept_whole_and_replayed_byte_for_byte(
    gateway: Served, upstream: Upstream
) -> None:
    def stream() -> httpx.Response:
        return ask(gateway.url, stream=True, stream_options={"include_usage": True})

    first = stream()
    assert first.headers["x-runestone-cache"] == "miss"
    within(2.0, lambda: stream().headers["x-runestone-cache"] == "hit")
    again = stream()
    assert again.content == first.content and b'"usage"' in again.content
    assert again.headers["content-type"].startswith("text/event-stream")
    assert upstream.calls == 1
    # The official SDK reads the replay as a stream, with its usage.
    client = keep(openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEYS["a"], max_retries=0))
    chunks = list(
        client.chat.completions.create(
            model="cached",
            messages=HI,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "answer1"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
    # A stream and a whole answer are not each other's; nor with and without usage.
    assert ask(gateway.url).headers["x-runestone-cache"] == "miss"
    assert ask(gateway.url, stream=True).headers["x-runestone-cache"] == "miss"


def test_cut_and_failed_answers_are_never_kept(gateway: Served, upstream: Upstream) -> None:
    for _ in range(2):
        cut = ask(gateway.url, model="cut", stream=True)
        assert cut.headers["x-runestone-cache"] == "miss"
        assert b"[DONE]" not in cut.content
    for _ in range(2):
        broken = ask(gateway.url, model="broken")
        assert broken.status_code >= 500
    assert upstream.calls == 4  # each went upstream: nothing was kept


def test_cache_control_and_temperature_bypass(gateway: Served, upstream: Upstream) -> None:
    first = ask(gateway.url)
    within(2.0, lambda: ask(gateway.url).headers["x-runestone-cache"] == "hit")
    fresh = ask(gateway.url, headers={"cache-control": "no-cache"})
    assert fresh.headers["x-runestone-cache"] == "bypass" and text(fresh) != text(first)
    # no-cache stored the fresh answer: the next plain request gets it.
    within(2.0, lambda: text(ask(gateway.url)) == text(fresh))
    calls = upstream.calls
    private = ask(gateway.url, headers={"cache-control": "no-store"}, max_tokens=9)
    assert private.headers["x-runestone-cache"] == "bypass"
    assert ask(gateway.url, max_tokens=9).headers["x-runestone-cache"] == "miss"
    assert upstream.calls == calls + 2
    warm = [ask(gateway.url, temperature=0.8) for _ in range(2)]
    assert [a.headers["x-runestone-cache"] for a in warm] == ["bypass", "bypass"]
    sampled = ask(gateway.url, model="sampled", temperature=0.8)
    assert sampled.headers["x-runestone-cache"] == "miss"  # this alias caches it
    within(
        2.0,
        lambda: (
            ask(gateway.url, model="sampled", temperature=0.8).headers["x-runestone-cache"] == "hit"
        ),
    )


def test_identical_misses_at_once_make_one_upstream_call(
    gateway: Served, upstream: Upstream
) -> None:
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: ask(gateway.url, model="slow"), range(6)))
    assert [a.status_code for a in answers] == [200] * 6
    assert upstream.calls == 1
    assert len({text(a) for a in answers}) == 1
    assert sorted(a.headers["x-runestone-cache"] for a in answers) == ["hit"] * 5 + ["miss"]


def test_purge_by_key_alias_or_all(gateway: Served, upstream: Upstream) -> None:
    ask(gateway.url)
    ask(gateway.url, model="shared")
    within(2.0, lambda: ask(gateway.url).headers["x-runestone-cache"] == "hit")
    within(2.0, lambda: ask(gateway.url, model="shared").headers["x-runestone-cache"] == "hit")
    admin = {"authorization": f"Bearer {ADMIN}"}
    dropped = httpx.delete(f"{gateway.url}/admin/cache", params={"key": "a"}, headers=admin)
    assert dropped.status_code == 200 and dropped.json()["dropped"] == 1
    assert ask(gateway.url).headers["x-runestone-cache"] == "miss"
    assert ask(gateway.url, model="shared").headers["x-runestone-cache"] == "hit"
    dropped = httpx.delete(f"{gateway.url}/admin/cache", params={"alias": "shared"}, headers=admin)
    assert dropped.json()["dropped"] == 1
    assert ask(gateway.url, model="shared").headers["x-runestone-cache"] == "miss"
    within(2.0, lambda: ask(gateway.url, model="shared").headers["x-runestone-cache"] == "hit")
    everything = httpx.delete(f"{gateway.url}/admin/cache", params={"all": "true"}, headers=admin)
    assert everything.json()["dropped"] >= 1
    assert httpx.delete(f"{gateway.url}/admin/cache", headers=admin).status_code == 400


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_failing_store_fails_no_request(
    tmp_path: Path, processes: list[Served], fake: FakeProvider, upstream: Upstream, store: str
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "cache.sqlite3").mkdir()  # a directory: the file cannot be opened
    env = {"RUNESTONE_STATE_PATH": str(tmp_path / "state" / "state.sqlite3")}
    if store == "redis":
        dead = f"redis://127.0.0.1:{free_port()}/0"  # nobody there
        env = {"RUNESTONE_REDIS_URL": dead, "RUNESTONE_START_DEGRADED": "true"}
    without_keys = ALIASES.split("teams:")[0]  # the API open: limits need no store
    served = serve(tmp_path, aliases=without_keys, **env, **provider_env(fake))
    processes.append(served)
    answers = [ask(served.url, key="none") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers["x-runestone-cache"] for a in answers] == ["miss"] * 3
    assert upstream.calls == 3
    assert served.stderr().count("response cache: a lookup failed") == 1  # said once


def test_a_key_may_turn_the_cache_on_for_itself(gateway: Served, upstream: Upstream) -> None:
    first = ask(gateway.url, "d", model="plain")  # an alias without a cache of its own
    assert first.headers["x-runestone-cache"] == "miss"
    within(2.0, lambda: ask(gateway.url, "d", model="plain").headers["x-runestone-cache"] == "hit")
    assert text(ask(gateway.url, "d", model="plain")) == text(first)
    assert "x-runestone-cache" not in ask(gateway.url, "a", model="plain").headers


def test_the_cache_keeps_its_bounds_oldest_first(
    tmp_path: Path,
    processes: list[Served],
    store_env: dict[str, str],
    fake: FakeProvider,
    upstream: Upstream,
) -> None:
    served = serve(
        tmp_path,
        aliases=ALIASES,
        RUNESTONE_CACHE_MAX_ENTRIES="2",
        **provider_env(fake),
        **store_env,
    )
    processes.append(served)
    for n in range(3):  # three different requests, kept one after another
        ask(served.url, max_tokens=10 + n)
        within(
            2.0,
            lambda n=n: ask(served.url, max_tokens=10 + n).headers["x-runestone-cache"] == "hit",
        )
    assert ask(served.url, max_tokens=12).headers["x-runestone-cache"] == "hit"
    assert ask(served.url, max_tokens=11).headers["x-runestone-cache"] == "hit"
    assert ask(served.url, max_tokens=10).headers["x-runestone-cache"] == "miss"  # the oldest


def test_a_hit_is_only_for_a_key_that_may_use_the_model(
    gateway: Served, upstream: Upstream
) -> None:
    ask(gateway.url, "a", model="shared")  # a global entry
    within(2.0, lambda: ask(gateway.url, "b", model="shared").headers["x-runestone-cache"] == "hit")
    refused = ask(gateway.url, "e", model="shared")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
