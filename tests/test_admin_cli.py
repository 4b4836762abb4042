"""``runestone keys`` against a running gateway: the admin API's verbs, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.test_admin_api import ADMIN, ALIASES, chat
from tests.test_cli import run
from tests.test_serve import Served, processes, serve

__all__ = ["processes"]


def secret_in(stdout: str) -> str:
    return next(line[5:] for line in stdout.splitlines() if line.startswith("key: "))


def test_keys_verbs_manage_a_running_gateway(tmp_path: Path, processes: list[Served]) -> None:
    gateway = serve(
        tmp_path,
        aliases=ALIASES,
        RUNESTONE_ADMIN_TOKEN=ADMIN,
        RUNESTONE_STATE_PATH=str(tmp_path / "state.sqlite3"),
    )
    processes.append(gateway)
    env = {"RUNESTONE_ADMIN_TOKEN": ADMIN, "RUNESTONE_URL": gateway.url}
    made = run("keys", "create", "ci-7", "--rpm", "5", "--budget", "2/day", env=env)
    assert made.returncode == 0, made.stderr
    secret = secret_in(made.stdout)
    assert "hash:" not in made.stdout  # nothing to paste: the gateway has it
    assert chat(gateway.url, secret).status_code == 200
    listed = run("keys", "list", env=env)
    assert "ci-7" in listed.stdout and "from-file" in listed.stdout and "active" in listed.stdout

    changed = run("keys", "update", "ci-7", "--rpm", "9", "--metadata", '{"job": 7}', env=env)
    assert changed.returncode == 0, changed.stderr
    shown = json.loads(run("keys", "show", "ci-7", env=env).stdout)
    assert shown["settings"]["rpm"] == 9 and shown["metadata"] == {"job": 7}
    assert shown["settings"]["budgets"][0]["usd"] == 2
    usage = run("keys", "usage", "ci-7", "--json", env=env)
    assert json.loads(usage.stdout)["keys"][0]["id"] == "ci-7"

    rotated = run("keys", "rotate", "ci-7", "--grace", "0", env=env)
    assert rotated.returncode == 0, rotated.stderr
    new = secret_in(rotated.stdout)
    assert chat(gateway.url, new).status_code == 200
    assert chat(gateway.url, secret).status_code == 401

    assert run("keys", "revoke", "ci-7", env=env).returncode == 0
    assert chat(gateway.url, new).status_code == 401
    again = run("keys", "revoke", "ci-7", env=env)
    assert again.returncode == 1 and "revoked" in again.stderr

    # Without the operators' token: the gateway's refusal, said plainly.
    stranger = run("keys", "list", "--url", gateway.url, env={"RUNESTONE_ADMIN_TOKEN": ""})
    assert stranger.returncode == 1 and "admin API needs" in stranger.stderr
    nowhere = run("keys", "show", "x", env={"RUNESTONE_URL": ""})
    assert nowhere.returncode != 0 and "--url or RUNESTONE_URL" in nowhere.stderr
    assert httpx.get(f"{gateway.url}/health/ready").status_code == 200
