from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from runestone.config import Settings
from runestone.http import Mount
from tests.redis_server import RedisServer
from tests.servers import (
    OPEN_CLIENTS,
    FakeProvider,
    Gateway,
    ServerThread,
    start_gateway,
    stop_gateway,
)

# One attempt per target unless a test says otherwise: the resilience tests set their own.
TEST_ALIASES = """
defaults: {retries: 0}
aliases:
  fast: groq:llama3-8b-8192
  smart: {provider: openai, model: gpt-4}
  router: openrouter:anthropic/claude-3-haiku
  pair: {targets: [openai:broken, openai:gpt-4o]}
  echo: mock:echo
"""


@pytest.fixture(autouse=True)
def close_sdk_clients() -> Iterator[None]:
    yield
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; each test keeps to a prefix of its own."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server_thread() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.stop()


@pytest.fixture
def fake(server_thread: ServerThread) -> Iterator[FakeProvider]:
    provider = FakeProvider(server_thread)
    server_thread.run(provider.start())
    yield provider
    server_thread.run(provider.stop())


def provider_env(fake: FakeProvider) -> dict[str, str]:
    """Every built-in OpenAI-compatible provider pointed at the fake, as its SDK means it."""
    return {
        "OPENAI_BASE_URL": f"{fake.url}/v1",
        "OPENAI_API_KEY": "sk-openai-test",
        "GROQ_BASE_URL": fake.url,
        "GROQ_API_KEY": "gsk-test",
        "OPENROUTER_BASE_URL": f"{fake.url}/api/v1",
        "OPENROUTER_API_KEY": "sk-or-test",
    }


MakeGateway = Callable[..., Gateway]


def _transport_env() -> dict[str, str]:
    """The suite runs on the transport the environment names (the gates of either)."""
    kind = os.environ.get("RUNESTONE_UPSTREAM_TRANSPORT")
    return {"RUNESTONE_UPSTREAM_TRANSPORT": kind} if kind else {}


@pytest.fixture
def make_gateway(
    server_thread: ServerThread, fake: FakeProvider, tmp_path: Path
) -> Iterator[MakeGateway]:
    """Start a real gateway (uvicorn + the ASGI app) against the fake provider."""
    started: list[Gateway] = []

    def make(
        aliases_yaml: str = TEST_ALIASES,
        env: dict[str, str] | None = None,
        mounts: Sequence[Mount] = (),
        **settings: Any,
    ) -> Gateway:
        path = tmp_path / f"aliases-{len(started)}.yaml"
        path.write_text(aliases_yaml)
        full_env = {**provider_env(fake), **_transport_env(), **(env or {})}
        base = Settings.from_env(full_env)
        # Each test's own state (limits, spend, stored responses) unless it names one.
        own_state = {"state_path": tmp_path / "state" / "state.sqlite3"}
        if base.state_path is not None:
            own_state = {}
        merged = Settings(**{**base.__dict__, "watch": "poll", **own_state, **settings})
        gateway = server_thread.run(start_gateway(path, full_env, merged, mounts))
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        server_thread.run(stop_gateway(gateway))


@pytest.fixture
def gateway(make_gateway: MakeGateway) -> Gateway:
    return make_gateway()
