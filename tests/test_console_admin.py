"""The console's "Manage keys" tab in headless Chromium: create a key in the page (its
secret shown once), use it, rotate and revoke it in the page, see the 401; the audit log
and the spend per end user on the same page."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.servers import Gateway
from tests.test_console import (
    HI,
    KEY,
    SHOTS,
    TOKEN,
    browser,
    console_gateway,
    page,
    sign_in,
)

__all__ = ["browser", "console_gateway", "page"]


def ask(gateway: Gateway, secret: str, **body: object) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "smart", "messages": HI, **body},
        headers={"authorization": f"Bearer {secret}"},
        timeout=10,
    )


@pytest.fixture
def manage(page: Page, console_gateway: Gateway) -> Page:
    sign_in(page, console_gateway, TOKEN)
    expect(page.locator("#console-view")).to_be_visible()
    page.get_by_role("tab", name="Manage keys").click()
    expect(page.locator("#key-list table")).to_be_visible()
    return page


def test_create_use_rotate_and_revoke_a_key_in_the_page(
    manage: Page, console_gateway: Gateway
) -> None:
    page = manage
    page.get_by_label("Id").first.fill("web-1")
    page.get_by_label("Requests per minute (optional)").fill("30")
    page.get_by_label("Budget in USD per day (optional)").fill("2.5")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#new-secret")).to_be_visible()
    secret = page.locator("#new-secret-value").inner_text()
    assert secret.startswith("rsk-"), page.locator("#admin-error").inner_text()
    page.screenshot(path=str(SHOTS / "admin-new-key.png"), full_page=True)
    answer = ask(console_gateway, secret, user="end-user-7")
    assert answer.status_code == 200 and answer.headers["x-ratelimit-limit-requests"] == "30"
    page.get_by_role("button", name="Done").click()
    expect(page.locator("#new-secret")).to_be_hidden()
    assert secret not in page.content()  # gone from the page once dismissed

    row = page.locator("#key-list tr", has_text="web-1")
    expect(row).to_contain_text("active")
    expect(row).to_contain_text("30 rpm")
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#end-users")).to_contain_text("end-user-7")

    # Rotate: a new secret is shown; both work during the grace period.
    row.get_by_role("button", name="Rotate").click()
    expect(page.locator("#admin-status")).to_contain_text("Rotated key web-1")
    expect(page.locator("#new-secret-value")).to_have_text(re.compile(r"^rsk-"))
    expect(page.locator("#new-secret-value")).not_to_have_text(secret)
    rotated = page.locator("#new-secret-value").inner_text()
    assert ask(console_gateway, rotated).status_code == 200
    assert ask(console_gateway, secret).status_code == 200
    page.get_by_role("button", name="Done").click()

    # Change it in the page: the new limit applies at once.
    page.locator("#edit-id").fill("web-1")
    page.locator("#edit-rpm").fill("7")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#admin-status")).to_have_text("Saved key web-1.")
    assert ask(console_gateway, rotated).headers["x-ratelimit-limit-requests"] == "7"

    # Revoke: two clicks, then every secret of it is refused.
    revoke = page.locator("#key-list tr", has_text="web-1").get_by_role("button", name="Revoke")
    revoke.click()
    expect(page.get_by_role("button", name="Confirm revoke")).to_be_visible()
    assert ask(console_gateway, rotated).status_code == 200  # not yet
    page.get_by_role("button", name="Confirm revoke").click()
    expect(page.locator("#key-list tr", has_text="web-1")).to_contain_text("revoked")
    for old in (secret, rotated):
        refused = ask(console_gateway, old)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    audit = page.locator("#audit")
    for action in ("key.create", "key.rotate", "key.update", "key.revoke"):
        expect(audit).to_contain_text(action)
    expect(page.locator("#key-list tr", has_text="search-app")).to_contain_text("in the alias file")
    page.screenshot(path=str(SHOTS / "admin-revoked.png"), full_page=True)


def test_the_page_says_why_a_change_is_refused(manage: Page) -> None:
    page = manage
    page.get_by_label("Id").first.fill("search-app")  # the alias file's
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#admin-error")).to_contain_text("exists already")
    expect(page.locator("#new-secret")).to_be_hidden()
    page.get_by_label("Id").first.fill("bad id!")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#admin-error")).to_contain_text("letters, digits")
    assert KEY not in page.content()
