"""The admin API against two real ``runestone serve`` processes, on each store: SQLite
(two processes of one host sharing the state file's directory) and Redis (two replicas
sharing a real ``redis-server``). Keys made, used, rotated and revoked on one are seen
by the other within a second; roles, the audit log and the admin surface's security."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runestone.access import digest
from tests.redis_server import RedisServer
from tests.servers import same_minute
from tests.test_serve import Served, processes, serve

__all__ = ["processes"]

ADMIN = "admin-token-for-the-admin-api"
FILE_KEY = "rsk-file-key-of-the-alias-file"
ALIASES = (
    "aliases:\n  echo: mock:echo\n"
    'prices:\n  "mock:echo": {input: 100, output: 1000}\n'
    f"keys:\n  from-file:\n    hash: sha256:{digest(FILE_KEY)}\n    rpm: 100\n"
    "teams:\n  platform: {rpm: 500}\n"
)
BODY = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture(params=["sqlite", "redis"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The settings of one store: a state file's directory, or a real redis-server."""
    if request.param == "sqlite":
        yield {"RUNESTONE_STATE_PATH": str(tmp_path / "state" / "state.sqlite3")}
        return
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    yield {"RUNESTONE_REDIS_URL": redis.url}
    redis.stop()


def start_pair(
    tmp_path: Path, processes: list[Served], env: dict[str, str], aliases: str = ALIASES
) -> tuple[Served, Served]:
    """Two gateways sharing one store."""
    for n in range(2):
        (tmp_path / f"g{n}").mkdir()
        processes.append(
            serve(tmp_path / f"g{n}", aliases=aliases, RUNESTONE_ADMIN_TOKEN=ADMIN, **env)
        )
    return processes[0], processes[1]


@pytest.fixture
def pair(
    tmp_path: Path, processes: list[Served], store_env: dict[str, str]
) -> tuple[Served, Served]:
    return start_pair(tmp_path, processes, store_env)


