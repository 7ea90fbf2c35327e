"""The portal's HTTP layer on an in-memory transport: real twisted.web, a fake directory.

Requests are raw HTTP/1.1 bytes fed to the Site's protocol; the clock is a
MemoryReactorClock, so session expiry is tested without waiting.
"""

from __future__ import annotations

import io
import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from bridge.audit import AuditLog
from bridge.auth import Authenticator
from bridge.core.policy import Policy
from bridge.core.selfservice import SetupResult
from bridge.core.totp import code_at_step
from bridge.core.types import State, UserRecord
from bridge.directory import Binder, BindResult, BindStatus, Plan
from bridge.portal.flows import NewSecret, Portal, SignInResult
from bridge.portal.sessions import AttemptLimiter, Sessions
from bridge.portal.web import Limits, make_site
from bridge.store import SqliteStore
from tests.protocol.entries import DOMAIN, alias, entry_id, identity

NOW = 1_700_000_000
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def fired(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has fired (the store runs inline in these tests)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def uid_of(user: str) -> str:
    """The uid a name stands for: the name itself, or the uid of an alias <uid>@example.org."""
    return user.removesuffix(f"@{DOMAIN}")


def password_of(user: str) -> str:
    """Every entry's password is "<uid>-pw", whichever of its names is typed."""
    return f"{uid_of(user)}-pw"


def directory(username: str, plan: Plan, bind: Binder | None = None) -> Deferred[BindResult]:
    """Every name without "@" is a uid, found by it and by its alias <uid>@example.org;
    `plan` chooses the password, once, after the entry is found."""
    uid = uid_of(username)
    if "@" in uid:
        return succeed(BindResult(BindStatus.UNKNOWN_USER))
    found = identity(uid, lambda name: f"uid={name},o=x")
    if plan(found) != password_of(uid):
        return succeed(BindResult(BindStatus.BAD_PASSWORD, found))
    return succeed(BindResult(BindStatus.OK, found, server="ldap://x"))


@dataclass
class Browser:
    """Sends raw HTTP to the site and keeps its cookies."""

    site: Any
    cookies: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)  # more header lines

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> dict[str, Any]:
        body = urlencode(form).encode() if form is not None else b""
        lines = [f"{method} {path} HTTP/1.1", "Host: portal.test", "Connection: close"]
        if form is not None:
            lines += [
                "Content-Type: application/x-www-form-urlencoded",
                f"Content-Length: {len(body)}",
            ]
        if self.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        lines += self.extra
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.5", 50000))
        channel = self.site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        raw = transport.value().decode()
        head, _, text = raw.partition("\r\n\r\n")
        status = int(head.split(" ", 2)[1])
        headers: dict[str, list[str]] = {}
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(": ")
            headers.setdefault(name.lower(), []).append(value)
        for line in headers.get("set-cookie", []):
            for name, morsel in SimpleCookie(line).items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        found = _CSRF.search(text)
        return {"status": status, "headers": headers, "body": text, "csrf": found and found[1]}

    def sign_in(self, user: str, code: str = "") -> dict[str, Any]:
        token = self.request("GET", "/")["csrf"]
        form = {"csrf": token, "username": user, "password": password_of(user), "code": code}
        return self.request("POST", "/sign-in", form)


MakePortal = Callable[..., Any]


@pytest.fixture
def make_portal(tmp_path: Path) -> Iterator[MakePortal]:
    """Portals over a real store, a fake directory and a MemoryReactorClock; `exempt_users`
    is mfa.exempt_users (given to the Authenticator and the portal, as the daemon does)."""
    stores: list[SqliteStore] = []

    def make(*, exempt_users: frozenset[str] = frozenset()) -> Any:
        clock = MemoryReactorClock()
        clock.advance(NOW)
        where = tmp_path / f"portal-{len(stores)}"
        store = SqliteStore.open(where / "s.db", where / "s.key")
        stores.append(store)
        audit_out = io.StringIO()
        audit = AuditLog(audit_out, clock.seconds)
        authenticator = Authenticator(store, directory, Policy(), exempt_users, clock, audit=audit)
        portal = Portal(
            authenticator,
            store,
            policy=Policy(),
            issuer="Example",
            exempt_users=exempt_users,
            audit=audit,
            clock=clock.seconds,
            sessions=Sessions(clock.seconds, idle=300, lifetime=3600),
            per_user=AttemptLimiter(clock.seconds, 10, 300),
            per_address=AttemptLimiter(clock.seconds, 30, 300),
        )
        portal.test_clock = clock  # type: ignore[attr-defined]
        portal.test_store = store  # type: ignore[attr-defined]
        portal.test_audit_out = audit_out  # type: ignore[attr-defined]
        return portal

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def portal(make_portal: MakePortal) -> Any:
    """The portal's logic over a real store, a fake directory and a MemoryReactorClock."""
    return make_portal()


