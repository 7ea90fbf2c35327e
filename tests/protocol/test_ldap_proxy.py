"""Protocol tests of the LDAP bind proxy: bytes in, bytes out, no sockets, no sleeping.

`LdapProxyProtocol` runs on a `StringTransport`. Requests are encoded and responses
decoded with ldaptor's codec, as a client would. The login decision is the real one
(`LdapLogin` over the real `Authenticator` and a SQLite store in tmp_path) over a fake
directory; the upstream connection is a fake whose opening the test controls.
"""

from __future__ import annotations

import io
import ipaddress
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ldaptor.protocols import pureber, pureldap
from ldaptor.protocols.ldap.ldapclient import LDAPClient
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from zope.interface import directlyProvides

from bridge.audit import AuditLog
from bridge.auth import Authenticator, Caller, ClientRules
from bridge.config import ConfigError, LdapProxyTls, parse_config
from bridge.core.totp import code_at_step
from bridge.core.types import Identity, LockReason, State, UserRecord
from bridge.directory import Binder, BindResult, BindStatus, Plan, UnavailableError
from bridge.ldap_proxy.framing import FramingError, complete_prefix, pdu_size
from bridge.ldap_proxy.login import LdapLogin, LoginResult
from bridge.ldap_proxy.names import UserMapper
from bridge.ldap_proxy.server import (
    MAX_PDU,
    LdapProxyFactory,
    LdapProxyProtocol,
    Settings,
)
from bridge.ldap_proxy.tls import TlsSetupError, server_tls_options
from bridge.ldap_proxy.upstream import UpstreamRefusedError, UpstreamUnavailableError
from bridge.ldapdn import same_dn
from bridge.service import ldap_proxy_service, open_store, policy_from
from bridge.store import SqliteStore
from tests.certs import make_ca, make_server_cert
from tests.protocol.entries import alias, entries, entry_id

NOW = 1_700_000_000
DAY = 86_400
TOTP_SECRET = bytes(range(1, 21))
BASE = "ou=people,dc=example,dc=org"
SERVICE_DN = "cn=app,ou=services,dc=example,dc=org"
PASSWORDS = {"alice": "alice-pass", "bob": "bob-pass", "carol": "carol-pass"}
SUCCESS, PROTOCOL_ERROR, AUTH_METHOD, INVALID, INSUFFICIENT, UNAVAILABLE = 0, 2, 7, 49, 50, 52
OPERATIONS_ERROR, CONFIDENTIALITY_REQUIRED = 1, 13
STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
NOTICE_OF_DISCONNECTION = b"1.3.6.1.4.1.1466.20036"
CLIENT = "192.0.2.10"


def dn(user: str) -> str:
    return f"uid={user},{BASE}"


ENTRIES = entries(PASSWORDS, dn)


# --- fakes --------------------------------------------------------------------------------


@dataclass
class FakeDirectory:
    """`Directory.authenticate`: finds the entry by any of its names (uid, or the alias
    <uid>@example.org), asks `plan` for the password once, checks it against PASSWORDS,
    then, given `bind`, lets the caller's bind as the entry's DN decide.

    `calls` records (name, password chosen by `plan`; None when no entry was found);
    `answer`/`error` force an outcome before any entry is found; `found_dn` gives a uid's
    entry another DN than `dn(uid)`.
    """

    calls: list[tuple[str, str | None]] = field(default_factory=list)
    answer: BindResult | None = None
    error: Exception | None = None
    found_dn: dict[str, str] = field(default_factory=dict)

    def __call__(
        self, username: str, plan: Plan, bind: Binder | None = None
    ) -> Deferred[BindResult]:
        found = None if self.answer is not None or self.error is not None else self._find(username)
        password = plan(found) if found is not None else None
        self.calls.append((username, password))
        if self.error is not None:
            return fail(self.error)
        result = self.answer or self._check(found, password)
        if result.status is not BindStatus.OK or bind is None:
            return succeed(result)
        assert password is not None
        return Deferred.fromCoroutine(self._bind(bind, result, password))

    def _find(self, username: str) -> Identity | None:
        entry = ENTRIES.get(username)
        if entry is None or entry.name not in self.found_dn:
            return entry
        return Identity(entry.entry_id, entry.name, self.found_dn[entry.name])

    @staticmethod
    def _check(found: Identity | None, password: str | None) -> BindResult:
        if found is None:
            return BindResult(BindStatus.UNKNOWN_USER)
        if password != PASSWORDS[found.name]:  # an empty one included, as Directory: no bind
            return BindResult(BindStatus.BAD_PASSWORD, found)
        return BindResult(BindStatus.OK, found, server="ldap://dir-b")

    @staticmethod
    async def _bind(bind: Binder, result: BindResult, password: str) -> BindResult:
        """As Directory does: the caller's bind decides; a server that cannot answer fails."""
        assert result.identity is not None and result.server is not None
        try:
            ok = await bind(result.server, result.identity.dn, password)
        except UnavailableError:
            return BindResult(BindStatus.UNAVAILABLE)
        return result if ok else BindResult(BindStatus.BAD_PASSWORD, result.identity)


@dataclass
class FakeUpstream:
    """A bound upstream connection: records what it is sent; the test plays the directory."""

    sent: list[bytes] = field(default_factory=list)
    closed: bool = False
    on_pdus: Callable[[bytes], None] | None = None
    on_lost: Callable[[], None] | None = None
    producer: Any = None

    def relay(self, on_pdus: Callable[[bytes], None], on_lost: Callable[[], None]) -> None:
        self.on_pdus, self.on_lost = on_pdus, on_lost

    def detach(self) -> None:
        self.on_pdus = self.on_lost = None

    def send(self, pdu: bytes) -> None:
        self.sent.append(pdu)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeOpener:
    """Opens FakeUpstreams; `outcome` may be an exception to fail with; `hold` keeps it pending."""

    calls: list[tuple[tuple[str, ...], str, str]] = field(default_factory=list)
    opened: list[FakeUpstream] = field(default_factory=list)
    outcome: Exception | None = None
    hold: bool = False
    held: list[Deferred[Any]] = field(default_factory=list)
    rebinds: int = 0  # binds on a link the session already had

    def __call__(
        self, urls: Sequence[str], bind_dn: str, password: str, reuse: Any = None
    ) -> Deferred[Any]:
        self.calls.append((tuple(urls), bind_dn, password))
        if self.hold:
            d: Deferred[Any] = Deferred()
            self.held.append(d)
            return d
        if self.outcome is not None:
            if isinstance(self.outcome, UpstreamUnavailableError) and reuse is not None:
                reuse.close()  # as the real one: a link that failed is closed
            return fail(self.outcome)
        if reuse is not None and not reuse.closed:
            self.rebinds += 1
            return succeed(reuse)
        return succeed(self.new())

    def bind_at(self, url: str, bind_dn: str, password: str, reuse: Any = None) -> Deferred[Any]:
        return self((url,), bind_dn, password, reuse)

    def new(self) -> FakeUpstream:
        upstream = FakeUpstream()
        self.opened.append(upstream)
        return upstream


