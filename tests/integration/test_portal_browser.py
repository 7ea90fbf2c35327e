"""The portal in a real headless browser: Debian's Chromium driven by Playwright.

A user's path through enrollment as the guide describes it, read off the page the way a
person would (the key from `#secret-key`, codes computed as the app would), with a
screenshot of every page under the test's output folder (`PORTAL_SCREENSHOTS` names
another folder to keep them in).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary
from tests.harness import Bridge, code_for, free_tcp_port

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # the tests run as root in CI
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (Debian's, never a downloaded one)."""
    chromium = require_binary("chromium")
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - only these tests need it

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) with a phone-sized window."""
    context = browser.new_context(viewport={"width": 412, "height": 860})
    page = context.new_page()
    page.set_default_timeout(5000)
    yield page
    context.close()


@pytest.fixture
def shots(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[Any, str], None]:
    """Save a full-page screenshot named after the test and the step."""
    folder = Path(os.environ.get("PORTAL_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def shot(page: Any, step: str) -> None:
        page.screenshot(path=str(folder / f"{request.node.name}-{step}.png"), full_page=True)

    return shot


def portal_bridge(make_bridge: MakeBridge, **portal: Any) -> tuple[Bridge, str]:
    port = free_tcp_port()

    def change(config: dict[str, Any]) -> None:
        config["portal"] = {"listen": f"127.0.0.1:{port}", **portal}

    return make_bridge(change=change, mode="append"), f"http://127.0.0.1:{port}"


def sign_in(page: Any, url: str, user: str, password: str, code: str = "") -> None:
    page.goto(url + "/")
    page.fill("[name=username]", user)
    page.fill("[name=password]", password)
    if code:
        page.fill("[name=code]", code)
    page.click("button[type=submit]")


def state_of(bridge: Bridge, user: str) -> str:
    result = bridge.cli("user", "status", user, "--json")
    return str(json.loads(result.stdout)["state"])


def test_first_set_up_from_grace_to_active(
    make_bridge: MakeBridge, page: Any, shots: Callable[[Any, str], None]
) -> None:
    """Sign in, see the days left, scan (read the key), a wrong code, then the right one."""
    bridge, url = portal_bridge(make_bridge)
    page.goto(url + "/")
    shots(page, "1-sign-in")
    sign_in(page, url, "web20", "web20-pw")
    assert "You have 14 days left to set up MFA" in page.inner_text(".banner")
    assert page.get_attribute("#state", "data-state") == "grace"
    shots(page, "2-status-grace")
    page.click("button:text-is('Set up MFA')")
    key = page.inner_text("#secret-key").strip()
    assert page.locator("#qr svg").count() == 1
    shots(page, "3-set-up")
    page.fill("[name=code]", "000000")
    page.click("button:text-is('Confirm')")
    assert "does not match" in page.inner_text(".banner")
    assert page.inner_text("#secret-key").strip() == key  # the same key to try again
    shots(page, "4-wrong-code")
    assert state_of(bridge, "web20") == "grace"
    page.fill("[name=code]", code_for(key))
    page.click("button:text-is('Confirm')")
    assert "MFA is set up" in page.inner_text(".banner")
    assert page.get_attribute("#state", "data-state") == "active"
    assert page.locator("#secret-key").count() == 0
    shots(page, "5-active")
    assert state_of(bridge, "web20") == "active"


def test_quitting_half_way_leaves_the_user_in_grace(
    make_bridge: MakeBridge, page: Any, shots: Callable[[Any, str], None]
) -> None:
    """Leaving the set-up page (Not now) keeps grace and the same deadline."""
    bridge, url = portal_bridge(make_bridge)
    sign_in(page, url, "web21", "web21-pw")
    before = json.loads(bridge.cli("user", "status", "web21", "--json").stdout)
    page.click("button:text-is('Set up MFA')")
    page.click("button:text-is('Not now')")
    assert page.get_attribute("#state", "data-state") == "grace"
    after = json.loads(bridge.cli("user", "status", "web21", "--json").stdout)
    assert (after["state"], after["deadline"]) == ("grace", before["deadline"])
    shots(page, "status-after-not-now")


def test_reset_with_the_old_device(
    make_bridge: MakeBridge, page: Any, shots: Callable[[Any, str], None], tmp_path: Path
) -> None:
    """An active user proves the old app, scans a new key and confirms it."""
    bridge, url = portal_bridge(make_bridge)
    old = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    csv = tmp_path / "web22.csv"
    csv.write_text(f"username,secret\nweb22,{old}\n")
    assert bridge.cli("user", "import", str(csv)).returncode == 0
    left = 30 - time.time() % 30
    if left < 15:  # the codes of this step and the next must both stay in the window
        time.sleep(left + 0.1)
    sign_in(page, url, "web22", "web22-pw", code_for(old))
    assert page.get_attribute("#state", "data-state") == "active"
    shots(page, "1-status-active")
    page.click("button:text-is('Reset MFA')")
    shots(page, "2-prove-old-device")
    page.fill("[name=code]", code_for(old))  # the one just used: refused as a replay
    page.click("button:text-is('Continue')")
    assert "not right" in page.inner_text(".banner")
    page.fill("[name=code]", code_for(old, 1))
    page.click("button:text-is('Continue')")
    key = page.inner_text("#secret-key").strip()
    assert key != old
    shots(page, "3-new-key")
    page.fill("[name=code]", code_for(key))
    page.click("button:text-is('Confirm')")
    assert "MFA is set up" in page.inner_text(".banner")
    shots(page, "4-reset-done")


def test_locked_user_sees_contact_it(
    make_bridge: MakeBridge, page: Any, shots: Callable[[Any, str], None]
) -> None:
    """A locked user with the right password is told to contact IT; no session is made."""
    bridge, url = portal_bridge(make_bridge)
    assert bridge.cli("user", "enroll", "web23").returncode == 0
    assert bridge.cli("user", "lock", "web23").returncode == 0
    sign_in(page, url, "web23", "web23-pw")
    assert page.inner_text("h1") == "Your account is locked"
    assert "Contact your IT admin" in page.inner_text("main")
    assert not any(c["name"] == "mfa_session" for c in page.context.cookies())
    shots(page, "locked")


def test_forged_form_is_refused(make_bridge: MakeBridge, page: Any) -> None:
    """A sign-in form whose CSRF token was tampered with gets 403."""
    _bridge, url = portal_bridge(make_bridge)
    page.goto(url + "/")
    page.evaluate("document.querySelector('[name=csrf]').value = 'forged'")
    page.fill("[name=username]", "web24")
    page.fill("[name=password]", "web24-pw")
    with page.expect_response(lambda r: r.url.endswith("/sign-in")) as response:
        page.click("button[type=submit]")
    assert response.value.status == 403
    assert "did not come from this page" in page.inner_text("main")