@pytest.fixture
def site(portal: Portal) -> Any:
    built = make_site(portal, secure=True)
    built.clock = portal.test_clock  # type: ignore[attr-defined]
    built.store = portal.test_store  # type: ignore[attr-defined]
    return built


def test_session_expires_after_idle_time(site: Any) -> None:
    """Signed in, the status page shows; 300 s idle later the sign-in form is back."""
    browser = Browser(site)
    assert browser.sign_in("alice")["status"] == 303
    assert "Your MFA" in browser.request("GET", "/")["body"]
    site.clock.advance(299)
    assert "Your MFA" in browser.request("GET", "/")["body"]
    site.clock.advance(300)
    page = browser.request("GET", "/")
    assert 'name="password"' in page["body"] and "Your MFA" not in page["body"]


def test_cookies_are_secure_under_tls(site: Any) -> None:
    """Over HTTPS the session cookie is __Host-, Secure, HttpOnly, SameSite=Strict; HSTS too."""
    browser = Browser(site)
    reply = browser.sign_in("bob")
    cookies = reply["headers"]["set-cookie"]
    (cookie,) = [c for c in cookies if c.startswith("__Host-mfa_session=")]
    assert all(flag in cookie.lower() for flag in ("secure", "httponly", "samesite=strict"))
    assert reply["headers"]["strict-transport-security"] == ["max-age=31536000"]


def test_post_from_another_origin_is_refused(site: Any) -> None:
    """A form posted by another site (Origin header) gets 403 even with a token."""
    browser = Browser(site)
    token = browser.request("GET", "/")["csrf"]
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.5", 50000))
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    body = urlencode({"csrf": token, "username": "carol", "password": "carol-pw"}).encode()
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    channel.dataReceived(
        b"POST /sign-in HTTP/1.1\r\nHost: portal.test\r\nOrigin: https://evil.test\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nCookie: "
        + cookie.encode()
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
    assert transport.value().startswith(b"HTTP/1.1 403")


def test_unknown_pages_are_404_and_wrong_methods_405(site: Any) -> None:
    """Paths outside the portal are 404; a GET of a POST-only path is 405 with Allow."""
    browser = Browser(site)
    assert browser.request("GET", "/admin")["status"] == 404
    wrong = browser.request("GET", "/sign-in")
    assert (wrong["status"], wrong["headers"]["allow"]) == (405, ["POST"])
    assert browser.request("HEAD", "/")["status"] == 200  # monitoring probes


def raw_exchange(site: Any, data: bytes) -> StringTransport:
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.5", 50000))
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return transport


def test_a_body_over_8_kib_drops_the_connection(site: Any) -> None:
    """A declared or chunked body past the limit is not read: the connection is dropped."""
    declared = raw_exchange(
        site, b"POST /sign-in HTTP/1.1\r\nHost: portal.test\r\nContent-Length: 9000000\r\n\r\n"
    )
    assert declared.disconnecting or declared.disconnected
    chunk = b"x" * 5000
    chunked = raw_exchange(
        site,
        b"POST /sign-in HTTP/1.1\r\nHost: portal.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 2,
    )
    assert chunked.disconnecting or chunked.disconnected
    assert b"HTTP/1.1 200" not in chunked.value()


def test_form_fields_in_the_url_are_ignored(site: Any) -> None:
    """Credentials put in the query string (where proxies log them) are not read."""
    browser = Browser(site)
    token = browser.request("GET", "/")["csrf"]
    page = browser.request(
        "POST", f"/sign-in?username=erin&password=erin-pw&csrf={token}", {"csrf": token}
    )
    assert "Sign-in failed" in page["body"]


def test_cross_site_fetch_and_malformed_origin_are_refused(site: Any) -> None:
    """Sec-Fetch-Site: cross-site, Origin: null and an unparsable Origin all get 403."""
    browser = Browser(site)
    token = browser.request("GET", "/")["csrf"]
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items()).encode()
    body = urlencode({"csrf": token, "username": "frank", "password": "frank-pw"}).encode()
    for header in (b"Sec-Fetch-Site: cross-site", b"Origin: null", b"Origin: http://[x"):
        sent = raw_exchange(
            site,
            b"POST /sign-in HTTP/1.1\r\nHost: portal.test\r\n"
            + header
            + b"\r\nCookie: "
            + cookie
            + b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
        )
        assert sent.value().startswith(b"HTTP/1.1 403"), header