class TlsCapableTransport(StringTransport):
    """A StringTransport with `startTLS` (ITLSTransport), as Twisted's TCP transports have."""

    def __init__(self, peer: IPv4Address, *, ldaps: bool = False) -> None:
        super().__init__(peerAddress=peer)
        self.tls_options: Any = None
        if ldaps:  # what the LDAPS listener's TLS wrapper looks like to the protocol
            directlyProvides(self, ISSLTransport)

    def startTLS(self, options: Any) -> None:  # noqa: N802 - Twisted's name
        assert self.tls_options is None, "startTLS twice"
        self.tls_options = options
        directlyProvides(self, ISSLTransport)


# --- the proxy under test -----------------------------------------------------------------


@dataclass
class Proxy:
    """One client connection to the proxy, with its fakes."""

    protocol: LdapProxyProtocol
    transport: TlsCapableTransport
    directory: FakeDirectory
    opener: FakeOpener
    store: SqliteStore
    clock: MemoryReactorClock
    factory: LdapProxyFactory
    read: int = 0

    def connect(self, host: str = CLIENT, *, ldaps: bool = False) -> Proxy | None:
        """Another client connection to the same proxy; None when the proxy refuses it."""
        peer = IPv4Address("TCP", host, 40000)
        protocol = self.factory.buildProtocol(peer)
        if protocol is None:
            return None
        transport = TlsCapableTransport(peer, ldaps=ldaps)
        protocol.makeConnection(transport)
        return Proxy(
            protocol,
            transport,
            self.directory,
            self.opener,
            self.store,
            self.clock,
            self.factory,
        )

    def lose(self) -> None:
        """The connection closes (as Twisted reports it after loseConnection)."""
        self.protocol.connectionLost()

    def send(self, op: Any, msg_id: int = 1, controls: Any = None) -> list[Any]:
        """Send one request; the responses written while handling it, decoded."""
        return self.send_raw(pureldap.LDAPMessage(op, id=msg_id, controls=controls).toWire())

    def send_raw(self, data: bytes) -> list[Any]:
        self.protocol.dataReceived(data)
        return self.responses()

    def responses(self) -> list[Any]:
        """LDAPMessages written since the last call."""
        data = self.transport.value()[self.read :]
        self.read += len(data)
        out = []
        while data:
            message, used = pureber.berDecodeObject(LDAPClient.berdecoder, data)
            assert message is not None and used > 0
            out.append(message)
            data = data[used:]
        return out

    def bind(self, bind_dn: str, password: str, msg_id: int = 1) -> int:
        """A simple bind; its result code."""
        (reply,) = self.send(pureldap.LDAPBindRequest(dn=bind_dn, auth=password), msg_id)
        assert isinstance(reply.value, pureldap.LDAPBindResponse)
        assert reply.id == msg_id
        return int(reply.value.resultCode)

    def code(self, steps: int = 0) -> str:
        return code_at_step(TOTP_SECRET, int(self.clock.seconds()) // 30 + steps)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def upstream(self) -> FakeUpstream:
        return self.opener.opened[-1]


def search(base: str = BASE, scope: int = 2) -> Any:
    return pureldap.LDAPSearchRequest(baseObject=base, scope=scope, attributes=["1.1"])


def seed(store: SqliteStore, record: UserRecord) -> None:
    """Put a user's record in the store (under its entry's id) as the admin CLI would."""
    store.update(record.entry_id, lambda _: (record, None))


MakeProxy = Callable[..., Proxy]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`ldap_proxy.tls` for a certificate for 127.0.0.1 from a test CA."""
    pki = tmp_path_factory.mktemp("proxy-pki")
    ca = make_ca(pki, "Proxy Client-side CA")
    ip = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate, key = make_server_cert(ca, pki, "proxy", ip)
    return {"certificate": str(certificate), "key": str(key)}


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator[MakeProxy]:
    """Proxies configured through the config parser. bob is active with TOTP_SECRET,
    carol is locked, alice is new (grace at her first login); each is also found by the
    alias <uid>@example.org. `ldaps=True` makes the
    connection look like one accepted by the LDAPS listener."""
    stores: list[SqliteStore] = []

    def make(*, ldaps: bool = False, **ldap_proxy: Any) -> Proxy:
        where = tmp_path / f"proxy-{len(stores)}"
        config = parse_config(
            {
                "directory": {
                    "urls": ["ldap://dir-a", "ldap://dir-b"],
                    "bind_dn": "cn=bridge,ou=services,dc=example,dc=org",
                    "bind_password": "service-account-password",
                    "user_base": BASE,
                    "user_filter": "(&(objectClass=person)(|(uid={username})(mail={username})))",
                },
                "store": {"path": str(where / "state.db")},
                "mfa": {"enrollment_days": 14, "max_failures": 5, "window": 1},
                "radius": {
                    "listen": "127.0.0.1:0",
                    "clients": [{"address": "127.0.0.1", "secret": "s3cret-s3cret-s3cret"}],
                },
                "ldap_proxy": {"listen": "127.0.0.1:0", **ldap_proxy},
            },
            tmp_path,
        )
        assert config.ldap_proxy is not None
        store = open_store(config)
        stores.append(store)
        bob = UserRecord(
            "bob", State.ACTIVE, secret=TOTP_SECRET, confirmed=True, entry_id=entry_id("bob")
        )
        carol = UserRecord(
            "carol", State.LOCKED, lock_reason=LockReason.ADMIN, entry_id=entry_id("carol")
        )
        for record in (bob, carol):
            seed(store, record)
        clock = MemoryReactorClock()
        clock.advance(NOW)
        directory = FakeDirectory()
        audit_out = io.StringIO()
        authenticator = Authenticator(
            store,
            directory,
            policy_from(config),
            frozenset(),
            clock,
            audit=AuditLog(audit_out, clock.seconds),
        )
        opener = FakeOpener()
        factory = LdapProxyFactory(
            Settings.from_config(config.ldap_proxy, config.directory),
            LdapLogin(authenticator, config.ldap_proxy.rebind_seconds),
            opener,
            clock,
        )
        peer = IPv4Address("TCP", CLIENT, 40000)
        protocol = factory.buildProtocol(peer)
        assert protocol is not None
        transport = TlsCapableTransport(peer, ldaps=ldaps)
        protocol.makeConnection(transport)
        return Proxy(protocol, transport, directory, opener, store, clock, factory)

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted during the test."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# --- binds that succeed -------------------------------------------------------------------


def test_grace_user_binds_upstream_with_the_whole_field(make_proxy: MakeProxy) -> None:
    """A new user's password-only bind is accepted (grace) and bound upstream as the found DN,
    on the server that checked the password first."""
    proxy = make_proxy()
    assert proxy.bind(dn("alice"), "alice-pass") == SUCCESS
    assert proxy.directory.calls == [("alice", "alice-pass")]
    assert proxy.opener.calls == [(("ldap://dir-b",), dn("alice"), "alice-pass")]
    record = proxy.store.get(entry_id("alice"))
    assert record is not None and record.state is State.GRACE


def test_enrolled_user_binds_upstream_with_the_password_part(make_proxy: MakeProxy) -> None:
    """password+code: the code is checked locally and only the password goes upstream."""
    proxy = make_proxy()
    assert proxy.bind(dn("bob"), "bob-pass" + proxy.code()) == SUCCESS
    assert proxy.directory.calls == [("bob", "bob-pass")]
    assert proxy.opener.calls == [(("ldap://dir-b",), dn("bob"), "bob-pass")]


def test_bare_user_name_and_case_of_the_dn(make_proxy: MakeProxy) -> None:
    """A bare name is a user name; a DN matches the user base whatever its case and spacing."""
    proxy = make_proxy()
    assert proxy.bind("alice", "alice-pass") == SUCCESS
    assert proxy.bind("UID=Alice, OU=People,DC=Example,DC=org", "alice-pass", 2) == SUCCESS
    assert [c[0] for c in proxy.directory.calls] == ["alice", "alice"]


BOB_ALIAS = alias("bob")


def test_active_user_binding_by_alias_needs_the_code(make_proxy: MakeProxy) -> None:
    """A bare-name bind by an active user's alias needs the code, spent on the entry's record
    (rebinds off: the same code again is a replay)."""
    proxy = make_proxy(rebind_seconds=0)
    assert proxy.bind(BOB_ALIAS, "bob-pass") == INVALID
    code = proxy.code()
    assert proxy.bind(BOB_ALIAS, "bob-pass" + code, 2) == SUCCESS
    assert proxy.directory.calls == [(BOB_ALIAS, "bob-pass"), (BOB_ALIAS, "bob-pass")]
    assert proxy.opener.calls[-1] == (("ldap://dir-b",), dn("bob"), "bob-pass")
    record = proxy.store.get(entry_id("bob"))
    assert record is not None
    assert (record.state, record.last_step, record.failures) == (State.ACTIVE, NOW // 30, 0)
    assert {r.entry_id for r in proxy.store.list()} == {entry_id("bob"), entry_id("carol")}
    assert proxy.bind(dn("bob"), "bob-pass" + code, 3) == INVALID  # a replay by the uid's DN


def test_new_user_binding_by_alias_starts_the_entrys_one_grace_period(
    make_proxy: MakeProxy,
) -> None:
    """A new user's first bind by the alias starts the entry's one grace period, under its name."""
    proxy = make_proxy()
    assert proxy.bind(alias("alice"), "alice-pass") == SUCCESS
    assert proxy.opener.calls == [(("ldap://dir-b",), dn("alice"), "alice-pass")]
    first = proxy.store.get(entry_id("alice"))
    assert first is not None
    assert (first.username, first.state, first.deadline) == ("alice", State.GRACE, NOW + 14 * DAY)
    proxy.clock.advance(DAY)
    later = proxy.connect()
    assert later is not None
    assert later.bind(dn("alice"), "alice-pass") == SUCCESS
    assert proxy.store.get(entry_id("alice")) == first
    assert len(proxy.store.list()) == 3  # alice, bob, carol: one record each


def test_passthrough_dn_binds_upstream_without_a_code(make_proxy: MakeProxy) -> None:
    """A listed service account is bound upstream as given; the login decision is not asked."""
    proxy = make_proxy(passthrough_dns=[SERVICE_DN])
    assert proxy.bind("CN=App,ou=services,dc=example,dc=org", "app-secret") == SUCCESS
    assert proxy.opener.calls == [((), "CN=App,ou=services,dc=example,dc=org", "app-secret")]
    assert proxy.directory.calls == []


def test_anonymous_bind_forwarded_when_allowed(make_proxy: MakeProxy) -> None:
    """With allow_anonymous the empty bind is made upstream, as anonymous."""
    proxy = make_proxy(allow_anonymous=True)
    assert proxy.bind("", "") == SUCCESS
    assert proxy.opener.calls == [((), "", "")]


# --- binds that fail: 49 whatever the reason ----------------------------------------------

FAILURES: dict[str, tuple[str, str]] = {
    "wrong password": (dn("alice"), "wrong"),
    "unknown user": (dn("zoe"), "zoe-pass"),
    "empty password with a user DN": (dn("alice"), ""),
    "anonymous": ("", ""),
    "empty DN with a password": ("", "alice-pass"),
    "DN outside the user base": ("uid=alice,ou=admins,dc=example,dc=org", "alice-pass"),
    "DN named by another attribute": (f"cn=alice,{BASE}", "alice-pass"),
    "multi-valued RDN": (f"uid=alice+cn=x,{BASE}", "alice-pass"),
    "not a DN": ("uid=alice,,dc=x", "alice-pass"),
    "filter characters": ("alice)(uid=*", "alice-pass"),
    "NUL in the name": (f"uid=alice\\00,{BASE}", "alice-pass"),
    "enrolled user without code": (dn("bob"), "bob-pass"),
    "enrolled user with a wrong code": (dn("bob"), "bob-pass000000"),
    "locked user": (dn("carol"), "carol-pass"),
    "passthrough DN with an empty password": (SERVICE_DN, ""),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_every_failed_bind_is_invalid_credentials(make_proxy: MakeProxy, case: str) -> None:
    """Each kind of failed bind answers 49, and no upstream connection stays bound."""
    proxy = make_proxy(passthrough_dns=[SERVICE_DN])
    bind_dn, password = FAILURES[case]
    assert proxy.bind(bind_dn, password) == INVALID
    # A right password with a missing or wrong code, or a locked user: the directory's
    # bind was the password check, and that connection is closed again.
    assert all(link.closed for link in proxy.opener.opened)
    assert not proxy.closed
    (done,) = proxy.send(search(), 2)
    assert done.value.resultCode == INSUFFICIENT  # still unbound


def test_empty_password_never_reaches_the_directory(make_proxy: MakeProxy) -> None:
    """An empty password is refused before any directory call (slapd may bind it anonymous)."""
    proxy = make_proxy(passthrough_dns=[SERVICE_DN])
    assert proxy.bind(dn("alice"), "") == INVALID
    assert proxy.bind(SERVICE_DN, "", 2) == INVALID
    assert proxy.directory.calls == []
    assert proxy.opener.calls == []


def test_invalid_utf8_password_refused(make_proxy: MakeProxy) -> None:
    """A password that is not UTF-8 answers 49 without a directory call."""
    proxy = make_proxy()
    assert proxy.bind(dn("alice"), b"\xff\xfe") == INVALID  # type: ignore[arg-type]
    assert proxy.directory.calls == []


def test_replayed_code_refused(make_proxy: MakeProxy) -> None:
    """With rebinds off, a code accepted once is refused the second time (49)."""
    proxy = make_proxy(rebind_seconds=0)
    code = proxy.code()
    assert proxy.bind(dn("bob"), "bob-pass" + code) == SUCCESS
    assert proxy.bind(dn("bob"), "bob-pass" + code, 2) == INVALID
    assert proxy.upstream.closed  # the second bind dropped the first identity


# --- apps that bind again (SPEC 6, ldap_proxy.rebind_seconds) -------------------------------


def failures_of(proxy: Proxy, uid: str) -> tuple[int, int | None]:
    record = proxy.store.get(entry_id(uid))
    assert record is not None
    return record.failures, record.last_step


def test_an_app_binding_again_with_the_same_code_is_accepted(make_proxy: MakeProxy) -> None:
    """The same password+code from the same address, again and again within rebind_seconds:
    accepted each time, the password bound each time, no replay and no failure counted."""
    proxy = make_proxy()
    code = proxy.code()
    for message_id in range(1, 7):
        assert proxy.bind(dn("bob"), "bob-pass" + code, message_id) == SUCCESS
    assert len(proxy.opener.calls) == 6  # the directory checked the password every time
    assert failures_of(proxy, "bob") == (0, NOW // 30)


def test_an_app_binding_on_several_connections_at_once_is_accepted_on_each(
    make_proxy: MakeProxy,
) -> None:
    """A browser loading a page and its parts sends one password+code on five connections
    at once: all five accepted (one with the code, four as rebinds), no failure counted."""
    proxy = make_proxy()
    code = proxy.code()
    connections = [proxy] + [proxy.connect() for _ in range(4)]
    proxy.opener.hold = True  # every upstream bind waits: all five are in flight together
    for connection in connections:
        assert connection is not None
        request = pureldap.LDAPBindRequest(dn=dn("bob"), auth="bob-pass" + code)
        assert connection.send(request) == []
    proxy.opener.hold = False
    for held in list(proxy.opener.held):
        held.callback(proxy.opener.new())
    results = []
    for connection in connections:
        assert connection is not None
        (reply,) = connection.responses()
        results.append(int(reply.value.resultCode))
    assert results == [SUCCESS] * 5
    assert failures_of(proxy, "bob") == (0, NOW // 30)


def test_an_admin_change_ends_a_remembered_bind(make_proxy: MakeProxy) -> None:
    """After the admin locks and unlocks the user, the password+code from before the lock
    is a replay, not a rebind (the remembered binds are forgotten)."""
    proxy = make_proxy()
    code = proxy.code()
    assert proxy.bind(dn("bob"), "bob-pass" + code) == SUCCESS
    proxy.clock.advance(20)  # past the moments an accepted bind is also held in memory
    proxy.store.forget_rebinds(entry_id("bob"))  # what every `user` command does
    again = proxy.connect()
    assert again is not None
    assert again.bind(dn("bob"), "bob-pass" + code) == INVALID


def test_the_same_code_from_another_address_or_later_is_a_replay(make_proxy: MakeProxy) -> None:
    """From another address, or after rebind_seconds, the code is a replay (49, a failure)."""
    proxy = make_proxy(rebind_seconds=600)
    code = proxy.code()
    assert proxy.bind(dn("bob"), "bob-pass" + code) == SUCCESS
    other = proxy.connect("198.51.100.4")
    assert other is not None
    assert other.bind(dn("bob"), "bob-pass" + code) == INVALID
    assert failures_of(proxy, "bob")[0] == 1
    proxy.clock.advance(601)
    later = proxy.connect()  # the first connection has passed its idle timeout
    assert later is not None
    assert later.bind(dn("bob"), "bob-pass" + code) == INVALID


def test_a_rebind_ends_with_a_lock_or_a_wrong_password(make_proxy: MakeProxy) -> None:
    """A wrong password is refused by the directory even with the remembered code; once the
    user is locked, the remembered bind no longer counts."""
    proxy = make_proxy()
    code = proxy.code()
    assert proxy.bind(dn("bob"), "bob-pass" + code) == SUCCESS
    assert proxy.bind(dn("bob"), "not-bob" + code, 2) == INVALID
    proxy.store.update(
        entry_id("bob"),
        lambda r: (r.evolve(state=State.LOCKED, lock_reason=LockReason.ADMIN) if r else None, 0),
    )
    assert proxy.bind(dn("bob"), "bob-pass" + code, 3) == INVALID


def test_a_remembered_bind_does_not_outlive_the_users_permission(make_proxy: MakeProxy) -> None:
    """Once ldap_proxy.allowed_groups leaves the user out, the password+code remembered from
    before is refused as the first bind would be (not-allowed), not accepted as a rebind."""
    proxy = make_proxy()
    code = proxy.code()
    assert proxy.bind(dn("bob"), "bob-pass" + code) == SUCCESS
    login = proxy.factory.login
    assert isinstance(login, LdapLogin)
    login.rules = ClientRules.of("ldap-proxy", ("cn=wiki-users,ou=groups,dc=example,dc=org",))
    assert proxy.bind(dn("bob"), "bob-pass" + code, 2) == INVALID
    assert failures_of(proxy, "bob") == (0, NOW // 30)  # refused, not counted as a failure


def test_what_is_remembered_of_a_bind_is_a_keyed_hash(make_proxy: MakeProxy) -> None:
    """Neither the password nor the code is in the store's file, only the rebind's hash."""
    proxy = make_proxy()
    code = proxy.code()
    assert proxy.bind(dn("bob"), "bob-pass" + code) == SUCCESS
    path = proxy.store.path
    data = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    assert b"bob-pass" not in data and code.encode() not in data
    (count,) = proxy.store.query("SELECT count(*) FROM rebinds")[0]
    assert count == 1


def test_dn_must_be_the_one_the_directory_found(make_proxy: MakeProxy) -> None:
    """A bind DN naming the user but not the entry the search found is refused."""
    proxy = make_proxy()
    proxy.directory.found_dn["alice"] = f"uid=alice,ou=staff,{BASE}"
    assert proxy.bind(dn("alice"), "alice-pass") == INVALID
    assert all(link.closed for link in proxy.opener.opened)
    assert proxy.bind("alice", "alice-pass", 2) == SUCCESS  # a bare name has no DN to compare
    assert proxy.opener.calls[-1][1] == f"uid=alice,ou=staff,{BASE}"


def test_upstream_refusal_is_invalid_credentials(make_proxy: MakeProxy) -> None:
    """If the session's own upstream bind is refused, the client gets 49."""
    proxy = make_proxy(passthrough_dns=[SERVICE_DN])
    proxy.opener.outcome = UpstreamRefusedError("bind refused (49)")
    assert proxy.bind(SERVICE_DN, "wrong") == INVALID
    assert proxy.bind(dn("alice"), "alice-pass", 2) == INVALID


def test_directory_down_is_invalid_credentials(make_proxy: MakeProxy) -> None:
    """No directory server answering fails the bind with 49 (SPEC 6: whatever the reason)."""
    proxy = make_proxy(passthrough_dns=[SERVICE_DN])
    proxy.directory.answer = BindResult(BindStatus.UNAVAILABLE)
    assert proxy.bind(dn("alice"), "alice-pass") == INVALID
    proxy.opener.outcome = UpstreamUnavailableError("connect: refused")
    assert proxy.bind(SERVICE_DN, "app-secret", 2) == INVALID


def test_sasl_bind_is_auth_method_not_supported(make_proxy: MakeProxy) -> None:
    """A SASL bind answers 7 without any login attempt."""
    proxy = make_proxy()
    request = pureldap.LDAPBindRequest(dn="", auth=("PLAIN", b"\0alice\0alice-pass"), sasl=True)
    (reply,) = proxy.send(request)
    assert reply.value.resultCode == AUTH_METHOD
    assert proxy.directory.calls == []


def test_ldapv2_bind_is_protocol_error(make_proxy: MakeProxy) -> None:
    """An LDAPv2 bind answers protocolError (2)."""
    proxy = make_proxy()
    (reply,) = proxy.send(pureldap.LDAPBindRequest(version=2, dn=dn("alice"), auth="alice-pass"))
    assert reply.value.resultCode == PROTOCOL_ERROR
    assert proxy.directory.calls == []


# --- before and after a bind ---------------------------------------------------------------


def test_root_dse_answered_before_bind(make_proxy: MakeProxy) -> None:
    """The RootDSE read is answered locally (no upstream connection) before any bind."""
    proxy = make_proxy()
    entry, done = proxy.send(search("", 0), 3)
    assert isinstance(entry.value, pureldap.LDAPSearchResultEntry) and entry.id == 3
    assert dict(entry.value.attributes)[b"supportedLDAPVersion"] == [b"3"]
    assert isinstance(done.value, pureldap.LDAPSearchResultDone)
    assert done.value.resultCode == SUCCESS
    assert proxy.opener.calls == []


@pytest.mark.parametrize(
    ("request_op", "response_type"),
    [
        (search(), pureldap.LDAPSearchResultDone),
        (search("", 2), pureldap.LDAPSearchResultDone),  # a subtree search from the root
        (
            pureldap.LDAPCompareRequest(
                dn("alice"),
                pureldap.LDAPAttributeValueAssertion(
                    pureber.BEROctetString("uid"), pureber.BEROctetString("alice")
                ),
            ),
            pureldap.LDAPCompareResponse,
        ),
        (pureldap.LDAPDelRequest(entry=dn("alice")), pureldap.LDAPDelResponse),
        (
            pureldap.LDAPExtendedRequest(requestName=b"1.3.6.1.4.1.4203.1.11.3"),
            pureldap.LDAPExtendedResponse,
        ),
    ],
)
def test_other_operations_refused_before_bind(
    make_proxy: MakeProxy, request_op: Any, response_type: type[Any]
) -> None:
    """Searches, compares, writes and extended operations before a bind get 50."""
    proxy = make_proxy()
    (reply,) = proxy.send(request_op, 4)
    assert isinstance(reply.value, response_type) and reply.id == 4
    assert reply.value.resultCode == INSUFFICIENT
    assert proxy.opener.calls == [] and not proxy.closed


def test_abandon_before_bind_ignored(make_proxy: MakeProxy) -> None:
    """Abandon has no response; before a bind it is ignored."""
    proxy = make_proxy()
    assert proxy.send(pureldap.LDAPAbandonRequest(id=1), 2) == []
    assert not proxy.closed


def test_operations_after_bind_forwarded_byte_for_byte(make_proxy: MakeProxy) -> None:
    """After a bind, requests go upstream as the client encoded them, responses come back
    the same way (controls and all)."""
    proxy = make_proxy()
    assert proxy.bind(dn("alice"), "alice-pass") == SUCCESS
    request = pureldap.LDAPMessage(search(), id=2, controls=[("1.2.3", False, b"v")]).toWire()
    assert proxy.send_raw(request) == []
    assert proxy.upstream.sent == [request]
    entry = pureldap.LDAPMessage(
        pureldap.LDAPSearchResultEntry(dn("alice"), [("uid", ["alice"])]), id=2
    ).toWire()
    done = pureldap.LDAPMessage(pureldap.LDAPSearchResultDone(resultCode=0), id=2).toWire()
    assert proxy.upstream.on_pdus is not None
    proxy.upstream.on_pdus(entry + done)
    assert proxy.transport.value().endswith(entry + done)


def test_new_bind_drops_the_old_identity(make_proxy: MakeProxy) -> None:
    """A second bind stops the first identity's relay; if it fails the session is unbound."""
    proxy = make_proxy()
    assert proxy.bind(dn("alice"), "alice-pass") == SUCCESS
    first = proxy.upstream
    assert proxy.bind(dn("bob"), "wrong", 2) == INVALID
    assert first.on_pdus is None  # responses for alice reach nobody any more
    (done,) = proxy.send(search(), 3)
    assert done.value.resultCode == INSUFFICIENT
    assert first.sent == []


def test_next_bind_rebinds_the_same_upstream_connection(make_proxy: MakeProxy) -> None:
    """An app binding user after user on one connection costs one upstream connection."""
    proxy = make_proxy()
    assert proxy.bind(dn("alice"), "alice-pass") == SUCCESS
    assert proxy.bind(dn("bob"), "bob-pass" + proxy.code(), 2) == SUCCESS
    assert len(proxy.opener.opened) == 1
    assert proxy.opener.rebinds == 1
    assert [call[1] for call in proxy.opener.calls] == [dn("alice"), dn("bob")]
    proxy.send(search(), 3)
    assert len(proxy.upstream.sent) == 1  # relayed for bob on the same link
    assert not proxy.upstream.closed


@pytest.mark.parametrize("together", [True, False], ids=["in-the-binds-read", "afterwards"])
def test_requests_sent_during_a_bind_wait_for_it(make_proxy: MakeProxy, together: bool) -> None:
    """A search sent behind a bind (in the same read, or while the bind is decided) is
    handled after the bind, under the new identity. Reading pauses only then: a client
    that waits for its bind's answer costs no pause and resume of reading."""
    proxy = make_proxy()
    proxy.opener.hold = True
    bind = pureldap.LDAPMessage(pureldap.LDAPBindRequest(dn=dn("alice"), auth="alice-pass"), id=1)
    query = pureldap.LDAPMessage(search(), id=2).toWire()
    if together:
        assert proxy.send_raw(bind.toWire() + query) == []
    else:
        assert proxy.send_raw(bind.toWire()) == []
        assert proxy.transport.producerState == "producing"
        assert proxy.send_raw(query[:3]) == []
        proxy.protocol.dataReceived(query[3:])  # what the kernel had already read
    assert proxy.transport.producerState == "paused"
    upstream = proxy.opener.new()
    proxy.opener.held[0].callback(upstream)
    (reply,) = proxy.responses()
    assert reply.value.resultCode == SUCCESS
    assert upstream.sent == [query]
    assert proxy.transport.producerState == "producing"


def test_client_gone_before_bind_completes(make_proxy: MakeProxy) -> None:
    """A link opened for a client that has left is closed, and nothing is written."""
    proxy = make_proxy()
    proxy.opener.hold = True
    proxy.send(pureldap.LDAPBindRequest(dn=dn("alice"), auth="alice-pass"))
    proxy.protocol.connectionLost()
    upstream = proxy.opener.new()
    proxy.opener.held[0].callback(upstream)
    assert upstream.closed
    assert proxy.responses() == []


def test_upstream_lost_disconnects_the_client(make_proxy: MakeProxy) -> None:
    """When the directory drops the session's link, the client gets a notice and is closed."""
    proxy = make_proxy()
    assert proxy.bind(dn("alice"), "alice-pass") == SUCCESS
    assert proxy.upstream.on_lost is not None
    proxy.upstream.on_lost()
    (notice,) = proxy.responses()
    assert notice.id == 0 and notice.value.resultCode == UNAVAILABLE
    assert proxy.closed


def test_unbind_closes_both_sides(make_proxy: MakeProxy) -> None:
    """Unbind closes the upstream link and the client connection."""
    proxy = make_proxy()
    assert proxy.bind(dn("alice"), "alice-pass") == SUCCESS
    proxy.send(pureldap.LDAPUnbindRequest(), 2)
    assert proxy.upstream.closed and proxy.closed


def test_starttls_unavailable_without_a_certificate(make_proxy: MakeProxy) -> None:
    """StartTLS answers unavailable (52) while no certificate is configured; not forwarded."""
    proxy = make_proxy()
    assert proxy.bind(dn("alice"), "alice-pass") == SUCCESS
    (reply,) = proxy.send(pureldap.LDAPStartTLSRequest(), 2)
    assert reply.value.resultCode == UNAVAILABLE
    assert proxy.upstream.sent == []


# --- TLS towards clients: StartTLS, LDAPS, require_tls ----------------------------------


def start_tls(proxy: Proxy, msg_id: int = 1) -> Any:
    """Send StartTLS; its one response."""
    (reply,) = proxy.send(pureldap.LDAPStartTLSRequest(), msg_id)
    assert isinstance(reply.value, pureldap.LDAPExtendedResponse) and reply.id == msg_id
    return reply.value


def test_starttls_answers_success_then_switches_to_tls(
    make_proxy: MakeProxy, tls_files: dict[str, str]
) -> None:
    """With a certificate, StartTLS is answered success (naming the operation) and the
    transport is switched to TLS with the configured options right after the answer."""
    proxy = make_proxy(tls=tls_files)
    assert proxy.transport.tls_options is None
    answer = start_tls(proxy)
    assert answer.resultCode == SUCCESS and answer.responseName == STARTTLS_OID
    assert proxy.transport.tls_options is proxy.factory.settings.tls is not None
    assert proxy.protocol.tls
    assert proxy.bind(dn("alice"), "alice-pass", 2) == SUCCESS


def test_starttls_twice_is_an_operations_error(
    make_proxy: MakeProxy, tls_files: dict[str, str]
) -> None:
    """A second StartTLS (or one on an LDAPS connection) gets operationsError (1)."""
    proxy = make_proxy(tls=tls_files)
    assert start_tls(proxy).resultCode == SUCCESS
    assert start_tls(proxy, 2).resultCode == OPERATIONS_ERROR
    assert not proxy.closed
    ldaps = make_proxy(tls=tls_files, ldaps=True)
    assert ldaps.protocol.tls
    assert start_tls(ldaps).resultCode == OPERATIONS_ERROR
    assert ldaps.transport.tls_options is None


def test_starttls_after_a_bind_is_refused(make_proxy: MakeProxy, tls_files: dict[str, str]) -> None:
    """Once bound, operations relayed upstream may be outstanding: operationsError, the
    session keeps its identity and nothing is forwarded."""
    proxy = make_proxy(tls=tls_files)
    assert proxy.bind(dn("alice"), "alice-pass") == SUCCESS
    assert start_tls(proxy, 2).resultCode == OPERATIONS_ERROR
    assert proxy.transport.tls_options is None
    assert proxy.upstream.sent == [] and not proxy.upstream.closed
    request = pureldap.LDAPMessage(search(), id=3).toWire()
    proxy.send_raw(request)
    assert proxy.upstream.sent == [request]


def test_requests_pipelined_behind_starttls_are_not_protected(
    make_proxy: MakeProxy, tls_files: dict[str, str]
) -> None:
    """Bytes sent in clear behind StartTLS must not be taken as sent over TLS: StartTLS is
    refused and the requests are handled as the clear requests they are."""
    proxy = make_proxy(tls=tls_files, require_tls=True)
    starttls = pureldap.LDAPMessage(pureldap.LDAPStartTLSRequest(), id=1).toWire()
    bind = pureldap.LDAPMessage(pureldap.LDAPBindRequest(dn=dn("alice"), auth="alice-pass"), id=2)
    first, second = proxy.send_raw(starttls + bind.toWire())
    assert first.value.resultCode == OPERATIONS_ERROR
    assert second.value.resultCode == CONFIDENTIALITY_REQUIRED
    assert proxy.transport.tls_options is None and not proxy.protocol.tls
    assert proxy.directory.calls == [] and proxy.opener.calls == []


def test_root_dse_lists_starttls_when_configured(
    make_proxy: MakeProxy, tls_files: dict[str, str]
) -> None:
    """The RootDSE advertises StartTLS only when a certificate is configured."""
    for ldap_proxy, listed in (({"tls": tls_files}, True), ({}, False)):
        proxy = make_proxy(**ldap_proxy)
        entry, _done = proxy.send(search("", 0))
        assert (STARTTLS_OID in dict(entry.value.attributes)[b"supportedExtension"]) is listed


@pytest.mark.parametrize("who", ["user", "passthrough", "anonymous", "bare name", "bad password"])
def test_clear_bind_refused_when_tls_is_required(
    make_proxy: MakeProxy, tls_files: dict[str, str], who: str
) -> None:
    """With require_tls, any simple bind without TLS answers confidentialityRequired (13)
    and neither the login decision nor any directory sees it."""
    proxy = make_proxy(
        tls=tls_files, require_tls=True, passthrough_dns=[SERVICE_DN], allow_anonymous=True
    )
    bind_dn, password = {
        "user": (dn("alice"), "alice-pass"),
        "passthrough": (SERVICE_DN, "app-secret"),
        "anonymous": ("", ""),
        "bare name": ("alice", "alice-pass"),
        "bad password": (dn("alice"), "wrong"),
    }[who]
    assert proxy.bind(bind_dn, password) == CONFIDENTIALITY_REQUIRED
    assert proxy.directory.calls == [] and proxy.opener.calls == []
    assert not proxy.closed
    (done,) = proxy.send(search(), 2)  # still unbound
    assert done.value.resultCode == INSUFFICIENT


def test_tls_binds_work_when_tls_is_required(
    make_proxy: MakeProxy, tls_files: dict[str, str]
) -> None:
    """With require_tls, binds after StartTLS and on LDAPS connections are decided as usual."""
    proxy = make_proxy(tls=tls_files, require_tls=True, passthrough_dns=[SERVICE_DN])
    assert start_tls(proxy).resultCode == SUCCESS
    assert proxy.bind(SERVICE_DN, "app-secret", 2) == SUCCESS
    assert proxy.bind(dn("alice"), "alice-pass", 3) == SUCCESS
    ldaps = make_proxy(tls=tls_files, require_tls=True, ldaps=True)
    assert ldaps.bind(dn("bob"), "bob-pass" + ldaps.code()) == SUCCESS
    assert ldaps.bind(dn("bob"), "bob-pass", 2) == INVALID


def test_a_failed_bind_before_starttls_does_not_block_it(
    make_proxy: MakeProxy, tls_files: dict[str, str]
) -> None:
    """A refused bind leaves the session unbound: StartTLS is still accepted after it."""
    proxy = make_proxy(tls=tls_files, require_tls=True)
    assert proxy.bind(dn("alice"), "alice-pass") == CONFIDENTIALITY_REQUIRED
    assert start_tls(proxy, 2).resultCode == SUCCESS
    assert proxy.bind(dn("alice"), "alice-pass", 3) == SUCCESS


# --- limits: connections, idle time -------------------------------------------------------


def test_connections_beyond_the_total_limit_are_refused(
    make_proxy: MakeProxy, logged: list[dict[str, Any]]
) -> None:
    """Beyond max_connections a new connection gets no protocol (Twisted closes it at
    once), it is logged and counted; a closed connection frees its place."""
    first = make_proxy(max_connections=3)
    others = [first.connect(f"192.0.2.{20 + i}") for i in range(2)]
    assert all(other is not None for other in others)
    assert first.connect("198.51.100.1") is None
    assert first.connect(CLIENT, ldaps=True) is None  # the LDAPS listener counts too
    assert first.factory.refused == 2
    refusals = [e for e in logged if e.get("log_format", "").startswith("ldap.connection.refused")]
    assert [e["reason"] for e in refusals] == ["max-connections", "max-connections"]
    first.lose()
    again = first.connect("198.51.100.1")
    assert again is not None
    assert again.bind(dn("alice"), "alice-pass") == SUCCESS


def test_a_client_gone_during_its_bind_keeps_its_place_until_the_bind_is_decided(
    make_proxy: MakeProxy,
) -> None:
    """Binding and hanging up at once does not get one address more binds in flight than
    max_connections_per_address: the place is free again once the bind is decided."""
    first = make_proxy(max_connections_per_address=1)
    first.opener.hold = True
    assert first.send(pureldap.LDAPBindRequest(dn=dn("alice"), auth="alice-pass")) == []
    first.lose()
    assert first.connect() is None
    first.opener.held[0].callback(first.opener.new())
    again = first.connect()
    assert again is not None
    assert first.factory.open_total == 1


def test_a_flood_of_refusals_is_counted_and_logged_once_a_minute(
    make_proxy: MakeProxy, logged: list[dict[str, Any]]
) -> None:
    """500 connections refused from one address: 500 counted, one log line per minute."""
    first = make_proxy(max_connections=1)
    for _ in range(500):
        assert first.connect("198.51.100.9") is None
    assert first.factory.refused == 500
    refusals = [e for e in logged if e.get("log_format", "").startswith("ldap.connection.refused")]
    assert len(refusals) == 1
    first.clock.advance(61)
    assert first.connect("198.51.100.9") is None
    refusals = [e for e in logged if e.get("log_format", "").startswith("ldap.connection.refused")]
    assert len(refusals) == 2


def test_malformed_streams_differing_only_in_numbers_log_one_line(
    make_proxy: MakeProxy, logged: list[dict[str, Any]]
) -> None:
    """50 connections each declaring another oversize length: one drop line, not 50."""
    first = make_proxy()
    for i in range(50):
        connection = first.connect()
        assert connection is not None
        connection.protocol.dataReceived(b"\x30\x84" + (0x01000000 + i).to_bytes(4, "big"))
    drops = [e for e in logged if e.get("log_format", "").startswith("ldap.drop")]
    assert len(drops) == 1


def test_connections_beyond_the_per_address_limit_are_refused(make_proxy: MakeProxy) -> None:
    """Beyond max_connections_per_address from one IP, its new connections are refused
    while other addresses are still served."""
    first = make_proxy(max_connections_per_address=2)
    second = first.connect()
    assert second is not None
    assert first.connect() is None
    assert first.factory.refused == 1
    other = first.connect("198.51.100.7")
    assert other is not None
    assert first.factory.open_by_address == {CLIENT: 2, "198.51.100.7": 1}
    second.lose()
    second.lose()  # reported twice: counted once
    assert first.factory.open_total == 2
    assert first.connect() is not None


def test_idle_connection_is_closed_with_a_notice(make_proxy: MakeProxy) -> None:
    """No request for idle_timeout seconds: a Notice of Disconnection, then the connection
    (and its upstream link) is closed. Every request restarts the timer."""
    proxy = make_proxy(idle_timeout=10)
    assert proxy.bind(dn("alice"), "alice-pass") == SUCCESS
    proxy.clock.advance(9)
    proxy.send(search(), 2)  # relayed upstream: a request all the same
    proxy.clock.advance(9)
    assert not proxy.closed and proxy.responses() == []
    proxy.clock.advance(1.5)
    (notice,) = proxy.responses()
    assert notice.id == 0 and notice.value.resultCode == UNAVAILABLE
    assert notice.value.responseName == NOTICE_OF_DISCONNECTION
    assert proxy.closed and proxy.upstream.closed


def test_responses_from_the_directory_keep_a_connection_alive(make_proxy: MakeProxy) -> None:
    """A long search still answering is not idle."""
    proxy = make_proxy(idle_timeout=10)
    assert proxy.bind(dn("alice"), "alice-pass") == SUCCESS
    proxy.send(search(), 2)
    entry = pureldap.LDAPMessage(
        pureldap.LDAPSearchResultEntry(dn("alice"), [("uid", ["alice"])]), id=2
    ).toWire()
    for _ in range(5):
        proxy.clock.advance(8)
        assert proxy.upstream.on_pdus is not None
        proxy.upstream.on_pdus(entry)
    assert not proxy.closed


def test_a_trickled_request_does_not_reset_the_idle_timer(make_proxy: MakeProxy) -> None:
    """Bytes that never make a whole request (slowloris) do not keep a connection open."""
    proxy = make_proxy(idle_timeout=10)
    request = pureldap.LDAPMessage(search("", 0), id=1).toWire()
    for byte in request[:-1]:
        proxy.protocol.dataReceived(bytes([byte]))
        proxy.clock.advance(1)
    assert proxy.closed


def test_idle_timer_cancelled_when_the_connection_closes(make_proxy: MakeProxy) -> None:
    """A closed connection leaves no timer behind."""
    proxy = make_proxy(idle_timeout=10)
    assert proxy.clock.getDelayedCalls()
    proxy.lose()
    assert not proxy.clock.getDelayedCalls()


# --- robustness ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "junk",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the plain port
        b"\x30\x80\x02\x01\x01",  # indefinite length
        b"\x30\x84\x7f\xff\xff\xff",  # a 2 GiB PDU announced
        b"\x30\x85\x01\x00\x00\x00\x00",  # a length in five octets
        b"\x30\x03\x02\x01\x01",  # a message with no operation
        b"\x30\x05\x02\x01\x01\x7f\x00",  # an unknown operation
        b"\x30\x06\x02\x01\x00\x42\x00\x00",  # message ID 0
        b"\x30\x0c\x02\x01\x01\x61\x07\x0a\x01\x00\x04\x00\x04\x00",  # a response, not a request
    ],
)
def test_malformed_request_closes_the_connection(make_proxy: MakeProxy, junk: bytes) -> None:
    """Malformed BER closes that connection without a reply or an exception."""
    proxy = make_proxy()
    assert proxy.send_raw(junk) == []
    assert proxy.closed