def admin(url: str, method: str, path: str, token: str = ADMIN, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{url}{path}", headers=headers, timeout=10, **kwargs)


def chat(url: str, secret: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json=BODY,
        headers={"authorization": f"Bearer {secret}"},
        timeout=10,
    )


def within(seconds: float, check: Callable[[], bool]) -> float:
    """How long until ``check()`` holds (it must within ``seconds``)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, "not within the time allowed"
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_key_made_on_one_replica_works_on_the_other_and_revoked_is_refused_on_both(
    pair: tuple[Served, Served],
) -> None:
    one, two = pair
    made = admin(one.url, "POST", "/admin/keys", json={"id": "ci-1", "rpm": 50})
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    assert secret.startswith("rsk-") and made.json()["source"] == "api"
    assert chat(one.url, secret).status_code == 200  # at once on the replica that made it
    assert within(1.0, lambda: chat(two.url, secret).status_code == 200) < 1.0
    shown = admin(two.url, "GET", "/admin/keys/ci-1").json()
    assert shown["settings"] == {"rpm": 50} and "secret" not in shown
    assert digest(secret) not in str(shown)
    listed = admin(two.url, "GET", "/admin/keys").json()["keys"]
    assert [(k["id"], k["source"]) for k in listed] == [("ci-1", "api"), ("from-file", "file")]

    assert admin(two.url, "DELETE", "/admin/keys/ci-1").status_code == 200
    refused = chat(two.url, secret)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert within(1.0, lambda: chat(one.url, secret).status_code == 401) < 1.0
    assert admin(one.url, "GET", "/admin/keys/ci-1").json()["revoked"] is True
    assert admin(one.url, "GET", "/admin/keys").json()["keys"][0]["id"] == "from-file"
    again = admin(one.url, "POST", "/admin/keys", json={"id": "ci-1"})
    assert again.status_code == 409  # a revoked id is never handed out again


def test_rotation_keeps_the_old_secret_for_its_grace_and_no_longer(
    pair: tuple[Served, Served],
) -> None:
    one, two = pair
    old = admin(one.url, "POST", "/admin/keys", json={"id": "rotating"}).json()["secret"]
    within(1.0, lambda: chat(two.url, old).status_code == 200)
    rotated = admin(two.url, "POST", "/admin/keys/rotating/rotate", json={"grace_seconds": 60})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new != old and len(rotated.json()["old_secrets_work_until"]) == 1
    within(1.0, lambda: chat(one.url, new).status_code == 200)
    assert chat(one.url, old).status_code == 200 and chat(two.url, old).status_code == 200
    # Rotated again without grace: both earlier secrets stop at once, on both replicas.
    newest = admin(one.url, "POST", "/admin/keys/rotating/rotate", json={"grace_seconds": 0})
    newest_secret = newest.json()["secret"]
    assert chat(one.url, new).status_code == 401
    within(1.0, lambda: chat(two.url, new).status_code == 401)
    assert chat(two.url, newest_secret).status_code == 200
    assert chat(two.url, old).status_code == 200  # its own grace runs on
    bad = admin(one.url, "POST", "/admin/keys/rotating/rotate", json={"grace_seconds": -1})
    assert bad.status_code == 400
    usage = admin(one.url, "GET", "/admin/usage").json()
    assert [k["id"] for k in usage["keys"]].count("rotating") == 1  # once, old secret or not


def test_changes_block_and_limits_apply_on_both_replicas(pair: tuple[Served, Served]) -> None:
    one, two = pair
    secret = admin(one.url, "POST", "/admin/keys", json={"id": "limited"}).json()["secret"]
    within(1.0, lambda: chat(two.url, secret).status_code == 200)
    assert admin(one.url, "PATCH", "/admin/keys/limited", json={"blocked": True}).status_code == 200
    blocked = chat(one.url, secret)
    assert blocked.status_code == 401 and blocked.json()["error"]["code"] == "key_blocked"
    within(1.0, lambda: chat(two.url, secret).status_code == 401)
    admin(two.url, "PATCH", "/admin/keys/limited", json={"blocked": False, "models": ["other"]})
    refused = chat(two.url, secret)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    within(1.0, lambda: chat(one.url, secret).status_code == 403)
    same_minute()
    admin(one.url, "PATCH", "/admin/keys/limited", json={"models": None, "rpm": 2})
    assert [chat(one.url, secret).status_code for _ in range(3)] == [200, 200, 429]
    # An unknown setting and a bad one are the client's errors, and change nothing.
    for wrong in ({"rpm": 0}, {"colour": "red"}, {"budgets": [{"usd": 5}]}, {"team": "nope"}):
        answer = admin(one.url, "PATCH", "/admin/keys/limited", json=wrong)
        assert answer.status_code == 400, (wrong, answer.text)
    assert admin(one.url, "GET", "/admin/keys/limited").json()["settings"] == {"rpm": 2}


def test_ids_are_unique_across_the_file_and_both_replicas(pair: tuple[Served, Served]) -> None:
    one, two = pair
    clash = admin(one.url, "POST", "/admin/keys", json={"id": "from-file"})
    assert clash.status_code == 409
    read_only = admin(one.url, "PATCH", "/admin/keys/from-file", json={"rpm": 1})
    assert read_only.status_code == 409 and "alias file" in read_only.text
    assert admin(one.url, "DELETE", "/admin/keys/from-file").status_code == 409
    assert admin(one.url, "GET", "/admin/keys/from-file").json()["source"] == "file"
    assert chat(one.url, FILE_KEY).status_code == 200
    # The same new id on both replicas at once: exactly one is made.
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda url: admin(url, "POST", "/admin/keys", json={"id": "twice"}).status_code,
                [one.url, two.url],
            )
        )
    assert sorted(answers) == [201, 409]


def test_team_admins_manage_their_own_team_within_its_limits(pair: tuple[Served, Served]) -> None:
    one, two = pair
    made = admin(one.url, "POST", "/admin/teams", json={"id": "search", "rpm": 100})
    assert made.status_code == 201, made.text
    lead = admin(
        one.url, "POST", "/admin/keys", json={"id": "lead", "team": "search", "role": "team_admin"}
    ).json()["secret"]
    other = admin(one.url, "POST", "/admin/keys", json={"id": "outsider"}).json()["secret"]
    within(1.0, lambda: chat(two.url, lead).status_code == 200)
    mine = admin(two.url, "POST", "/admin/keys", token=lead, json={"id": "search-bot", "rpm": 10})
    assert mine.status_code == 201, mine.text
    assert mine.json()["team"] == "search"  # a team admin's key is in its team
    assert chat(two.url, mine.json()["secret"]).status_code == 200
    for body in (
        {"id": "elsewhere", "team": "platform"},  # another team
        {"id": "too-fast", "rpm": 1000},  # above the team's limit
        {"id": "boss", "role": "admin"},  # a role it does not have to give
    ):
        refused = admin(two.url, "POST", "/admin/keys", token=lead, json=body)
        assert refused.status_code == 403, (body, refused.text)
    listed = admin(two.url, "GET", "/admin/keys", token=lead).json()["keys"]
    assert {k["id"] for k in listed} == {"lead", "search-bot"}
    assert admin(two.url, "GET", "/admin/keys/outsider", token=lead).status_code == 403
    assert admin(two.url, "DELETE", "/admin/keys/outsider", token=lead).status_code == 403
    assert (
        admin(two.url, "PATCH", "/admin/keys/search-bot", token=lead, json={"rpm": 5}).status_code
        == 200
    )
    assert admin(two.url, "POST", "/admin/teams", token=lead, json={"id": "t2"}).status_code == 403
    assert admin(two.url, "GET", "/admin/teams/search", token=lead).json()["keys"] == 2
    assert admin(two.url, "DELETE", "/admin/keys/search-bot", token=lead).status_code == 200
    # Any key reads itself and its own usage, and nothing else.
    me = admin(one.url, "GET", "/admin/keys/self", token=other)
    assert me.status_code == 200 and me.json()["id"] == "outsider"
    usage = admin(one.url, "GET", "/admin/keys/self/usage", token=other)
    assert usage.status_code == 200 and [k["id"] for k in usage.json()["keys"]] == ["outsider"]
    assert admin(one.url, "GET", "/admin/keys/lead", token=other).status_code == 403
    assert admin(one.url, "GET", "/admin/keys", token=other).status_code == 403
    # A blocked team blocks its keys; a team with keys cannot be deleted.
    assert admin(one.url, "PATCH", "/admin/teams/search", json={"blocked": True}).status_code == 200
    assert chat(one.url, lead).json()["error"]["code"] == "key_blocked"
    assert admin(one.url, "DELETE", "/admin/teams/search").status_code == 409


def test_every_change_is_in_the_audit_log_without_a_secret(pair: tuple[Served, Served]) -> None:
    one, two = pair
    secret = admin(
        one.url, "POST", "/admin/keys", json={"id": "audited", "metadata": {"owner": "ana"}}
    ).json()["secret"]
    rotated = admin(two.url, "POST", "/admin/keys/audited/rotate").json()["secret"]
    admin(one.url, "PATCH", "/admin/keys/audited", json={"rpm": 7})
    admin(two.url, "DELETE", "/admin/keys/audited")
    log = admin(one.url, "GET", "/admin/audit").json()
    actions = [(e["action"], e["target"], e["actor"]) for e in log["entries"]]
    assert actions == [
        ("key.revoke", "key:audited", "token:admin"),
        ("key.update", "key:audited", "token:admin"),
        ("key.rotate", "key:audited", "token:admin"),
        ("key.create", "key:audited", "token:admin"),
    ]
    assert log["entries"][3]["changes"]["metadata"] == {"owner": "ana"}
    assert log["entries"][3]["source"] == "127.0.0.1" and log["entries"][0]["at"].endswith("Z")
    text = str(log)
    for hidden in (secret, rotated, digest(secret), digest(rotated)):
        assert hidden not in text
    only = admin(one.url, "GET", "/admin/audit", params={"action": "key.rot"}).json()
    assert [e["action"] for e in only["entries"]] == ["key.rotate"]
    paged = admin(one.url, "GET", "/admin/audit", params={"limit": 3}).json()
    assert len(paged["entries"]) == 3 and paged["next"]
    rest = admin(one.url, "GET", "/admin/audit", params={"before": paged["next"]}).json()
    assert [e["action"] for e in rest["entries"]] == ["key.create"]
    for served in (one, two):
        logs = served.stderr()
        assert "audit: key." in logs
        assert secret not in logs and rotated not in logs
