"""The self-service portal over HTTP against the real slapd, with a plain HTTP client.

Each test starts its own daemon with a `portal` section on a free loopback port and uses
its own users (web00..web19); the browser tests are in test_portal_browser.py.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from bridge.core.totp import code_at_step, decode_secret, encode_secret, new_secret
from tests.certs import make_ca, make_server_cert
from tests.harness import Bridge, RadiusClient, code_for, free_tcp_port
from tests.portal_client import PortalClient

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
ClientFor = Callable[..., RadiusClient]
PUBLIC_URL = "https://mfa.example.org/"
KEY = re.compile(r'<code id="secret-key">([A-Z2-7]+)</code>')


def with_portal(**extra: Any) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        config["portal"] = {"listen": f"127.0.0.1:{free_tcp_port()}", **extra}

    return change


def portal(bridge: Bridge) -> PortalClient:
    host, port = bridge.config["portal"]["listen"].rsplit(":", 1)
    return PortalClient(host, int(port))


def state_of(bridge: Bridge, user: str) -> dict[str, Any]:
    result = bridge.cli("user", "status", user, "--json")
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def test_every_page_carries_the_security_headers(make_bridge: MakeBridge) -> None:
    """CSP without script, no framing, no caching, no referrer; the form has a CSRF token."""
    bridge = make_bridge(change=with_portal())
    page = portal(bridge).get("/")
    assert page.status == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "same-origin"
    assert page.csrf
    (cookie,) = page.cookies
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()


def test_sign_in_without_the_csrf_token_is_refused(make_bridge: MakeBridge) -> None:
    """A POST without the token of the page (a forged form) gets 403 and reaches no one."""
    bridge = make_bridge(change=with_portal())
    client = portal(bridge)
    client.get("/")
    refused = client.post("/sign-in", username="web00", password="web00-pw")
    assert refused.status == 403
    forged = client.post("/sign-in", csrf="forged", username="web00", password="web00-pw")
    assert forged.status == 403
    assert bridge.audit_reasons("portal") == []


def test_grace_user_sets_up_mfa_and_becomes_active(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """Grace: days left shown; a wrong first code changes nothing, a right one activates."""
    bridge = make_bridge(change=with_portal(public_url=PUBLIC_URL), mode="append")
    client = portal(bridge)
    signed_in = client.sign_in("web01", "web01-pw")
    assert signed_in.status == 303
    session_cookie = next(c for c in signed_in.cookies if "mfa_session=" in c)
    assert session_cookie.startswith("__Host-")  # public_url is https: Secure, host-only
    assert "httponly" in session_cookie.lower() and "samesite=strict" in session_cookie.lower()
    status = client.get("/")
    assert "You have 14 days left to set up MFA" in status.body
    setup = client.get("/setup")
    key = KEY.search(setup.body)
    assert key is not None and '<div id="qr"' in setup.body and "<svg" in setup.body
    assert client.get("/setup").body.count(key.group(1)) == 1  # the same key until confirmed
    wrong = client.post("/setup", csrf=setup.csrf or "", code="000000")
    assert "does not match" in wrong.body
    assert state_of(bridge, "web01")["state"] == "grace"
    done = client.post("/setup", csrf=setup.csrf or "", code=code_for(key.group(1)))
    assert "MFA is set up" in done.body
    assert state_of(bridge, "web01")["state"] == "active"
    assert KEY.search(client.get("/").body) is None  # the key is never shown again
    reply = client_for(bridge).login("web01", "web01-pw" + code_for(key.group(1), 1))
    assert reply is not None and reply.accepted


def test_grace_radius_notice_points_to_the_portal(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """With portal.public_url, the grace Reply-Message and the audit line name it."""
    bridge = make_bridge(change=with_portal(public_url=PUBLIC_URL))
    reply = client_for(bridge).login("web02", "web02-pw")
    assert reply is not None and reply.accepted
    assert reply.message == f"14 days left to set up MFA at {PUBLIC_URL}"
    (line,) = bridge.audit()
    assert (line["days_left"], line["setup_url"]) == (14, PUBLIC_URL)


def test_active_user_needs_the_code_to_sign_in(make_bridge: MakeBridge) -> None:
    """An enrolled user is asked for the code; with it they are in; a replay is refused."""
    bridge = make_bridge(change=with_portal())
    secret = json.loads(bridge.cli("user", "enroll", "web03", "--json").stdout)["secret"]
    client = portal(bridge)
    code = code_for(secret)
    assert client.sign_in("web03", "web03-pw", code).status == 303  # pending: activates
    assert state_of(bridge, "web03")["state"] == "active"
    other = portal(bridge)
    assert "enter the 6-digit code too" in other.sign_in("web03", "web03-pw").body
    assert "not right" in other.sign_in("web03", "web03-pw", code).body  # replayed
    assert bridge.audit_reasons("portal")[-2:] == ["challenged", "replay"]


def step_codes(secret: str) -> tuple[str, str, str]:
    """Codes of the previous, current and next TOTP step, all inside the window of 1.

    Started early in a step (waiting a few seconds if need be), so that the three stay
    valid for the rest of the test.
    """
    left = 30 - time.time() % 30
    if left < 20:
        time.sleep(left + 0.1)
    step = int(time.time()) // 30
    key = decode_secret(secret)
    previous, current, following = (code_at_step(key, step + k) for k in (-1, 0, 1))
    return previous, current, following


def test_reset_needs_a_code_from_the_old_device(
    make_bridge: MakeBridge, client_for: ClientFor, tmp_path: Path
) -> None:
    """Reset: a code of the current app first; the old key works until the new one is in."""
    bridge = make_bridge(change=with_portal(), mode="append")
    old = encode_secret(new_secret())
    csv = tmp_path / "web04.csv"
    csv.write_text(f"username,secret\nweb04,{old}\n")
    assert bridge.cli("user", "import", str(csv)).returncode == 0
    previous, current, following = step_codes(old)
    client = portal(bridge)
    assert client.sign_in("web04", "web04-pw", previous).status == 303
    assert client.get("/setup").status == 303  # active: prove the old device first
    reset = client.get("/reset")
    wrong = client.post("/reset", csrf=reset.csrf or "", code="000000")
    assert "not right" in wrong.body
    assert state_of(bridge, "web04")["failures"] == 1  # a wrong proof counts, as at a login
    proven = client.post("/reset", csrf=reset.csrf or "", code=current)
    assert (proven.status, proven.headers["location"]) == (303, "/setup")
    setup = client.get("/setup")
    key = KEY.search(setup.body)
    assert key is not None and key.group(1) != old
    radius = client_for(bridge)
    still = radius.login("web04", "web04-pw" + following)  # the old app, before confirming
    assert still is not None and still.accepted
    done = client.post("/setup", csrf=setup.csrf or "", code=code_for(key.group(1)))
    assert "MFA is set up" in done.body, done.body
    assert state_of(bridge, "web04")["state"] == "active"
    refused = radius.login("web04", "web04-pw" + following)  # the old app no longer works
    assert refused is not None and refused.rejected
    assert bridge.audit_reasons("radius")[-1] == "wrong-code"


def test_locked_user_is_told_only_after_a_correct_password(make_bridge: MakeBridge) -> None:
    """A wrong password gets the plain failure; the right one the contact-IT page."""
    bridge = make_bridge(change=with_portal())
    assert bridge.cli("user", "enroll", "web05").returncode == 0
    assert bridge.cli("user", "lock", "web05").returncode == 0
    wrong = portal(bridge).sign_in("web05", "nope")
    assert "Sign-in failed" in wrong.body and "locked" not in wrong.body
    right = portal(bridge).sign_in("web05", "web05-pw")
    assert "Your account is locked" in right.body and "Contact your IT admin" in right.body
    assert "mfa_session" not in "".join(right.cookies)


def test_session_ends_at_sign_out(make_bridge: MakeBridge) -> None:
    """After sign-out the old session cookie shows the sign-in page again."""
    bridge = make_bridge(change=with_portal())
    client = portal(bridge)
    assert client.sign_in("web06", "web06-pw").status == 303
    cookie = dict(client.jar)
    assert client.form("/sign-out").status == 303
    client.jar = cookie  # replay the old cookie
    assert 'name="password"' in client.get("/").body


def test_attempts_are_limited_per_user(make_bridge: MakeBridge) -> None:
    """Past max_attempts_per_user in the window, sign-ins get 429 without a directory bind."""
    bridge = make_bridge(change=with_portal(max_attempts_per_user=3))
    client = portal(bridge)
    for _ in range(3):
        assert "Sign-in failed" in client.sign_in("web07", "nope").body
    limited = client.sign_in("web07", "web07-pw")
    assert limited.status == 429 and "Too many attempts" in limited.body
    assert len(bridge.audit_reasons("portal")) == 3


def test_a_code_typed_by_a_user_without_mfa_is_not_sent_to_the_directory(
    make_bridge: MakeBridge,
) -> None:
    """A grace user who fills in the code field still signs in with the password alone."""
    bridge = make_bridge(change=with_portal())
    assert portal(bridge).sign_in("web08", "web08-pw", "123456").status == 303
    assert bridge.audit_reasons("portal") == ["grace"]


def test_a_password_ending_in_digits_is_not_split(make_bridge: MakeBridge, tmp_path: Path) -> None:
    """Without a code, an active user's password is taken whole and the code asked for."""
    bridge = make_bridge(change=with_portal())
    csv = tmp_path / "digits.csv"
    csv.write_text(f"username,secret\ndigits,{encode_secret(new_secret())}\n")
    assert bridge.cli("user", "import", str(csv)).returncode == 0
    page = portal(bridge).sign_in("digits", "pass123456")  # the password ends in 6 digits
    assert "enter the 6-digit code too" in page.body
    assert bridge.audit_reasons("portal") == ["challenged"]


def test_portal_over_https_with_a_test_ca(make_bridge: MakeBridge, tmp_path: Path) -> None:
    """With portal.tls the portal speaks HTTPS only: HSTS, __Host- Secure cookies, 0.0.0.0 ok."""
    ca = make_ca(tmp_path, "Portal Test CA")
    ip = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate, key = make_server_cert(ca, tmp_path, "portal", ip)
    port = free_tcp_port()

    def change(config: dict[str, Any]) -> None:
        config["portal"] = {
            "listen": f"0.0.0.0:{port}",
            "tls": {"certificate": str(certificate), "key": str(key)},
        }

    make_bridge(change=change)
    context = ssl.create_default_context(cafile=str(ca.path))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", "/")
        reply = conn.getresponse()
        assert reply.status == 200
        assert reply.getheader("Strict-Transport-Security") == "max-age=31536000"
        cookie = reply.getheader("Set-Cookie") or ""
        assert cookie.startswith("__Host-mfa_csrf=") and "Secure" in cookie
        reply.read()
    finally:
        conn.close()
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        plain.request("GET", "/")
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.getresponse()  # the TLS listener does not answer HTTP in clear
    finally:
        plain.close()