def test_oversize_request_closes_the_connection(make_proxy: MakeProxy) -> None:
    """A request over the PDU limit is refused from its header, before it is buffered."""
    proxy = make_proxy()
    big = pureldap.LDAPMessage(pureldap.LDAPBindRequest(dn="x" * MAX_PDU, auth="p"), id=1)
    proxy.send_raw(big.toWire()[:16])
    assert proxy.closed


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(make_proxy: MakeProxy, data: bytes) -> None:
    """Whatever the bytes, the protocol neither raises nor starts a login it should not."""
    proxy = make_proxy()
    proxy.protocol.dataReceived(data)
    proxy.protocol.dataReceived(os.urandom(8))


def test_login_error_still_answers(make_proxy: MakeProxy, logged: list[dict[str, Any]]) -> None:
    """If deciding a bind raises, the client gets 49 at once instead of waiting forever."""
    proxy = make_proxy()
    proxy.directory.error = RuntimeError("boom")
    assert proxy.bind(dn("alice"), "alice-pass") == INVALID
    assert any(e.get("log_format", "").startswith("ldap.bind.error") for e in logged)
    assert not proxy.closed


def test_opener_crash_still_answers(make_proxy: MakeProxy) -> None:
    """An unexpected exception opening the upstream link answers 49 too."""
    proxy = make_proxy()
    proxy.opener.outcome = ValueError("unexpected")
    assert proxy.bind(dn("alice"), "alice-pass") == INVALID


