"""The `runestone` command, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runestone import __version__
from tests.servers import wait_ready


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "RUNESTONE_ALIASES_PATH"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "runestone", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def alias_file(tmp_path: Path) -> Path:
    path = tmp_path / "aliases.yaml"
    path.write_text(
        "aliases:\n"
        "  fast: groq:llama3-8b-8192\n"
        "  multi: {targets: [openai:gpt-4o, 'ollama:llama3.1:8b']}\n"
    )
    return path


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"runestone {__version__}"


@pytest.mark.parametrize(
    "args",
    [(), ("aliases",), ("aliases", "list"), ("aliases", "resolve"), ("aliases", "check")],
)
def test_help_for_each_command(args: tuple[str, ...]) -> None:
    result = run(*args, "--help")
    assert result.returncode == 0
    assert "usage: runestone" in result.stdout


def test_list_prints_every_alias_with_targets(alias_file: Path) -> None:
    result = run("aliases", "list", env={"RUNESTONE_ALIASES_PATH": str(alias_file)})
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ALIAS", "TARGETS"]
    assert lines[1].split() == ["fast", "groq:llama3-8b-8192"]
    assert lines[2].split(None, 1) == ["multi", "openai:gpt-4o, ollama:llama3.1:8b"]
    assert "2 aliases" in result.stdout


def test_list_default_file() -> None:
    result = run("aliases", "list")
    assert result.returncode == 0
    assert "smart" in result.stdout and "openai:gpt-4" in result.stdout


def test_resolve_alias(alias_file: Path) -> None:
    result = run("aliases", "resolve", "fast", "--file", str(alias_file))
    assert (result.returncode, result.stdout) == (0, "groq:llama3-8b-8192\n")


def test_resolve_multi_target_alias_prints_in_order(alias_file: Path) -> None:
    result = run("aliases", "resolve", "multi", "--file", str(alias_file))
    assert result.stdout == "openai:gpt-4o\nollama:llama3.1:8b\n"


def test_resolve_spec_with_slash_and_colon(alias_file: Path) -> None:
    result = run(
        "aliases", "resolve", "openrouter:meta-llama/llama-3:free", "--file", str(alias_file)
    )
    assert (result.returncode, result.stdout) == (0, "openrouter:meta-llama/llama-3:free\n")


def test_resolve_unknown_name_exits_1_with_a_hint(alias_file: Path) -> None:
    result = run("aliases", "resolve", "Fast", "--file", str(alias_file))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "unknown alias 'Fast'" in result.stderr
    assert "did you mean 'fast'" in result.stderr


def test_check_valid_file(alias_file: Path) -> None:
    result = run("aliases", "check", str(alias_file))
    assert result.returncode == 0
    assert "OK, 2 aliases" in result.stdout


def test_check_prints_every_problem_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("aliases:\n  a: gpt-4\n  b: {provider: x}\n  a: c:d\nextra: 1\n")
    result = run("aliases", "check", str(bad))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{bad}:2: alias 'a': 'gpt-4' is not of the form provider:model",
        f"{bad}:3: alias 'b': missing 'model'",
        f"{bad}:4: duplicate key 'a' (first defined on line 2)",
        f"{bad}:5: unknown top-level key 'extra' "
        "(expected: access, aliases, allow_shrink, defaults, guards, keys, prices, providers, "
        "teams)",
    ]
    assert "4 problems" in result.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    result = run("aliases", "check", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert "file not found" in result.stdout


def test_check_uses_env_path_when_no_argument(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("aliases: [1, 2]\n")
    result = run("aliases", "check", env={"RUNESTONE_ALIASES_PATH": str(bad)})
    assert result.returncode == 1
    assert f"{bad}:1: 'aliases' must be a mapping" in result.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_answers_the_readme_quick_start(workers: str) -> None:
    import httpx

    from tests.servers import free_socket

    sock = free_socket()
    port = str(sock.getsockname()[1])
    sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNESTONE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "runestone", "serve", "--port", port, "--workers", workers],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(process, url)
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": "mock:echo",
                "messages": [{"role": "user", "content": "Hello, Runestone"}],
            },
        )
        assert answer.json()["choices"][0]["message"]["content"] == "Hello, Runestone"
    finally:
        process.terminate()
        process.wait(20)
        if process.stderr:
            process.stderr.close()


def test_serve_refuses_an_invalid_alias_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("aliases:\n  a: nocolon\n")
    result = run("serve", "--port", "1", env={"RUNESTONE_ALIASES_PATH": str(bad)})
    assert result.returncode == 2  # configuration it cannot honour: see test_preflight
    assert f"{bad}:2: alias 'a'" in result.stderr
