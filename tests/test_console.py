"""The operations console, driven in a real headless Chromium (Debian's, via Playwright).

``scripts/test`` installs Chromium from the system packages when it is missing; the
browser is never downloaded at test time. Screenshots of every view are written to
``build/console-screenshots/``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from runestone.access import digest
from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway, error_response, same_minute

SHOTS = Path(__file__).resolve().parent.parent / "build" / "console-screenshots"
TOKEN = "console-test-token"
KEY = "rsk-console-test-key-0123456789"
HI = [{"role": "user", "content": "hi"}]
ALIASES = f"""defaults: {{retries: 0}}
aliases:
  smart: openai:gpt-4
  fast: groq:llama3-8b-8192
  flaky: {{targets: [openai:flaky-model]}}
prices:
  "openai:gpt-4": {{input: 10, output: 30}}
keys:
  search-app:
    hash: sha256:{digest(KEY)}
    rpm: 4
    budgets: [{{usd: 1, per: day}}]
    team: search
teams:
  search: {{budgets: [{{usd: 20, per: month}}]}}
"""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "chromium is not installed: scripts/test installs it (apt-get install chromium)"
        )
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def console_gateway(make_gateway: MakeGateway, tmp_path: Path) -> Gateway:
    return make_gateway(
        ALIASES,
        env={"RUNESTONE_STATE_PATH": str(tmp_path / "state.sqlite3")},
        service_token=TOKEN,
        breaker_failures=3,
    )


def send(gateway: Gateway, model: str, count: int, key: str = TOKEN, **body: Any) -> list[int]:
    return [
        httpx.post(
            f"{gateway.base_url}/chat/completions",
            json={"model": model, "messages": HI, **body},
            headers={"authorization": f"Bearer {key}"},
            timeout=10,
        ).status_code
        for _ in range(count)
    ]


def sign_in(page: Page, gateway: Gateway, token: str) -> None:
    page.goto(f"{gateway.url}/console")
    expect(page.get_by_label("Operators' token")).to_be_visible()
    page.get_by_label("Operators' token").fill(token)
    page.get_by_role("button", name="Sign in").click()


NOTHING = "\u2013"  # what the page shows before it has a number


def number(page: Page, element_id: str) -> float:
    text = page.locator(f"#{element_id}").inner_text().replace(",", "")
    return float(text) if text not in ("", NOTHING) else -1.0


def wait_until(check: Any, timeout: float = 15) -> None:
    # Polled from here: the page's content security policy forbids evaluated scripts.
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the page never showed it"
        time.sleep(0.2)


def test_a_wrong_token_is_refused(page: Page, console_gateway: Gateway) -> None:
    sign_in(page, console_gateway, "not-the-token")
    expect(page.locator("#login-error")).to_have_text("The gateway refused that token.")
    expect(page.locator("#console-view")).to_be_hidden()
    assert "not-the-token" not in page.url  # never in the URL
    page.screenshot(path=str(SHOTS / "login-refused.png"))
    # A client key opens the model API, not the console.
    sign_in(page, console_gateway, KEY)
    expect(page.locator("#login-error")).to_have_text("The gateway refused that token.")


def test_the_console_shows_the_gateway_live(
    page: Page, console_gateway: Gateway, fake: FakeProvider
) -> None:
    gateway = console_gateway
    sign_in(page, gateway, TOKEN)
    expect(page.locator("#console-view")).to_be_visible()
    expect(page.locator("#requests")).not_to_have_text(NOTHING)
    before = number(page, "requests")

    # Live numbers move while traffic goes through, without reloading the page.
    assert send(gateway, "smart", 12) == [200] * 12
    assert send(gateway, "fast", 3, stream=True) == [200] * 3
    assert send(gateway, "mock:echo", 5) == [200] * 5  # the gateway's own mock provider
    wait_until(lambda: number(page, "requests") >= before + 20)
    expect(page.locator("#models")).to_contain_text("mock:echo")
    expect(page.locator("#series")).to_contain_text("smart")
    expect(page.locator("#models")).to_contain_text("openai:gpt-4")
    expect(page.locator("#outcomes")).to_contain_text("complete")
    page.screenshot(path=str(SHOTS / "traffic.png"), full_page=True)

    # A failing target: after three failures its breaker opens, and the page says so.
    fake.on("flaky-model", error_response(500, {"error": {"message": "boom"}}))
    assert send(gateway, "flaky", 3) == [502] * 3
    page.get_by_role("tab", name="Aliases").click()
    target = page.locator('[data-target="openai:flaky-model"]')
    expect(target.locator(".state-open")).to_be_visible(timeout=15_000)
    expect(target).to_contain_text("100%")
    page.screenshot(path=str(SHOTS / "aliases-breaker-open.png"), full_page=True)

    # An invalid edit of the alias file is reported with its line; the old table stays.
    path = Path(gateway.app.aliases.path)
    path.write_text(ALIASES + "surprise: 1\n")
    line = ALIASES.count("\n") + 1
    error = page.locator("#reload-error")
    expect(error).to_be_visible(timeout=15_000)
    expect(error).to_contain_text(f":{line}: unknown top-level key 'surprise'")
    expect(page.locator("#alias-table")).to_contain_text("flaky")
    page.screenshot(path=str(SHOTS / "aliases-reload-error.png"), full_page=True)
    path.write_text(ALIASES)

    # Keys: spend against budgets, and the most recent refusals.
    same_minute()
    assert send(gateway, "smart", 5, key=KEY) == [200, 200, 200, 200, 429]
    page.get_by_role("tab", name="Keys and budgets").click()
    keys = page.locator("#keys-body")
    expect(keys).to_contain_text("Key search-app (team search)", timeout=15_000)
    expect(keys).to_contain_text("rate_limited", timeout=15_000)
    expect(keys).to_contain_text("usd/day")
    page.screenshot(path=str(SHOTS / "keys.png"), full_page=True)

    # Recent failures: ids, targets and codes, never prompt or completion text.
    page.get_by_role("tab", name="Failures").click()
    failures = page.locator("#failure-table")
    expect(failures).to_contain_text("upstream_server_error")
    expect(failures).to_contain_text("openai:flaky-model")
    assert "hi" not in failures.inner_text().split()
    page.screenshot(path=str(SHOTS / "failures.png"), full_page=True)


def test_the_console_works_by_keyboard_and_on_a_phone(
    browser: Browser, console_gateway: Gateway
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        sign_in(page, console_gateway, TOKEN)
        expect(page.locator("#console-view")).to_be_visible()
        # Every form control has a label; the tabs move with the arrow keys.
        for control in page.locator("input, select").all():
            control_id = control.get_attribute("id")
            assert page.locator(f'label[for="{control_id}"]').count() == 1, control_id
        page.get_by_role("tab", name="Traffic").focus()
        page.keyboard.press("ArrowRight")
        expect(page.get_by_role("tab", name="Aliases")).to_have_attribute("aria-selected", "true")
        expect(page.locator("#aliases")).to_be_visible()
        page.keyboard.press("ArrowLeft")
        expect(page.locator("#traffic")).to_be_visible()
        # Nothing is wider than the phone's screen but the tables, which scroll.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1
        page.screenshot(path=str(SHOTS / "traffic-phone.png"), full_page=True)
    finally:
        context.close()


def test_the_console_json_needs_the_operators_token(console_gateway: Gateway) -> None:
    url = f"{console_gateway.url}/console/api/overview"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": f"Bearer {KEY}"}).status_code == 403
    answer = httpx.get(url, params={"window": 15}, headers={"authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert answer.json()["traffic"]["window_minutes"] == 15
    bad = httpx.get(url, params={"window": 7}, headers={"authorization": f"Bearer {TOKEN}"})
    assert bad.status_code == 400
    page = httpx.get(f"{console_gateway.url}/console")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    started = time.monotonic()
    assert httpx.get(f"{console_gateway.url}/console/static/nothing.js").status_code == 404
    assert time.monotonic() - started < 5


def test_the_admin_token_opens_the_console_not_the_model_api(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(service_token=TOKEN, admin_token="admin-only")
    admin = {"authorization": "Bearer admin-only"}
    assert httpx.get(f"{gateway.url}/console/api/overview", headers=admin).status_code == 200
    assert httpx.get(f"{gateway.url}/metrics", headers=admin).status_code == 200
    refused = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "echo", "messages": HI},
        headers=admin,
    )
    assert refused.status_code == 403  # known, but not a client