def test_no_password_or_code_in_the_log(
    make_proxy: MakeProxy, logged: list[dict[str, Any]]
) -> None:
    """Passwords and codes never appear in any log event, on success or failure."""
    proxy = make_proxy(passthrough_dns=[SERVICE_DN])
    code = proxy.code()
    proxy.bind(dn("bob"), "bob-pass" + code)
    proxy.bind(dn("bob"), "bob-pass" + code, 2)
    proxy.bind(dn("alice"), "wrong-secret-pw", 3)
    proxy.bind(SERVICE_DN, "app-secret", 4)
    text = repr(logged)
    for secret in ("bob-pass", code, "wrong-secret-pw", "app-secret"):
        assert secret not in text


# --- the parts ----------------------------------------------------------------------------


def test_mapper_takes_the_filter_attribute() -> None:
    """The naming attribute comes from the user filter; the base is matched as a suffix."""
    mapper = UserMapper(BASE, "(uid={username})")
    assert mapper.username(dn("alice")) == "alice"
    assert mapper.username(f"uid=alice,ou=staff,{BASE}") == "alice"
    assert mapper.username(f"uid=a\\2cb,{BASE}") == "a,b"
    assert mapper.username("uid=alice,dc=org") is None
    assert UserMapper(BASE, "(mail=*)").username(dn("alice")) is None