def test_set_up_page_is_not_cached_and_needs_a_session(site: Any) -> None:
    """The page with the secret says no-store; without a session it redirects to sign-in."""
    browser = Browser(site)
    assert browser.request("GET", "/setup")["status"] == 303
    browser.sign_in("dave")
    page = browser.request("GET", "/setup")
    assert page["status"] == 200 and 'id="secret-key"' in page["body"]
    assert page["headers"]["cache-control"] == ["no-store"]


def sign_in(portal: Portal, user: str, code: str = "") -> Any:
    """The portal's answer to `user`'s password (and `code`)."""
    results: list[Any] = []
    portal.sign_in(user, password_of(user), code, "192.0.2.9").addCallback(results.append)
    (result,) = results
    return result


def signed_in(portal: Portal, user: str, code: str = "") -> Any:
    """The session `user` signing in gets; None when not signed in."""
    return sign_in(portal, user, code).session


def test_a_proof_of_the_old_device_expires_and_binds_to_its_secret(portal: Any) -> None:
    """A reset may go on for 5 minutes after the proof, and not after the secret changed."""
    store, clock = portal.test_store, portal.test_clock
    secret = bytes(range(20))
    gina = UserRecord(
        "gina", State.ACTIVE, secret=secret, confirmed=True, entry_id=entry_id("gina")
    )
    store.update(gina.entry_id, lambda _r: (gina, None))
    session = signed_in(portal, "gina")
    assert session is None  # active: the password alone does not sign in
    results: list[Any] = []
    code = code_at_step(secret, int(clock.seconds()) // 30)
    portal.sign_in("gina", "gina-pw", code, "192.0.2.9").addCallback(results.append)
    session = results[0].session
    assert fired(portal.new_secret(session)) is SetupResult.PROOF_REQUIRED
    next_code = code_at_step(secret, int(clock.seconds()) // 30 + 1)
    assert fired(portal.prove_device(session, next_code, "192.0.2.9")).accepted
    assert isinstance(fired(portal.new_secret(session)), NewSecret)
    clock.advance(299)
    assert isinstance(fired(portal.new_secret(session)), NewSecret)
    clock.advance(1)
    assert fired(portal.new_secret(session)) is SetupResult.PROOF_REQUIRED
    assert session.new_secret is None  # the key shown before is gone with the proof


def test_per_user_limit_counts_failures_only(portal: Any) -> None:
    """Successful sign-ins do not use up a user's attempts; failed ones do."""
    for _ in range(15):
        assert signed_in(portal, "hank") is not None
    results: list[Any] = []
    for _ in range(10):
        portal.sign_in("hank", "nope", "", f"192.0.2.{len(results)}").addCallback(results.append)
    portal.sign_in("hank", "hank-pw", "", "192.0.2.77").addCallback(results.append)
    assert [r.result.value for r in results[-2:]] == ["failed", "limited"]


def test_per_user_limit_counts_the_person_whatever_name_is_typed(portal: Any) -> None:
    """Failures under the uid and the alias add up: the alias gains no extra attempts."""
    results: list[Any] = []
    for attempt in range(10):
        name = "hank" if attempt % 2 else "hank@example.org"
        portal.sign_in(name, "nope", "", f"192.0.2.{attempt}").addCallback(results.append)
    assert {r.result.value for r in results} == {"failed"}
    for name in ("hank@example.org", "HANK", "hank"):
        portal.sign_in(name, "hank-pw", "", "192.0.2.99").addCallback(results.append)
    assert [r.result.value for r in results[-3:]] == ["limited"] * 3


def test_the_per_user_limit_tells_a_wrong_password_nothing(portal: Any) -> None:
    """Over the limit by the uid, a wrong password by a fresh alias still reads 'failed'."""
    results: list[Any] = []
    for attempt in range(10):
        portal.sign_in("hank", "nope", "", f"192.0.2.{attempt}").addCallback(results.append)
    portal.sign_in("hank@example.org", "nope", "", "192.0.2.50").addCallback(results.append)
    portal.sign_in("nobody@example.org", "nope", "", "192.0.2.51").addCallback(results.append)
    assert [r.result.value for r in results[-2:]] == ["failed", "failed"]


def test_forwarded_address_is_believed_only_from_a_trusted_proxy(portal: Any) -> None:
    """Behind a configured proxy the per-address limit counts X-Forwarded-For's last hop."""
    proxy = ipaddress.ip_network("192.0.2.0/24")  # the Browser helper connects from 192.0.2.5
    audit: io.StringIO = portal.test_audit_out

    def sign_in(site: Any, forwarded: str) -> None:
        browser = Browser(site)
        browser.extra = [f"X-Forwarded-For: {forwarded}"]  # the proxy adds it to every request
        token = browser.request("GET", "/")["csrf"]
        browser.request("POST", "/sign-in", {"csrf": token, "username": "ivy", "password": "x"})

    sign_in(make_site(portal, secure=False, trusted_proxies=(proxy,)), "203.0.113.9, 198.51.100.7")
    sign_in(make_site(portal, secure=False), "198.51.100.99")
    clients = [line.split('"client":"')[1].split('"')[0] for line in audit.getvalue().splitlines()]
    assert clients == ["198.51.100.7", "192.0.2.5"]


def test_a_csrf_pair_chosen_by_an_attacker_is_refused(portal: Any) -> None:
    """Over plain HTTP a planted cookie is no use: the form token is the server's MAC of it
    and of the client's address, so a token fetched from elsewhere does not fit."""
    proxy = ipaddress.ip_network("192.0.2.0/24")  # the Browser helper connects from .5
    site = make_site(portal, secure=False, trusted_proxies=(proxy,))
    planted = Browser(site, cookies={"mfa_csrf": "attacker-nonce"})
    form = {"csrf": "attacker-nonce", "username": "ivy", "password": "ivy-pass"}
    assert planted.request("POST", "/sign-in", form)["status"] == 403
    attacker = Browser(site, cookies={"mfa_csrf": "attacker-nonce"})
    attacker.extra = ["X-Forwarded-For: 203.0.113.66"]
    token = attacker.request("GET", "/")["csrf"]  # the token for the attacker's own address
    victim = Browser(site, cookies={"mfa_csrf": "attacker-nonce"})
    victim.extra = ["X-Forwarded-For: 198.51.100.20"]
    form = {"csrf": token, "username": "ivy", "password": "ivy-pass"}
    assert victim.request("POST", "/sign-in", form)["status"] == 403
    honest = Browser(site)
    token = honest.request("GET", "/")["csrf"]
    assert token and token != honest.cookies["mfa_csrf"]
    form = {"csrf": token, "username": "nobody", "password": "x"}
    assert honest.request("POST", "/sign-in", form)["status"] != 403


def test_the_server_header_names_no_software_version(portal: Any) -> None:
    """Pages say `Server: mfa-bridge`, not Twisted's name and version."""
    reply = Browser(make_site(portal, secure=False)).request("GET", "/")
    assert reply["headers"]["server"] == ["mfa-bridge"]


# --- one record per directory entry (SPEC 8): signing in by the alias -------------------

DAY = 86_400


def seed_active(store: SqliteStore, uid: str) -> bytes:
    """Make `uid` an active user; the secret."""
    secret = bytes(range(20))
    record = UserRecord(uid, State.ACTIVE, secret=secret, confirmed=True, entry_id=entry_id(uid))
    store.update(record.entry_id, lambda _r: (record, None))
    return secret


def state_shown(page: dict[str, Any]) -> tuple[str, str]:
    """The user name and the MFA state the status page shows."""
    body = page["body"]
    user = re.search(r'<dd id="user">([^<]*)</dd>', body)
    state = re.search(r'data-state="([^"]*)"', body)
    assert user is not None and state is not None, body
    return user[1], state[1]


def test_signing_in_by_alias_shows_the_entrys_grace_period(site: Any) -> None:
    """Signing in by the alias shows the entry's state: its grace period, not a new one."""
    assert Browser(site).sign_in("erin")["status"] == 303
    site.clock.advance(10 * DAY)
    browser = Browser(site)
    assert browser.sign_in(alias("erin"))["status"] == 303
    page = browser.request("GET", "/")
    assert state_shown(page) == ("erin", "grace")
    assert "You have 4 days left" in page["body"]
    assert len(site.store.list()) == 1


def test_active_user_signing_in_by_alias_needs_the_code(site: Any) -> None:
    """An active user signing in by the alias is asked for the code, then shown as active."""
    store, clock = site.store, site.clock
    secret = seed_active(store, "olga")
    browser = Browser(site)
    asked = browser.sign_in(alias("olga"))
    assert asked["status"] == 200 and "enter the 6-digit code too" in asked["body"]
    code = code_at_step(secret, int(clock.seconds()) // 30)
    assert browser.sign_in(alias("olga"), code)["status"] == 303
    assert state_shown(browser.request("GET", "/")) == ("olga", "active")
    stored = store.get(entry_id("olga"))
    assert stored is not None and stored.last_step == NOW // 30
    assert len(store.list()) == 1


def test_set_up_by_alias_writes_the_entrys_record(portal: Any) -> None:
    """Set-up in a session signed in by the alias writes the entry's record, under its name."""
    store, clock = portal.test_store, portal.test_clock
    session = signed_in(portal, alias("frank"))
    assert session is not None
    assert (session.owner.entry_id, session.username) == (entry_id("frank"), "frank")
    assert isinstance(fired(portal.new_secret(session)), NewSecret)
    secret = session.new_secret
    code = code_at_step(secret, int(clock.seconds()) // 30)
    assert fired(portal.confirm(session, code, "192.0.2.9")) is SetupResult.CONFIRMED
    (record,) = store.list()
    assert (record.entry_id, record.username) == (entry_id("frank"), "frank")
    assert (record.state, record.secret) == (State.ACTIVE, secret)
    assert sign_in(portal, "frank").result is SignInResult.CODE_REQUIRED
    clock.advance(30)
    later = signed_in(portal, "frank", code_at_step(secret, int(clock.seconds()) // 30))
    assert later is not None and later.owner == session.owner


def test_exempt_user_is_exempt_by_alias_too(make_portal: MakePortal) -> None:
    """exempt_users: ["dave"] signs dave in by his alias with the password alone, as exempt."""
    portal = make_portal(exempt_users=frozenset({"dave"}))
    seed_active(portal.test_store, "dave")
    session = signed_in(portal, alias("dave"))
    assert session is not None and session.username == "dave"
    assert fired(portal.status(session))["state"] == "exempt"


def test_an_alias_in_exempt_users_exempts_nobody(make_portal: MakePortal) -> None:
    """exempt_users: ["dave@example.org"] (an alias) does not exempt dave: he needs the code."""
    portal = make_portal(exempt_users=frozenset({alias("dave")}))
    secret = seed_active(portal.test_store, "dave")
    for user in (alias("dave"), "dave"):
        assert sign_in(portal, user).result is SignInResult.CODE_REQUIRED
    code = code_at_step(secret, int(portal.test_clock.seconds()) // 30)
    session = signed_in(portal, alias("dave"), code)
    assert session is not None
    assert fired(portal.status(session))["state"] == "active"


# --- exhaustion: connection limits and request deadlines -----------------------------------


def connect(site: Any, host: str) -> tuple[Any, StringTransport] | None:
    """A connection from `host` as the listener would make it; None when refused."""
    channel = site.buildProtocol(IPv4Address("TCP", host, 40000))
    if channel is None:
        return None
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    channel.makeConnection(transport)
    return channel, transport


def test_connections_beyond_the_limits_are_closed_at_once(portal: Any) -> None:
    """Per address and in all: connections beyond the limits get no channel (closed at
    once) and are counted; a closed one frees its place."""
    clock = MemoryReactorClock()
    limits = Limits(max_connections=3, max_connections_per_address=2)
    site = make_site(portal, secure=False, limits=limits, reactor=clock)
    first = connect(site, "192.0.2.1")
    assert first is not None and connect(site, "192.0.2.1") is not None
    assert connect(site, "192.0.2.1") is None  # third from one address
    assert connect(site, "192.0.2.2") is not None
    assert connect(site, "192.0.2.3") is None  # fourth in all
    assert site.refused == 2
    first[0].connectionLost(Failure(ConnectionDone()))
    assert connect(site, "192.0.2.3") is not None


def test_a_request_trickling_in_is_cut_off_at_its_deadline(portal: Any) -> None:
    """Headers sent a line at a time, each within the idle timeout: still cut off once
    request_timeout has passed since the first byte, and its place is freed."""
    clock = MemoryReactorClock()
    limits = Limits(request_timeout=10.0, idle_timeout=30.0, max_connections=1)
    site = make_site(portal, secure=False, limits=limits, reactor=clock)
    made = connect(site, "192.0.2.7")
    assert made is not None
    channel, transport = made
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    for _ in range(3):
        clock.advance(3)
        channel.dataReceived(b"X-Slow: yes\r\n")
        assert not transport.disconnecting
    clock.advance(1.5)
    assert transport.disconnecting
    channel.connectionLost(Failure(ConnectionDone()))
    assert site.open_total == 0


def test_a_whole_request_meets_its_deadline_and_the_next_gets_its_own(portal: Any) -> None:
    """A complete request is answered and the connection kept; its deadline is over."""
    clock = MemoryReactorClock()
    site = make_site(portal, secure=False, limits=Limits(request_timeout=5.0), reactor=clock)
    made = connect(site, "192.0.2.8")
    assert made is not None
    channel, transport = made
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: portal\r\n\r\n")
    assert b"200 OK" in transport.value()
    clock.advance(6)
    assert not transport.disconnecting


@pytest.mark.parametrize(("user", "password"), [("nobody", "x"), ("hank", "wrong")])
def test_a_failed_sign_in_is_answered_failure_delay_after_it_came(
    portal: Any, user: str, password: str
) -> None:
    """Unknown user or wrong password: the page comes failure_delay after the request,
    not earlier, so its time says nothing of why; a good sign-in is answered at once."""
    clock = portal.test_clock
    site = make_site(portal, secure=False, limits=Limits(failure_delay=1.0), reactor=clock)
    browser = Browser(site)
    token = browser.request("GET", "/")["csrf"]
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.5", 50000))
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    body = urlencode({"csrf": token, "username": user, "password": password}).encode()
    head = [
        "POST /sign-in HTTP/1.1",
        "Host: portal.test",
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {len(body)}",
        f"Cookie: mfa_csrf={browser.cookies['mfa_csrf']}",
    ]
    channel.dataReceived(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    clock.advance(0.9375)
    assert transport.value() == b""
    clock.advance(0.1875)  # 1.125: past the most the random spread adds (a tenth)
    assert b"Sign-in failed" in transport.value()
    good = Browser(site).sign_in("ivy")
    assert good["status"] == 303


def test_a_trusted_proxy_is_held_only_to_the_total_limit(portal: Any) -> None:
    """Behind a TLS-terminating proxy all users share its address: the per-address limit
    does not apply to it, the total one does."""
    clock = MemoryReactorClock()
    limits = Limits(max_connections=4, max_connections_per_address=2)
    proxy = ipaddress.ip_network("10.0.0.5/32")
    site = make_site(portal, secure=False, limits=limits, trusted_proxies=(proxy,), reactor=clock)
    assert all(connect(site, "10.0.0.5") is not None for _ in range(4))
    assert connect(site, "10.0.0.5") is None  # the total


def test_a_sign_in_form_outlives_a_restart(portal: Any) -> None:
    """The form token is a MAC under the store's key: a form fetched before a restart (a
    new site here) is still accepted after it, as it is by another instance sharing it."""
    before = Browser(make_site(portal, secure=False))
    token = before.request("GET", "/")["csrf"]
    after = Browser(make_site(portal, secure=False), cookies=dict(before.cookies))
    form = {"csrf": token, "username": "ivy", "password": password_of("ivy")}
    assert after.request("POST", "/sign-in", form)["status"] == 303
