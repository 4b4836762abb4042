"""``runestone serve`` refuses to start on configuration it cannot honour: exit code 2
and one line naming the setting and the fix. And credentials in a provider's base URL:
basic auth without a key, refused with one (the 500 it used to be).

Each case runs the real command in a process of its own."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from runestone.config import SETTING_NAMES
from tests.conftest import MakeGateway
from tests.redis_server import RedisServer
from tests.servers import FakeProvider, free_socket
from tests.test_serve import serving

SRC = Path(__file__).parents[1] / "src"


def serve_exit(tmp_path: Path, aliases: str = "aliases:\n  echo: mock:echo\n", **env: str):  # type: ignore[no-untyped-def]
    """``runestone serve`` that is expected to refuse: its exit code and stderr."""
    alias_file = tmp_path / "aliases.yaml"
    alias_file.write_text(aliases)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNESTONE_")}
    full_env.update(
        {
            "RUNESTONE_ALIASES_PATH": str(alias_file),
            "RUNESTONE_STATE_PATH": str(tmp_path / "state" / "state.sqlite3"),
            **env,
        }
    )
    sock = free_socket()
    port = str(sock.getsockname()[1])
    sock.close()
    done = subprocess.run(
        [sys.executable, "-m", "runestone", "serve", "--port", port],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr


def test_an_unknown_setting_is_refused_with_the_nearest_name(tmp_path: Path) -> None:
    code, stderr = serve_exit(tmp_path, RUNESTONE_REDIS_ULR="redis://127.0.0.1:1")
    assert code == 2
    assert "RUNESTONE_REDIS_ULR is not a Runestone setting (did you mean RUNESTONE_REDIS_URL?)" in (
        stderr
    )


def test_every_setting_read_is_a_known_name() -> None:
    read = set()
    for path in (SRC / "runestone").rglob("*.py"):
        read |= set(re.findall(r'"(RUNESTONE_[A-Z_]+)"', path.read_text()))
    assert read == set(SETTING_NAMES)


def test_redis_configured_without_its_package(tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "redis"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named redis')\n")
    code, stderr = serve_exit(
        tmp_path,
        RUNESTONE_REDIS_URL="redis://127.0.0.1:6379",
        PYTHONPATH=f"{shim.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    assert code == 2
    assert "RUNESTONE_REDIS_URL is set but the redis package is not installed" in stderr


def test_redis_that_does_not_answer(tmp_path: Path) -> None:
    sock = free_socket()  # bound, never listening: connections are refused
    url = f"redis://:hunter2@127.0.0.1:{sock.getsockname()[1]}"
    try:
        code, stderr = serve_exit(tmp_path, RUNESTONE_REDIS_URL=url)
        assert code == 2
        assert "RUNESTONE_REDIS_URL: redis at 127.0.0.1" in stderr
        assert "RUNESTONE_START_DEGRADED=true" in stderr
        assert "hunter2" not in stderr
        with serving(tmp_path, RUNESTONE_REDIS_URL=url, RUNESTONE_START_DEGRADED="true") as served:
            assert httpx.get(f"{served.url}/health/ready").status_code == 200
    finally:
        sock.close()


def test_redis_that_answers_starts(tmp_path: Path, redis_server: RedisServer) -> None:
    with serving(tmp_path, RUNESTONE_REDIS_URL=redis_server.url) as served:
        assert httpx.get(f"{served.url}/health/ready").status_code == 200


def test_a_state_path_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, stderr = serve_exit(
        tmp_path, RUNESTONE_STATE_PATH=str(blocker / "state" / "state.sqlite3")
    )
    assert code == 2
    assert f"RUNESTONE_STATE_PATH: cannot write the state file {blocker}" in stderr


def test_an_invalid_alias_file(tmp_path: Path) -> None:
    code, stderr = serve_exit(tmp_path, aliases="aliases:\n  fast: gpt-4\n")
    assert code == 2
    assert "aliases.yaml:2: alias 'fast': 'gpt-4' is not of the form provider:model" in stderr


def test_a_bad_value_is_exit_2(tmp_path: Path) -> None:
    code, stderr = serve_exit(tmp_path, RUNESTONE_PORT="many")
    assert code == 2
    assert "RUNESTONE_PORT" in stderr


# --- credentials in a base URL ------------------------------------------------------------


def test_credentials_and_a_key_in_the_alias_file_are_refused_with_the_line(
    tmp_path: Path,
) -> None:
    aliases = (
        "providers:\n"
        "  selfhosted:\n"
        '    base_url: "http://user:pass@127.0.0.1:9/v1"\n'
        "    api_key_env: SELFHOSTED_KEY\n"
        "aliases:\n  local: selfhosted:llama\n"
    )
    code, stderr = serve_exit(tmp_path, aliases=aliases, SELFHOSTED_KEY="sk-1")
    assert code == 2
    assert ":3: provider 'selfhosted': base_url has credentials in it and api_key_env" in stderr
    assert "pass@" not in stderr


def test_credentials_and_a_key_in_the_environment_are_refused(tmp_path: Path) -> None:
    code, stderr = serve_exit(
        tmp_path, OPENAI_BASE_URL="http://u:p@127.0.0.1:9/v1", OPENAI_API_KEY="sk-1"
    )
    assert code == 2
    assert "OPENAI_BASE_URL has credentials in it and OPENAI_API_KEY is set" in stderr


def test_credentials_without_a_key_are_sent_as_basic_auth(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    port = fake.url.rsplit(":", 1)[1]
    aliases = (
        "defaults: {retries: 0}\nproviders:\n"
        f'  selfhosted: {{base_url: "http://us%40er:pa%3Ass@127.0.0.1:{port}/v1"}}\n'
        "aliases:\n  local: selfhosted:llama\n"
    )
    gateway = make_gateway(aliases)
    answer = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "local", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert answer.status_code == 200, answer.text
    sent = fake.seen[-1].headers["authorization"]
    assert sent == "Basic " + base64.b64encode(b"us@er:pa:ss").decode()


def test_credentials_in_a_built_in_base_url_with_its_key_are_not_a_500(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    # A library user's environment (no `runestone serve` to refuse it): the key is sent,
    # the credentials are not, and the request is answered (it used to be a 500).
    url = fake.url.replace("http://", "http://user:pass@") + "/v1"
    gateway = make_gateway(env={"OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-live"})
    answer = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "openai:gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert answer.status_code == 200, answer.text
    assert fake.seen[-1].headers["authorization"] == "Bearer sk-live"


# --- runestone config ---------------------------------------------------------------------


def test_config_prints_the_effective_configuration_with_secrets_masked(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNESTONE_")}
    env.update(
        RUNESTONE_SERVICE_TOKEN="very-secret-token",
        RUNESTONE_REDIS_URL="redis://:hunter2@cache:6379/0",
        RUNESTONE_PORT="8080",
        OPENAI_API_KEY="sk-openai-secret",
        OPENAI_BASE_URL="http://proxy-user:proxy-pass@proxy:3128/v1",
    )
    done = subprocess.run(
        [sys.executable, "-m", "runestone", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for secret in ("very-secret-token", "hunter2", "sk-openai-secret", "proxy-pass"):
        assert secret not in out
    assert "service_token = (set, masked)" in out
    assert "port = 8080" in out
    assert "redis_url = redis://cache:6379/0" in out
    assert "openai = http://proxy:3128/v1 (key set)" in out
    assert "edge.idle_timeout = 10.0" in out


@pytest.mark.parametrize("name", ["RUNESTONE_START_DEGRADED"])
def test_the_new_settings_are_documented(name: str) -> None:
    assert name in (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