def test_same_dn_ignores_case_spacing_and_escapes() -> None:
    """DNs compare as a directory compares them."""
    assert same_dn("UID=Alice, ou=People,dc=example,dc=org", dn("alice"))
    assert same_dn("uid=\\61lice,ou=people,dc=example,dc=org", dn("alice"))
    assert not same_dn(dn("alice"), dn("alicia"))
    assert not same_dn("not a dn", "not a dn")


def test_tls_options_need_a_matching_pem_key(tmp_path: Path, tls_files: dict[str, str]) -> None:
    """A certificate with another certificate's key, or files that are not PEM, are refused
    when the options are built (so at start-up, not at the first handshake)."""
    good = LdapProxyTls(Path(tls_files["certificate"]), Path(tls_files["key"]))
    assert server_tls_options(good).getContext() is not None
    ca = make_ca(tmp_path, "Other CA")
    _other_cert, other_key = make_server_cert(ca, tmp_path, "other", [x509.DNSName("x.test")])
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for tls, message in (
        (LdapProxyTls(good.certificate, other_key), "key values mismatch"),
        (LdapProxyTls(junk, good.key), "no PEM certificate"),
        (LdapProxyTls(good.certificate, junk), "invalid or encrypted private key"),
        (LdapProxyTls(good.certificate, tmp_path / "missing.key"), "cannot read"),
    ):
        with pytest.raises(TlsSetupError, match=message):
            server_tls_options(tls)


