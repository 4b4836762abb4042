"""The admin surface against strangers: every admin route refuses a client key (403)
and no key or a wrong one (401); credentials count only in headers; no CORS; refused
credentials are limited per source and their bursts audited."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from runestone.access import digest
from runestone.http import create_app
from runestone.http.routing import Route
from tests.test_admin_api import ADMIN
from tests.test_serve import Served, processes, serve

__all__ = ["processes"]

KEY = "rsk-a-plain-client-key-of-the-file"
ALIASES = (
    "aliases:\n  echo: mock:echo\n"
    f"keys:\n  client:\n    hash: sha256:{digest(KEY)}\n"
    "teams:\n  platform: {rpm: 500}\n"
)
#: Each admin route, with the paths and methods that exercise it.
CALLS: dict[str, list[tuple[str, str]]] = {
    "/admin/keys": [("GET", "/admin/keys"), ("POST", "/admin/keys")],
    "/admin/keys/{rest}": [
        ("GET", "/admin/keys/other"),
        ("PATCH", "/admin/keys/other"),
        ("DELETE", "/admin/keys/other"),
        ("POST", "/admin/keys/other/rotate"),
        ("GET", "/admin/keys/other/usage"),
    ],
    "/admin/teams": [("GET", "/admin/teams"), ("POST", "/admin/teams")],
    "/admin/teams/{rest}": [
        ("GET", "/admin/teams/platform"),
        ("PATCH", "/admin/teams/platform"),
        ("DELETE", "/admin/teams/platform"),
    ],
    "/admin/audit": [("GET", "/admin/audit")],
    "/admin/cache": [("DELETE", "/admin/cache?all=true")],
    "/admin/usage": [("GET", "/admin/usage")],
    "/admin/openapi.json": [("GET", "/admin/openapi.json")],
}


@pytest.fixture
def gateway(tmp_path: Path, processes: list[Served]) -> Served:
    processes.append(
        serve(
            tmp_path,
            aliases=ALIASES,
            RUNESTONE_ADMIN_TOKEN=ADMIN,
            RUNESTONE_STATE_PATH=str(tmp_path / "state.sqlite3"),
        )
    )
    return processes[-1]


def test_every_admin_route_is_listed_here(tmp_path: Path) -> None:
    (tmp_path / "aliases.yaml").write_text(ALIASES)
    from runestone.config import Settings

    app = create_app(Settings(aliases_path=tmp_path / "aliases.yaml"))
    admin_routes = {r.path for r in app.routes if isinstance(r, Route) and "/admin" in r.path}
    assert admin_routes == set(CALLS)


def test_every_admin_route_refuses_a_client_key_and_no_key(gateway: Served) -> None:
    other = httpx.post(
        f"{gateway.url}/admin/keys",
        json={"id": "other"},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert other.status_code == 201
    for calls in CALLS.values():
        for method, path in calls:
            url = f"{gateway.url}{path}"
            body = {"json": {"id": "x"}} if method in ("POST", "PATCH") else {}
            as_key = httpx.request(method, url, headers={"authorization": f"Bearer {KEY}"}, **body)
            assert as_key.status_code == 403, (method, path, as_key.text)
            assert as_key.json()["error"]["code"] == "forbidden"
            anonymous = httpx.request(method, url, **body)
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            wrong = httpx.request(method, url, headers={"authorization": "Bearer nope"}, **body)
            assert wrong.status_code == 401, (method, path)
            assert not any(h.startswith("access-control-") for h in as_key.headers)
            assert "set-cookie" not in as_key.headers
    # What a key may do: read itself.
    mine = httpx.get(f"{gateway.url}/admin/keys/self", headers={"authorization": f"Bearer {KEY}"})
    assert mine.status_code == 200 and mine.json()["id"] == "client"


def test_credentials_count_only_in_headers_and_there_is_no_cors(gateway: Served) -> None:
    url = f"{gateway.url}/admin/keys"
    for params in ({"token": ADMIN}, {"api_key": ADMIN}, {"authorization": f"Bearer {ADMIN}"}):
        assert httpx.get(url, params=params).status_code == 401
    cookie = httpx.get(url, headers={"cookie": f"authorization=Bearer {ADMIN}; token={ADMIN}"})
    assert cookie.status_code == 401
    preflight = httpx.options(
        url,
        headers={
            "origin": "https://evil.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization",
        },
    )
    assert preflight.status_code == 405
    assert not any(h.startswith("access-control-") for h in preflight.headers)
    answer = httpx.get(
        url, headers={"authorization": f"Bearer {ADMIN}", "origin": "https://evil.example"}
    )
    assert answer.status_code == 200
    assert not any(h.startswith("access-control-") for h in answer.headers)


def test_refused_credentials_are_limited_per_source_and_audited(
    gateway: Served, tmp_path: Path, processes: list[Served]
) -> None:
    url = f"{gateway.url}/admin/keys"
    statuses = [
        httpx.get(url, headers={"authorization": f"Bearer guess-{n}"}).status_code
        for n in range(25)
    ]
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
    limited = httpx.get(url, headers={"authorization": f"Bearer {ADMIN}"})
    assert limited.status_code == 429  # the source, not the credential, is limited
    assert int(limited.headers["retry-after"]) > 0
    # The model API still answers that source (it has its own keys and limits).
    assert (
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {KEY}"},
        ).status_code
        == 200
    )
    logs = gateway.stderr()
    assert logs.count("refused credentials from 127.0.0.1") == 1
    assert "guess-" not in logs  # what was presented is never logged
    # Another process of the host (its own count of refusals) reads the audit log.
    (tmp_path / "second").mkdir()
    second = serve(
        tmp_path / "second",
        aliases=ALIASES,
        RUNESTONE_ADMIN_TOKEN=ADMIN,
        RUNESTONE_STATE_PATH=str(tmp_path / "state.sqlite3"),
    )
    processes.append(second)
    audit = httpx.get(
        f"{second.url}/admin/audit",
        params={"action": "auth."},
        headers={"authorization": f"Bearer {ADMIN}"},
    ).json()["entries"]
    assert [(e["action"], e["target"], e["changes"]["refused"]) for e in audit] == [
        ("auth.refused_burst", "source:127.0.0.1", 10)
    ]
    assert "guess-" not in str(audit)


def test_the_openapi_document_describes_every_admin_route(gateway: Served) -> None:
    answer = httpx.get(
        f"{gateway.url}/admin/openapi.json", headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert answer.status_code == 200
    document = answer.json()
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    described = {
        (method.upper(), path)
        for path, item in paths.items()
        for method in item
        if method in ("get", "post", "patch", "delete")
    }
    for calls in CALLS.values():
        for method, path in calls:
            template = path.split("?")[0].replace("/other", "/{key_id}")
            template = template.replace("/platform", "/{team_id}")
            assert (method, template) in described, (method, path)
    refs = {
        ref.rsplit("/", 1)[1]
        for ref in str(document).split("'$ref': '")[1:]
        for ref in [ref.split("'")[0]]
    }
    schemas, responses = document["components"]["schemas"], document["components"]["responses"]
    assert refs <= set(schemas) | set(responses)  # every reference resolves