def test_tls_options_send_the_intermediate_certificates(
    tmp_path: Path, tls_files: dict[str, str]
) -> None:
    """Certificates after the first in the certificate file are sent as the chain."""
    chain = tmp_path / "chain.pem"
    intermediate = make_ca(tmp_path, "Intermediate CA").path.read_bytes()
    chain.write_bytes(Path(tls_files["certificate"]).read_bytes() + intermediate)
    options = server_tls_options(LdapProxyTls(chain, Path(tls_files["key"])))
    assert len(options.extraCertChain) == 1


NO_LOGIN: Any = None  # building the listeners does not log anybody in


def service_config(tmp_path: Path, **ldap_proxy: Any) -> Any:
    return parse_config(
        {
            "directory": {
                "urls": ["ldap://dir-a"],
                "bind_dn": "cn=bridge,ou=services,dc=example,dc=org",
                "bind_password": "service-account-password",
                "user_base": BASE,
            },
            "store": {"path": str(tmp_path / "state.db")},
            "radius": {"clients": [{"address": "127.0.0.1", "secret": "s3cret-s3cret-s3cret"}]},
            "ldap_proxy": {"listen": "127.0.0.1:0", **ldap_proxy},
        },
        tmp_path,
    )


def test_service_listens_plain_and_ldaps_with_one_factory(
    tmp_path: Path, tls_files: dict[str, str]
) -> None:
    """With listen_tls, a TCP and an SSL listener share one factory (and its limits)."""
    config = service_config(tmp_path, tls=tls_files, listen_tls="127.0.0.1:0")
    listeners = list(ldap_proxy_service(config, NO_LOGIN, MemoryReactorClock()))
    assert [type(s).__name__ for s in listeners] == ["TCPServer", "SSLServer"]
    plain, ldaps = listeners
    assert plain.args[1] is ldaps.args[1]
    assert ldaps.args[2] is ldaps.args[1].settings.tls is not None
    only_plain = list(ldap_proxy_service(service_config(tmp_path), NO_LOGIN, MemoryReactorClock()))
    assert [type(s).__name__ for s in only_plain] == ["TCPServer"]


def test_unusable_certificate_is_a_config_error(tmp_path: Path, tls_files: dict[str, str]) -> None:
    """A certificate file that holds no certificate is a config error (check-config says
    so); one whose certificate does not parse stops the daemon with one."""
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    with pytest.raises(ConfigError) as info:
        service_config(tmp_path, tls={**tls_files, "certificate": str(junk)})
    assert info.value.problems == (
        f"ldap_proxy.tls.certificate: {junk} holds no PEM certificate"
        " (-----BEGIN CERTIFICATE-----)",
    )
    junk.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    config = service_config(tmp_path, tls={**tls_files, "certificate": str(junk)})
    with pytest.raises(ConfigError) as info:
        ldap_proxy_service(config, NO_LOGIN, MemoryReactorClock())
    (problem,) = info.value.problems
    assert problem.startswith(f"ldap_proxy.tls: invalid certificate in {junk}")


def test_framing_sizes() -> None:
    """Short and long lengths, partial headers, the limit."""
    assert pdu_size(b"") is None and pdu_size(b"\x30") is None
    assert pdu_size(b"\x30\x03") == 5
    assert pdu_size(b"\x30\x82\x01") is None
    assert pdu_size(b"\x30\x82\x01\x00") == 260
    with pytest.raises(FramingError):
        pdu_size(b"\x30\x82\x01\x00", limit=100)
    assert complete_prefix(b"\x30\x00\x30\x01\x00\x30\x05") == 5


def test_login_outcome_carries_the_password_the_directory_accepted(tmp_path: Path) -> None:
    """The LdapLogin result carries the password part and the DN only for accepted logins."""
    directory = FakeDirectory()
    store = SqliteStore.open(tmp_path / "s.db", tmp_path / "s.key")
    try:
        clock = MemoryReactorClock()
        clock.advance(NOW)
        from bridge.core.policy import Policy  # noqa: PLC0415

        login = LdapLogin(
            Authenticator(
                store, directory, Policy(), frozenset(), clock, audit=AuditLog(io.StringIO())
            )
        )
        caller = Caller("ldap", "192.0.2.1")
        results: list[LoginResult] = []
        binds: list[tuple[str, str, str]] = []

        async def bind(url: str, bind_dn: str, password: str) -> bool:
            binds.append((url, bind_dn, password))
            return True

        login("alice", "alice-pass", caller, bind).addCallback(results.append)
        login("alice", "nope", caller, bind).addCallback(results.append)
        ok, bad = results
        assert binds == [("ldap://dir-b", dn("alice"), "alice-pass")]  # the login's one bind
        assert ok.decision.accepted and ok.password == "alice-pass" and ok.dn == dn("alice")
        assert not bad.decision.accepted and bad.password is None
        assert "alice-pass" not in repr(ok)
    finally:
        store.close()
