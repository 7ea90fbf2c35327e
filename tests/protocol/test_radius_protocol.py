"""Protocol tests of the RADIUS listener: datagrams in, replies out, no sockets, no sleeping.

`RadiusProtocol` is driven by calling `datagramReceived` directly. The clock is a
`MemoryReactorClock` set to a fixed time, the transport only records what is written, the
directory is a fake whose answers (and unfired Deferreds) the test controls, and the
`Authenticator` is the real one over a real SQLite store in tmp_path. Requests are built
and replies checked with pyrad's client side, as a NAS would.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyrad import packet as pyrad_packet
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock

from bridge.audit import AuditLog
from bridge.auth import Authenticator
from bridge.config import parse_config
from bridge.core.totp import code_at_step
from bridge.core.types import Identity, LockReason, State, UserRecord
from bridge.directory import Binder, BindResult, BindStatus, Plan
from bridge.eap.machine import Challenge, MppeKeys, Step
from bridge.eap.packets import Code, EapPacket, Type, parse, split_message
from bridge.radius import codec, server
from bridge.radius.codec import DICTIONARY
from bridge.radius.eap import EapResponder
from bridge.radius.server import PROMPT, RadiusProtocol
from bridge.service import open_store, policy_from
from bridge.store import SqliteStore
from tests.eap_peer import Peer, server_side
from tests.protocol.entries import alias, entries, entry_id

NOW = 1_700_000_000  # the clock starts here: a fixed Unix time, so codes are reproducible
SECRET = b"protocol-test-secret-0123"
LEGACY_SECRET = b"legacy-pam-client-secret-4567"
TOTP_SECRET = bytes(range(1, 21))  # 160 bits

Address = tuple[str, int]
NAS: Address = ("127.0.0.1", 40001)  # client "vpn" (127.0.0.0/24)
NEIGHBOUR: Address = ("127.0.0.2", 40001)  # also client "vpn", but another address
LEGACY: Address = ("10.1.2.3", 40002)  # client "pam": require_message_authenticator false
STRANGER: Address = ("192.0.2.7", 40003)  # not a client

PASSWORDS = {"alice": "alice-pass", "bob": "bob-pass", "carol": "carol-pass", "dave": "dave-pass"}
ENTRIES = entries(PASSWORDS, lambda uid: f"uid={uid},ou=people,dc=example,dc=org")

ACCESS_REQUEST = pyrad_packet.AccessRequest
STATUS_SERVER = pyrad_packet.StatusServer
ACCEPT, REJECT, CHALLENGE = (
    pyrad_packet.AccessAccept,
    pyrad_packet.AccessReject,
    pyrad_packet.AccessChallenge,
)

MESSAGE_AUTHENTICATOR, REPLY_MESSAGE, STATE, PROXY_STATE = 80, 18, 24, 33
EAP_MESSAGE, VENDOR_SPECIFIC = 79, 26


# --- fakes --------------------------------------------------------------------------------


@dataclass
class FakeDirectory:
    """`Directory.authenticate`: finds the entry by any of its names (ENTRIES), asks `plan`
    for the password once, and checks it against the entry's in `PASSWORDS`.

    `calls` records (name, password chosen by `plan`; None when no entry was found).
    `hold` keeps each call's Deferred unfired (in `held`: the entry found and the password
    chosen, the bind in flight) until `release()`; `answer` forces one result for everyone
    and `error` makes every call errback, both before any entry is found.
    """

    calls: list[tuple[str, str | None]] = field(default_factory=list)
    hold: bool = False
    held: list[tuple[Deferred[BindResult], Identity | None, str | None]] = field(
        default_factory=list
    )
    answer: BindResult | None = None
    error: Exception | None = None

    def __call__(
        self, username: str, plan: Plan, bind: Binder | None = None
    ) -> Deferred[BindResult]:
        found = None if self.answer is not None or self.error is not None else ENTRIES.get(username)
        password = plan(found) if found is not None else None
        self.calls.append((username, password))
        if self.hold:
            d: Deferred[BindResult] = Deferred()
            self.held.append((d, found, password))
            return d
        if self.error is not None:
            return fail(self.error)
        return succeed(self.result(found, password))

    def result(self, found: Identity | None, password: str | None) -> BindResult:
        if self.answer is not None:
            return self.answer
        if found is None:
            return BindResult(BindStatus.UNKNOWN_USER)
        if password != PASSWORDS[found.name]:  # an empty one included, as Directory: no bind
            return BindResult(BindStatus.BAD_PASSWORD, found)
        return BindResult(BindStatus.OK, found, server="ldap://127.0.0.1:1")

    def release(self) -> None:
        """Fire every held Deferred with the answer it would have had."""
        held, self.held = self.held, []
        for d, found, password in held:
            d.callback(self.result(found, password))


class FakeTransport:
    """A UDP transport that records `(datagram, address)` instead of sending."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Address]] = []

    def write(self, data: bytes, addr: Address) -> None:
        self.sent.append((data, addr))


# --- requests and replies -----------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    """A request as pyrad built it, and the exact datagram (built once, sent as often)."""

    packet: pyrad_packet.AuthPacket
    raw: bytes


def request(
    user: str | None = "alice",
    password: str | None = None,
    *,
    state: bytes | None = None,
    ma: bool = True,
    secret: bytes = SECRET,
    code: int = ACCESS_REQUEST,
    ident: int | None = None,
    authenticator: bytes | None = None,
    proxy_states: tuple[bytes, ...] = (),
    eap: bytes | None = None,
    **attributes: Any,
) -> Req:
    """An Access-Request (or Status-Server) the way tests/harness.py builds one."""
    pkt = pyrad_packet.AuthPacket(
        code=code, id=ident, secret=secret, authenticator=authenticator, dict=DICTIONARY
    )
    if user is not None:
        pkt["User-Name"] = user
    if password is not None:
        pkt["User-Password"] = pkt.PwCrypt(password)
    # octets by attribute code: pyrad would read a value starting with "0x" as hex
    if state is not None:
        pkt[STATE] = [state]
    if proxy_states:
        pkt[PROXY_STATE] = list(proxy_states)
    for name, value in attributes.items():
        pkt.AddAttribute(name.replace("_", "-"), value)
    if eap is not None:
        pkt[EAP_MESSAGE] = split_message(eap)
    if ma:
        pkt.add_message_authenticator()
    return Req(pkt, pkt.RequestPacket())


def status_server(*, ma: bool = True, secret: bytes = SECRET) -> Req:
    """A Status-Server (RFC 5997) with no attributes but the Message-Authenticator."""
    return request(None, code=STATUS_SERVER, ma=ma, secret=secret)


def walk(raw: bytes) -> list[tuple[int, bytes]]:
    """(type, value) of each attribute, walked independently of pyrad and the codec."""
    out, offset = [], 20
    while offset < len(raw):
        attr_type, length = raw[offset], raw[offset + 1]
        assert length >= 2
        out.append((attr_type, raw[offset + 2 : offset + length]))
        offset += length
    assert offset == len(raw)
    return out


@dataclass(frozen=True)
class Reply:
    """A reply that pyrad's client side accepted for its request."""

    raw: bytes
    code: int
    attributes: list[tuple[int, bytes]]

    @property
    def message(self) -> str:
        return b"".join(v for t, v in self.attributes if t == REPLY_MESSAGE).decode("utf-8")

    @property
    def has_message(self) -> bool:
        return any(t == REPLY_MESSAGE for t, _ in self.attributes)

    @property
    def state(self) -> bytes | None:
        states = [v for t, v in self.attributes if t == STATE]
        assert len(states) <= 1
        return states[0] if states else None

    @property
    def proxy_states(self) -> list[bytes]:
        return [v for t, v in self.attributes if t == PROXY_STATE]


def decode(req: Req, raw: bytes) -> Reply:
    """Check a reply as a careful NAS would, and decode it.

    pyrad verifies the Response Authenticator and, with enforce_ma, requires a valid
    Message-Authenticator; it must also be the first attribute (bytes 20 and 21).
    """
    reply = req.packet.CreateReply(packet=raw)
    assert req.packet.VerifyReply(reply, raw, enforce_ma=True)
    assert raw[20] == MESSAGE_AUTHENTICATOR
    assert raw[21] == 18
    assert_well_formed(raw, req.raw, req.packet.secret)
    return Reply(raw, reply.code, walk(raw))


def assert_well_formed(reply: bytes, datagram: bytes, secret: bytes) -> None:
    """A reply to `datagram`, checked by hand: framing, code, ID, M-A first, both signatures."""
    code, ident, length = struct.unpack_from("!BBH", reply)
    assert length == len(reply)
    assert 38 <= length <= 4096
    assert code in {ACCEPT, REJECT, CHALLENGE}
    assert ident == datagram[1]
    attributes = walk(reply)
    assert attributes[0][0] == MESSAGE_AUTHENTICATOR
    assert len(attributes[0][1]) == 16
    assert [t for t, _ in attributes].count(MESSAGE_AUTHENTICATOR) == 1
    request_authenticator = datagram[4:20]
    zeroed = reply[:4] + request_authenticator + reply[20:22] + bytes(16) + reply[38:]
    assert hmac.compare_digest(reply[22:38], hmac.new(secret, zeroed, hashlib.md5).digest())
    signed = reply[:4] + request_authenticator + reply[20:] + secret
    assert hmac.compare_digest(reply[4:20], hashlib.md5(signed).digest())  # noqa: S324 - RFC 2865


# --- the bridge under test ----------------------------------------------------------------


@dataclass
class Bridge:
    """One RadiusProtocol with its clock, transport, store and fake directory."""

    clock: MemoryReactorClock
    directory: FakeDirectory
    transport: FakeTransport
    protocol: RadiusProtocol
    store: SqliteStore
    audit_out: io.StringIO

    def audit_lines(self) -> list[dict[str, Any]]:
        """The audit log so far, one parsed JSON object per line."""
        return [json.loads(line) for line in self.audit_out.getvalue().splitlines()]

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.protocol.counters)

    def send(self, raw: bytes, addr: Address = NAS) -> list[bytes]:
        """Deliver one datagram; the replies written while handling it (all to `addr`)."""
        before = len(self.transport.sent)
        self.protocol.datagramReceived(raw, addr)
        return self.written_since(before, addr)

    def advance(self, seconds: float, addr: Address = NAS) -> list[bytes]:
        """Move the clock on; the replies written meanwhile (all to `addr`)."""
        before = len(self.transport.sent)
        self.clock.advance(seconds)
        return self.written_since(before, addr)

    def written_since(self, before: int, addr: Address) -> list[bytes]:
        new = self.transport.sent[before:]
        assert all(to == addr for _, to in new)
        return [data for data, _ in new]

    def exchange(self, req: Req, addr: Address = NAS) -> Reply:
        """Send a request that must be answered at once, and decode the one reply."""
        replies = self.send(req.raw, addr)
        assert len(replies) == 1, f"expected one reply, got {len(replies)}"
        return decode(req, replies[0])

    def code(self, steps: int = 0) -> str:
        """The TOTP code of the seeded secret at the clock's step (+ `steps`)."""
        return code_at_step(TOTP_SECRET, int(self.clock.seconds()) // 30 + steps)

    def challenge(self, user: str = "bob", addr: Address = NAS) -> bytes:
        """Log in with the password only and return the State of the Access-Challenge."""
        reply = self.exchange(request(user, password_of(user)), addr)
        assert reply.code == CHALLENGE
        assert reply.state is not None
        return reply.state


def password_of(user: str) -> str:
    """The password of the entry `user` (a uid or an alias) names."""
    return PASSWORDS[ENTRIES[user].name]


def seed(store: SqliteStore, record: UserRecord) -> None:
    """Put a user's record in the store as the admin CLI would (under its entry's id)."""
    store.update(record.entry_id, lambda _: (record, None))


def active_record(uid: str) -> UserRecord:
    """An active user's record with TOTP_SECRET, as imported at NOW."""
    return UserRecord(
        uid,
        State.ACTIVE,
        secret=TOTP_SECRET,
        confirmed=True,
        created=NOW,
        updated=NOW,
        entry_id=entry_id(uid),
    )


MakeBridge = Callable[..., Bridge]


@pytest.fixture
def make_bridge(tmp_path: Path) -> Iterator[MakeBridge]:
    """A factory of bridges, configured through the config parser like the daemon.

    Users (each also found by the alias <uid>@example.org): alice is new (grace at her
    first login), bob and dave are active with TOTP_SECRET, carol is locked by an admin.
    Clients: "vpn" 127.0.0.0/24 with SECRET, "pam" 10.1.2.0/24 with LEGACY_SECRET and
    require_message_authenticator: false. `exempt_users` is mfa.exempt_users.
    """
    made: list[Bridge] = []

    def make(
        *,
        mode: str = "auto",
        reject_delay: float = 0.0,
        require_message_authenticator: bool = True,
        state_ttl: int = 120,
        exempt_users: tuple[str, ...] = (),
        jitter: bytes = b"\x00\x00",
        eap: bool = False,
    ) -> Bridge:
        where = tmp_path / f"bridge-{len(made)}"
        config = parse_config(
            {
                "directory": {
                    "urls": ["ldap://127.0.0.1:1"],
                    "bind_dn": "cn=bridge,ou=services,dc=example,dc=org",
                    "bind_password": "service-account-password",
                    "user_base": "ou=people,dc=example,dc=org",
                },
                "store": {"path": str(where / "state.db")},
                "mfa": {
                    "enrollment_days": 14,
                    "max_failures": 5,
                    "window": 1,
                    "exempt_users": list(exempt_users),
                },
                "radius": {
                    "mode": mode,
                    "reject_delay": reject_delay,
                    "state_ttl": state_ttl,
                    "require_message_authenticator": require_message_authenticator,
                    "clients": [
                        {"name": "vpn", "address": "127.0.0.0/24", "secret": SECRET.decode()},
                        {
                            "name": "pam",
                            "address": "10.1.2.0/24",
                            "secret": LEGACY_SECRET.decode(),
                            "require_message_authenticator": False,
                        },
                    ],
                },
            },
            tmp_path,
        )
        clock = MemoryReactorClock()
        clock.advance(NOW)
        store = open_store(config)
        for uid in ("bob", "dave"):
            seed(store, active_record(uid))
        seed(
            store,
            UserRecord(
                "carol",
                State.LOCKED,
                secret=TOTP_SECRET,
                confirmed=True,
                lock_reason=LockReason.ADMIN,
                created=NOW,
                updated=NOW,
                entry_id=entry_id("carol"),
            ),
        )
        directory = FakeDirectory()
        audit_out = io.StringIO()
        authenticator = Authenticator(
            store,
            directory,
            policy_from(config),
            frozenset(config.mfa.exempt_users),
            clock,
            audit=AuditLog(audit_out, clock.seconds),
        )

        def random_bytes(count: int) -> bytes:  # States random, the reject's spread fixed
            return jitter if count == len(jitter) else os.urandom(count)

        responder = None
        if eap:
            context = server_side(tmp_path)[1]
            responder = EapResponder(context, authenticator, clock)
        protocol = RadiusProtocol(
            config.radius, authenticator, clock, random_bytes=random_bytes, eap=responder
        )
        transport = FakeTransport()
        protocol.makeConnection(transport)  # type: ignore[arg-type]
        bridge = Bridge(clock, directory, transport, protocol, store, audit_out)
        made.append(bridge)
        return bridge

    yield make
    for bridge in made:
        if bridge.protocol.numPorts:
            bridge.protocol.doStop()
        bridge.store.close()


@pytest.fixture
def bridge(make_bridge: MakeBridge) -> Bridge:
    """The default bridge: mode auto, no reject delay, Message-Authenticator required."""
    return make_bridge()


def malformed_total(counters: dict[str, int]) -> int:
    return sum(n for name, n in counters.items() if name.startswith("dropped.malformed."))


# --- replies: grace, Message-Authenticator first, Response Authenticator ------------------


def test_grace_accept_tells_days_left(bridge: Bridge) -> None:
    """A new user's correct password is accepted with "14 days left to set up MFA"."""
    reply = bridge.exchange(request("alice", "alice-pass"))
    assert reply.code == ACCEPT
    assert reply.message == "14 days left to set up MFA"
    assert bridge.directory.calls == [("alice", "alice-pass")]
    assert bridge.counters["accepts"] == 1


@pytest.mark.parametrize(
    ("make_request", "expected_code"),
    [
        pytest.param(lambda: request("alice", "alice-pass"), ACCEPT, id="accept"),
        pytest.param(lambda: request("alice", "wrong-pass"), REJECT, id="reject"),
        pytest.param(lambda: request("bob", "bob-pass"), CHALLENGE, id="challenge"),
        pytest.param(status_server, ACCEPT, id="status-server"),
    ],
)
def test_every_reply_starts_with_message_authenticator(
    bridge: Bridge, make_request: Callable[[], Req], expected_code: int
) -> None:
    """Accept, Reject, Challenge and Status-Server replies carry M-A first and verify."""
    req = make_request()
    replies = bridge.send(req.raw)
    assert len(replies) == 1
    raw = replies[0]
    assert raw[20] == 80
    assert raw[21] == 18
    reply = decode(req, raw)  # VerifyReply(enforce_ma=True): Response Authenticator and M-A
    assert reply.code == expected_code


def test_status_server_is_answered_without_a_bind(bridge: Bridge) -> None:
    """Status-Server gets Access-Accept and touches neither directory nor store."""
    reply = bridge.exchange(status_server())
    assert reply.code == ACCEPT
    assert not reply.has_message
    assert bridge.directory.calls == []
    assert bridge.counters["status-server"] == 1


def test_appended_code_accepts_in_one_round_trip(bridge: Bridge) -> None:
    """In auto mode, password followed by the current code accepts an active user."""
    reply = bridge.exchange(request("bob", "bob-pass" + bridge.code()))
    assert reply.code == ACCEPT
    assert bridge.directory.calls == [("bob", "bob-pass")]


# --- the audit log ------------------------------------------------------------------------


def test_each_decision_writes_one_audit_line(bridge: Bridge) -> None:
    """Accept, reject and challenge each write one JSON line with who, what and why."""
    code = bridge.code()
    bridge.exchange(request("bob", "bob-pass" + code))
    bridge.exchange(request("bob", "wrong-pass"))
    bridge.exchange(request("bob", "bob-pass"))
    lines = bridge.audit_lines()
    assert [(x["event"], x["reason"]) for x in lines] == [
        ("auth.accept", "accepted"),
        ("auth.reject", "bad-password"),
        ("auth.challenge", "challenged"),
    ]
    first = lines[0]
    assert first["protocol"] == "radius"
    assert first["user"] == "bob"
    assert first["client"].endswith("(127.0.0.1)")
    assert (first["state_before"], first["state_after"]) == ("active", "active")
    assert first["time"].endswith("Z")
    assert isinstance(first["latency_ms"], float)
    raw = bridge.audit_out.getvalue()
    assert "bob-pass" not in raw
    assert code not in raw


def test_audit_line_names_the_lock_reason(bridge: Bridge) -> None:
    """A locked user's reject says why they are locked (for the admin, not the caller)."""
    bridge.exchange(request("carol", "carol-pass" + bridge.code()))
    (line,) = bridge.audit_lines()
    assert (line["event"], line["reason"], line["lock_reason"]) == (
        "auth.reject",
        "locked",
        "admin",
    )


# --- retransmissions and the reply cache --------------------------------------------------


def test_retransmission_gets_identical_reply_without_second_bind(bridge: Bridge) -> None:
    """The same datagram again after the reply gets the same bytes; the directory is asked once."""
    req = request("bob", "bob-pass" + bridge.code())
    first = bridge.send(req.raw)
    second = bridge.send(req.raw)
    assert len(first) == 1
    assert second == first
    assert decode(req, second[0]).code == ACCEPT  # not a replay reject
    assert len(bridge.directory.calls) == 1
    assert bridge.counters["duplicates"] == 1


def test_duplicate_in_flight_is_discarded_then_answered_once(bridge: Bridge) -> None:
    """A duplicate while the bind is in flight gets nothing; the late answer is sent once."""
    bridge.directory.hold = True
    req = request("alice", "alice-pass")
    assert bridge.send(req.raw) == []
    assert bridge.send(req.raw) == []
    assert len(bridge.directory.calls) == 1
    before = len(bridge.transport.sent)
    bridge.directory.release()
    replies = bridge.written_since(before, NAS)
    assert len(replies) == 1
    assert decode(req, replies[0]).code == ACCEPT
    assert bridge.send(req.raw) == replies  # a later duplicate: the cached bytes
    assert len(bridge.directory.calls) == 1


def test_same_id_with_new_authenticator_is_a_new_request(bridge: Bridge) -> None:
    """Same client and ID but another Request Authenticator is processed as new."""
    first = request("alice", "alice-pass", ident=77, authenticator=b"\x01" * 16)
    second = request("alice", "alice-pass", ident=77, authenticator=b"\x02" * 16)
    assert bridge.exchange(first).code == ACCEPT
    assert bridge.exchange(second).code == ACCEPT
    assert len(bridge.directory.calls) == 2
    assert bridge.counters.get("duplicates", 0) == 0


def test_same_id_from_another_source_port_is_a_new_request(bridge: Bridge) -> None:
    """The cache key includes the source port: the same datagram from another port is new."""
    req = request("alice", "alice-pass")
    bridge.exchange(req, NAS)
    bridge.exchange(req, (NAS[0], NAS[1] + 1))
    assert len(bridge.directory.calls) == 2


def test_reply_cache_entries_expire_after_10_seconds(bridge: Bridge) -> None:
    """Within 10 s a retransmission is answered from the cache; after 10 s it is new."""
    req = request("alice", "alice-pass")
    first = bridge.send(req.raw)
    bridge.advance(9.9)
    assert bridge.send(req.raw) == first
    assert len(bridge.directory.calls) == 1
    bridge.advance(0.1)
    again = bridge.send(req.raw)
    assert len(again) == 1
    assert decode(req, again[0]).code == ACCEPT
    assert len(bridge.directory.calls) == 2


def test_reply_cache_holds_ten_seconds_at_6500_logins_per_second() -> None:
    """The cache limit covers its lifetime at 6,500 logins/s, so a burst is not refused."""
    assert server.REPLY_CACHE_LIMIT >= 6_500 * server.REPLY_CACHE_SECONDS


def test_reply_cache_is_bounded(bridge: Bridge, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full cache drops new requests (counted), never grows, and frees up as entries expire."""
    monkeypatch.setattr(server, "REPLY_CACHE_LIMIT", 4)
    for _ in range(4):
        assert bridge.exchange(request("alice", "alice-pass")).code == ACCEPT
    for _ in range(3):
        assert bridge.send(request("alice", "alice-pass").raw) == []
    assert bridge.counters["dropped.overload"] == 3
    assert len(bridge.protocol._replies) == 4
    assert len(bridge.directory.calls) == 4
    bridge.advance(30)
    assert bridge.exchange(request("alice", "alice-pass")).code == ACCEPT
    assert len(bridge.protocol._replies) == 1


# --- reject delay -------------------------------------------------------------------------


def test_drain_answers_what_is_in_flight_and_takes_nothing_new(make_bridge: MakeBridge) -> None:
    """drain(): a held reject goes out at once, a login at the directory is answered when it
    lands, a new request is dropped, and the Deferred fires once nothing is in flight."""
    bridge = make_bridge(reject_delay=5.0)
    assert bridge.send(request("bob", "wrong").raw) == []  # held back by reject_delay
    bridge.directory.hold = True
    waiting = request("alice", "alice-pass")
    assert bridge.send(waiting.raw) == []
    before = len(bridge.transport.sent)
    drained = bridge.protocol.drain()
    assert len(bridge.transport.sent) == before + 1  # the reject, at once
    assert not drained.called
    assert bridge.send(request("dave", "dave-pass").raw) == []
    assert bridge.counters["dropped.shutting-down"] == 1
    bridge.directory.release()
    assert drained.called
    assert decode(waiting, bridge.transport.sent[-1][0]).code == ACCEPT


@pytest.mark.parametrize(
    ("user", "password", "work"), [("nobody", "x", 0.125), ("bob", "no", 0.75)]
)
def test_a_reject_goes_out_reject_delay_after_arrival_whatever_the_work(
    make_bridge: MakeBridge, user: str, password: str, work: float
) -> None:
    """An unknown user (quick) and a wrong password (slow): both rejects leave exactly
    reject_delay after the request came, so their timing says nothing of why."""
    bridge = make_bridge(reject_delay=1.0)
    bridge.directory.hold = True
    assert bridge.send(request(user, password).raw) == []
    bridge.advance(work)
    bridge.directory.release()
    assert bridge.advance(0.9375 - work) == []  # binary fractions: exact sums
    (reply,) = bridge.advance(0.0625)
    assert reply[0] == REJECT


def test_rejects_spread_over_a_tenth_of_reject_delay_at_random(make_bridge: MakeBridge) -> None:
    """With the most spread the random source can give, a reject leaves just under
    1.1 x reject_delay after it came, not before."""
    bridge = make_bridge(reject_delay=1.0, jitter=b"\xff\xff")
    assert bridge.send(request("nobody", "x").raw) == []
    assert bridge.advance(1.0625) == []
    (reply,) = bridge.advance(0.0625)
    assert reply[0] == REJECT


def test_reject_is_written_only_after_reject_delay(make_bridge: MakeBridge) -> None:
    """With reject_delay 1.0 an Access-Reject goes out after the clock moves one second."""
    bridge = make_bridge(reject_delay=1.0)
    req = request("alice", "wrong-pass")
    assert bridge.send(req.raw) == []
    assert bridge.advance(0.999) == []
    replies = bridge.advance(0.001)
    assert len(replies) == 1
    assert decode(req, replies[0]).code == REJECT
    assert bridge.clock.getDelayedCalls() == []


def test_accept_is_not_delayed(make_bridge: MakeBridge) -> None:
    """With reject_delay 1.0 an Access-Accept is written at once, even while a reject waits."""
    bridge = make_bridge(reject_delay=1.0)
    assert bridge.send(request("carol", "wrong-pass").raw) == []
    assert bridge.exchange(request("alice", "alice-pass")).code == ACCEPT
    assert len(bridge.clock.getDelayedCalls()) == 1  # only the reject's


def test_duplicate_during_reject_delay_gets_nothing_then_cached_reply(
    make_bridge: MakeBridge,
) -> None:
    """A duplicate during the delay is silent; after it, duplicates get the cached reject."""
    bridge = make_bridge(reject_delay=1.0)
    req = request("alice", "wrong-pass")
    assert bridge.send(req.raw) == []
    bridge.advance(0.5)
    assert bridge.send(req.raw) == []
    replies = bridge.advance(0.5)
    assert len(replies) == 1  # the delayed reject, once, not once per duplicate
    assert bridge.send(req.raw) == replies
    assert decode(req, replies[0]).code == REJECT
    assert len(bridge.directory.calls) == 1


def test_stop_protocol_cancels_pending_reject_delays(make_bridge: MakeBridge) -> None:
    """Stopping the listener cancels delayed rejects: no DelayedCall is left behind."""
    bridge = make_bridge(reject_delay=1.0)
    bridge.send(request("alice", "wrong-pass").raw)
    bridge.send(request("carol", "wrong-pass").raw)
    assert len(bridge.clock.getDelayedCalls()) == 2
    bridge.protocol.doStop()
    assert bridge.clock.getDelayedCalls() == []
    bridge.clock.advance(5)
    assert bridge.transport.sent == []


def test_decision_after_stop_schedules_no_reject_delay(make_bridge: MakeBridge) -> None:
    """A bind that completes after the listener stopped leaves no DelayedCall behind."""
    bridge = make_bridge(reject_delay=1.0)
    bridge.directory.hold = True
    bridge.send(request("alice", "wrong-pass").raw)
    bridge.protocol.doStop()
    bridge.directory.release()
    assert bridge.clock.getDelayedCalls() == []
    assert bridge.transport.sent == []


# --- challenge mode -----------------------------------------------------------------------


def test_challenge_then_code_accepts(make_bridge: MakeBridge) -> None:
    """mode challenge: the password draws a 16-byte State and a prompt; State + code accepts."""
    bridge = make_bridge(mode="challenge")
    reply = bridge.exchange(request("bob", "bob-pass"))
    assert reply.code == CHALLENGE
    assert reply.state is not None
    assert len(reply.state) == 16
    assert reply.message == PROMPT
    assert "code" in reply.message
    answer = bridge.exchange(request("bob", bridge.code(), state=reply.state))
    assert answer.code == ACCEPT
    assert bridge.directory.calls == [("bob", "bob-pass")]


def test_challenge_prompt_does_not_echo_the_user_name(make_bridge: MakeBridge) -> None:
    """The challenge prompt is the same for everyone and never repeats the User-Name."""
    bridge = make_bridge(mode="challenge")
    reply = bridge.exchange(request("bob", "bob-pass"))
    assert reply.code == CHALLENGE
    assert "bob" not in reply.message.lower()
    assert reply.message == PROMPT


def test_each_challenge_state_is_fresh(make_bridge: MakeBridge) -> None:
    """Two challenges get two different States."""
    bridge = make_bridge(mode="challenge")
    assert bridge.challenge() != bridge.challenge()


def test_state_is_single_use(make_bridge: MakeBridge) -> None:
    """A State already answered is rejected the second time, even with a fresh code."""
    bridge = make_bridge(mode="challenge")
    state = bridge.challenge()
    assert bridge.exchange(request("bob", bridge.code(), state=state)).code == ACCEPT
    bridge.advance(30)
    reused = bridge.exchange(request("bob", bridge.code(), state=state))
    assert reused.code == REJECT
    assert not reused.has_message
    assert len(bridge.directory.calls) == 1


@pytest.mark.parametrize(
    ("user", "addr", "wait", "made_up"),
    [
        pytest.param("bob", NEIGHBOUR, 0, False, id="another-client-address"),
        pytest.param("alice", NAS, 0, False, id="another-user-name"),
        pytest.param(alias("bob"), NAS, 0, False, id="another-name-of-the-entry"),
        pytest.param("bob", NAS, 121, False, id="after-state-ttl"),
        pytest.param("bob", NAS, 0, True, id="made-up"),
    ],
)
def test_misbound_or_stale_state_is_rejected_without_a_bind(
    make_bridge: MakeBridge, user: str, addr: Address, wait: int, made_up: bool
) -> None:
    """A State from another address, for another name, past state_ttl or never issued: reject."""
    bridge = make_bridge(mode="challenge")
    imported = bridge.store.get(entry_id("bob"))
    assert imported is not None
    imported_version = imported.version
    state = bridge.challenge("bob", NAS)
    if made_up:
        state = bytes(b ^ 0x5A for b in state)
    bridge.advance(wait)
    reply = bridge.exchange(request(user, bridge.code(), state=state), addr)
    assert reply.code == REJECT
    assert not reply.has_message  # the caller learns nothing
    assert bridge.directory.calls == [("bob", "bob-pass")]  # the challenge's bind only
    stored = bridge.store.get(entry_id("bob"))
    assert stored is not None
    assert stored.evolve(version=0) == active_record("bob")  # unchanged since the import
    assert stored.version == imported_version


def test_state_just_inside_state_ttl_is_accepted(make_bridge: MakeBridge) -> None:
    """A State answered 119 s after it was issued (state_ttl 120) still works."""
    bridge = make_bridge(mode="challenge")
    state = bridge.challenge()
    bridge.advance(119)
    assert bridge.exchange(request("bob", bridge.code(), state=state)).code == ACCEPT


def test_state_answer_is_deduplicated(make_bridge: MakeBridge) -> None:
    """A retransmitted challenge answer gets the cached Accept, not a reused-State reject."""
    bridge = make_bridge(mode="challenge")
    state = bridge.challenge()
    req = request("bob", bridge.code(), state=state)
    first = bridge.send(req.raw)
    assert bridge.send(req.raw) == first
    assert decode(req, first[0]).code == ACCEPT


# --- one record per directory entry (SPEC 8): the uid and the alias are one user ----------

BOB_ALIAS = alias("bob")


def wrong_code(bridge: Bridge) -> str:
    """A well-formed code that is valid at no step of the window."""
    valid = {bridge.code(steps) for steps in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in valid)


def send_code(bridge: Bridge, how: str, user: str, code: str) -> Reply:
    """Password and code for `user`: appended to the password, or answering a challenge."""
    if how == "appended":
        return bridge.exchange(request(user, password_of(user) + code))
    state = bridge.challenge(user)
    return bridge.exchange(request(user, code, state=state))


def entry_ids(store: SqliteStore) -> set[str]:
    """The entries the store holds a record for."""
    return {record.entry_id for record in store.list()}


SEEDED = {entry_id(uid) for uid in ("bob", "carol", "dave")}


@pytest.mark.parametrize("mode", ["append", "challenge", "auto"])
def test_active_user_by_alias_is_asked_for_the_code_not_given_grace(
    make_bridge: MakeBridge, mode: str
) -> None:
    """By the alias, an active user's password alone draws a request for the code, never grace."""
    bridge = make_bridge(mode=mode)
    reply = bridge.exchange(request(BOB_ALIAS, "bob-pass"))
    if mode == "append":
        assert (reply.code, reply.message) == (REJECT, server.CODE_REQUIRED)
    else:
        assert (reply.code, reply.message) == (CHALLENGE, PROMPT)
    assert "days left" not in reply.message
    assert bridge.directory.calls == [(BOB_ALIAS, "bob-pass")]
    (line,) = bridge.audit_lines()
    assert line["reason"] == ("code-required" if mode == "append" else "challenged")
    assert (line["state_before"], line["state_after"]) == ("active", "active")
    assert entry_ids(bridge.store) == SEEDED
    stored = bridge.store.get(entry_id("bob"))
    assert stored is not None and stored.evolve(version=0) == active_record("bob")


@pytest.mark.parametrize(
    ("mode", "how"),
    [("append", "appended"), ("challenge", "answered"), ("auto", "appended")],
)
def test_code_accepted_by_alias_is_a_replay_by_uid(
    make_bridge: MakeBridge, mode: str, how: str
) -> None:
    """Password and code by the alias is accepted; the same code then by the uid is a replay."""
    bridge = make_bridge(mode=mode)
    code = bridge.code()
    assert send_code(bridge, how, BOB_ALIAS, code).code == ACCEPT
    assert send_code(bridge, how, "bob", code).code == REJECT
    decided = [x["reason"] for x in bridge.audit_lines() if x["event"] != "auth.challenge"]
    assert decided == ["accepted", "replay"]
    stored = bridge.store.get(entry_id("bob"))
    assert stored is not None
    assert (stored.last_step, stored.failures) == (NOW // 30, 1)
    assert entry_ids(bridge.store) == SEEDED


@pytest.mark.parametrize(
    ("mode", "how"),
    [("append", "appended"), ("challenge", "answered"), ("auto", "answered")],
)
def test_wrong_codes_under_both_names_add_up_to_one_lock(
    make_bridge: MakeBridge, mode: str, how: str
) -> None:
    """Wrong codes by the alias and by the uid add up on one record to one lock (max_failures)."""
    bridge = make_bridge(mode=mode)
    wrong = wrong_code(bridge)
    for user in (BOB_ALIAS, "bob", BOB_ALIAS, "bob"):
        reply = send_code(bridge, how, user, wrong)
        assert reply.code == REJECT and reply.message != server.LOCKED
    assert send_code(bridge, how, BOB_ALIAS, wrong).message == server.LOCKED
    stored = bridge.store.get(entry_id("bob"))
    assert stored is not None
    assert (stored.state, stored.failures) == (State.LOCKED, 5)
    assert stored.lock_reason is LockReason.FAILURES
    for user in ("bob", BOB_ALIAS):
        reply = bridge.exchange(request(user, "bob-pass"))
        assert (reply.code, reply.message) == (REJECT, server.LOCKED)
    assert entry_ids(bridge.store) == SEEDED


def test_one_code_in_flight_under_both_names_is_accepted_once(bridge: Bridge) -> None:
    """One code in flight by the alias and by the uid at once is accepted once, then a replay."""
    bridge.directory.hold = True
    code = bridge.code()
    by_alias = request(BOB_ALIAS, "bob-pass" + code)
    by_uid = request("bob", "bob-pass" + code)
    assert bridge.send(by_alias.raw) == [] and bridge.send(by_uid.raw) == []
    before = len(bridge.transport.sent)
    bridge.directory.release()
    first, second = bridge.written_since(before, NAS)
    assert (decode(by_alias, first).code, decode(by_uid, second).code) == (ACCEPT, REJECT)
    assert [x["reason"] for x in bridge.audit_lines()] == ["accepted", "replay"]
    stored = bridge.store.get(entry_id("bob"))
    assert stored is not None and (stored.last_step, stored.failures) == (NOW // 30, 1)


@pytest.mark.parametrize("mode", ["challenge", "auto"])
def test_challenge_for_the_alias_is_answered_with_the_alias(
    make_bridge: MakeBridge, mode: str
) -> None:
    """A challenge issued to the alias is answered with the alias and checks the entry's record."""
    bridge = make_bridge(mode=mode)
    state = bridge.challenge(BOB_ALIAS)
    assert bridge.exchange(request(BOB_ALIAS, bridge.code(), state=state)).code == ACCEPT
    stored = bridge.store.get(entry_id("bob"))
    assert stored is not None
    assert (stored.state, stored.last_step, stored.failures) == (State.ACTIVE, NOW // 30, 0)
    assert entry_ids(bridge.store) == SEEDED
    again = bridge.challenge("bob")  # the code is spent for the uid too
    assert bridge.exchange(request("bob", bridge.code(), state=again)).code == REJECT
    assert bridge.audit_lines()[-1]["reason"] == "replay"


def test_logins_are_refused_while_old_records_are_being_attached(bridge: Bridge) -> None:
    """While records of an earlier release wait, a login is refused before any bind."""
    bridge.protocol._auth.upgrading = True
    refused = bridge.exchange(request("alice", "alice-pass"))
    assert refused.code == REJECT and not refused.has_message
    assert bridge.directory.calls == []
    assert bridge.audit_lines()[-1]["reason"] == "upgrading"
    bridge.protocol._auth.upgrading = False
    assert bridge.exchange(request("alice", "alice-pass")).code == ACCEPT


def test_audit_line_names_the_entry_and_the_name_typed(bridge: Bridge) -> None:
    """A login by the alias is audited with user = the entry's name and login = the alias."""
    bridge.exchange(request(BOB_ALIAS, "bob-pass" + bridge.code()))
    bridge.exchange(request(BOB_ALIAS, "wrong-pass"))
    bridge.exchange(request(BOB_ALIAS, "bob-pass"))
    bridge.exchange(request("bob", "bob-pass"))
    lines = bridge.audit_lines()
    assert [(x["reason"], x["user"], x.get("login")) for x in lines] == [
        ("accepted", "bob", BOB_ALIAS),
        ("bad-password", "bob", BOB_ALIAS),
        ("challenged", "bob", BOB_ALIAS),
        ("challenged", "bob", None),  # typed as the entry's name: no login field
    ]


def test_challenge_answer_by_alias_is_audited_with_the_alias(make_bridge: MakeBridge) -> None:
    """The answer to a challenge issued to the alias is audited with login = the alias too."""
    bridge = make_bridge(mode="challenge")
    state = bridge.challenge(BOB_ALIAS)
    assert bridge.exchange(request(BOB_ALIAS, bridge.code(), state=state)).code == ACCEPT
    challenged, accepted = bridge.audit_lines()
    assert (challenged["user"], challenged.get("login")) == ("bob", BOB_ALIAS)
    assert (accepted["reason"], accepted["user"]) == ("accepted", "bob")
    assert accepted.get("login") == BOB_ALIAS


@pytest.mark.parametrize("typed", ["dave", alias("dave")])
def test_exempt_user_is_exempt_by_alias_too(make_bridge: MakeBridge, typed: str) -> None:
    """exempt_users: ["dave"] lets dave in with the password alone by his uid and his alias."""
    bridge = make_bridge(exempt_users=("dave",))
    reply = bridge.exchange(request(typed, "dave-pass"))
    assert reply.code == ACCEPT and not reply.has_message
    (line,) = bridge.audit_lines()
    assert (line["reason"], line["user"], line["state_after"]) == ("exempt", "dave", "exempt")


@pytest.mark.parametrize("typed", ["dave", alias("dave")])
def test_an_alias_in_exempt_users_exempts_nobody(make_bridge: MakeBridge, typed: str) -> None:
    """exempt_users: ["dave@example.org"] (an alias) exempts dave under neither of his names."""
    bridge = make_bridge(exempt_users=(alias("dave"),))
    reply = bridge.exchange(request(typed, "dave-pass"))
    assert reply.code == CHALLENGE
    (line,) = bridge.audit_lines()
    assert (line["reason"], line["user"]) == ("challenged", "dave")


# --- Message-Authenticator ----------------------------------------------------------------


def test_request_without_message_authenticator_is_dropped_when_required(bridge: Bridge) -> None:
    """require_message_authenticator: a request without M-A gets no reply and no bind."""
    assert bridge.send(request("alice", "alice-pass", ma=False).raw) == []
    assert bridge.counters["dropped.missing-message-authenticator"] == 1
    assert bridge.directory.calls == []


def test_global_require_false_answers_request_without_message_authenticator(
    make_bridge: MakeBridge,
) -> None:
    """radius.require_message_authenticator: false lets a request without M-A through."""
    bridge = make_bridge(require_message_authenticator=False)
    reply = bridge.exchange(request("alice", "alice-pass", ma=False))
    assert reply.code == ACCEPT
    assert reply.raw[20] == MESSAGE_AUTHENTICATOR  # the reply carries one all the same


def test_client_override_false_answers_request_without_message_authenticator(
    bridge: Bridge,
) -> None:
    """A client with require_message_authenticator: false is answered without M-A; others not."""
    legacy = request("alice", "alice-pass", ma=False, secret=LEGACY_SECRET)
    legacy_replies = bridge.send(legacy.raw, LEGACY)
    assert len(legacy_replies) == 1
    assert decode(legacy, legacy_replies[0]).code == ACCEPT
    assert bridge.send(request("alice", "alice-pass", ma=False).raw, NAS) == []
    assert bridge.counters["dropped.missing-message-authenticator"] == 1


def flip_message_authenticator(raw: bytes) -> bytes:
    """The datagram with one bit of its Message-Authenticator value flipped."""
    offset = 20
    while raw[offset] != MESSAGE_AUTHENTICATOR:
        offset += raw[offset + 1]
    data = bytearray(raw)
    data[offset + 2] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize(
    ("addr", "secret"), [(NAS, SECRET), (LEGACY, LEGACY_SECRET)], ids=["required", "optional"]
)
def test_wrong_message_authenticator_is_dropped(
    bridge: Bridge, addr: Address, secret: bytes
) -> None:
    """A wrong M-A is dropped as bad, also for a client that does not require one."""
    raw = flip_message_authenticator(request("alice", "alice-pass", secret=secret).raw)
    assert bridge.send(raw, addr) == []
    assert bridge.counters["dropped.bad-message-authenticator"] == 1
    assert malformed_total(bridge.counters) == 0
    assert bridge.directory.calls == []


def test_wrong_shared_secret_is_dropped_as_bad_message_authenticator(bridge: Bridge) -> None:
    """A request signed with another secret is dropped as a bad M-A, not as malformed."""
    raw = request("alice", "alice-pass", secret=b"not-the-shared-secret").raw
    assert bridge.send(raw) == []
    assert bridge.counters["dropped.bad-message-authenticator"] == 1
    assert malformed_total(bridge.counters) == 0
    assert bridge.directory.calls == []


def test_bad_message_authenticator_does_not_disturb_the_cache(bridge: Bridge) -> None:
    """A forged copy with a bad M-A neither evicts nor replaces the cached reply."""
    req = request("alice", "alice-pass")
    first = bridge.send(req.raw)
    forged = flip_message_authenticator(req.raw)
    bridge.send(forged)
    assert bridge.send(req.raw) == first
    assert len(bridge.directory.calls) == 1


@pytest.mark.parametrize(
    ("addr", "secret"), [(NAS, SECRET), (LEGACY, LEGACY_SECRET)], ids=["required", "optional"]
)
def test_status_server_without_message_authenticator_is_dropped(
    bridge: Bridge, addr: Address, secret: bytes
) -> None:
    """Status-Server without M-A is dropped even from a client that does not require M-A."""
    assert bridge.send(status_server(ma=False, secret=secret).raw, addr) == []
    assert bridge.counters["dropped.missing-message-authenticator"] == 1
    assert bridge.counters.get("status-server", 0) == 0


# --- unknown clients and malformed datagrams ----------------------------------------------


def test_unknown_client_is_dropped_before_decoding(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A datagram from a non-client address gets no reply and is never parsed."""
    parsed: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def called(*args: object) -> Any:
            parsed.append(name)
            raise AssertionError(f"{name} called for an unknown client")

        return called

    monkeypatch.setattr(codec, "peek_header", refuse("peek_header"))
    monkeypatch.setattr(codec, "decode_request", refuse("decode_request"))
    assert bridge.send(request("alice", "alice-pass").raw, STRANGER) == []
    assert bridge.send(b"\x01", STRANGER) == []
    assert parsed == []
    assert bridge.counters["dropped.unknown-client"] == 2
    assert bridge.counters.get("dropped.internal-error", 0) == 0
    assert bridge.directory.calls == []


def header(code: int, length: int, ident: int = 9) -> bytes:
    """A RADIUS header with a fixed Request Authenticator."""
    return struct.pack("!BBH", code, ident, length) + bytes(range(16))


USER_ALICE = bytes((1, 7)) + b"alice"

MALFORMED = [
    pytest.param(header(1, 20)[:19], "short", id="19-octets"),
    pytest.param(header(1, 19), "length", id="length-field-19"),
    pytest.param(header(1, 5000) + bytes(4980), "length", id="length-field-5000"),
    pytest.param(header(1, 60) + USER_ALICE, "truncated", id="length-past-the-end"),
    pytest.param(
        header(1, 20 + 7 + 5) + USER_ALICE + b"\x12\x0aabc",
        "attribute-length",
        id="truncated-attribute",
    ),
    pytest.param(header(4, 20 + 7) + USER_ALICE, "bad-code", id="accounting-request"),
    pytest.param(random.Random(2865).randbytes(64), None, id="random-bytes"),
    pytest.param(
        header(1, 20 + 64) + random.Random(5080).randbytes(64), None, id="random-attributes"
    ),
]


@pytest.mark.parametrize(("datagram", "cause"), MALFORMED)
def test_malformed_datagram_is_dropped_and_service_goes_on(
    bridge: Bridge, datagram: bytes, cause: str | None
) -> None:
    """A malformed datagram: no reply, a dropped.malformed.<cause> count; service goes on."""
    assert bridge.send(datagram) == []
    counters = bridge.counters
    assert malformed_total(counters) == 1
    if cause is not None:
        assert counters[f"dropped.malformed.{cause}"] == 1
    assert counters.get("dropped.internal-error", 0) == 0
    assert bridge.directory.calls == []
    assert bridge.exchange(request("alice", "alice-pass")).code == ACCEPT


# --- what the bridge does not support -----------------------------------------------------


@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param({"CHAP_Password": b"\x01" + bytes(16)}, id="chap"),
        pytest.param({"EAP_Message": b"\x02\x01\x00\x0a\x01alice"}, id="eap"),
    ],
)
def test_chap_and_eap_are_rejected_without_a_bind(
    bridge: Bridge, attributes: dict[str, Any]
) -> None:
    """CHAP-Password, or EAP-Message without radius.eap: Access-Reject with M-A first (and
    EAP-Failure for EAP, so the supplicant stops at once), the directory not asked."""
    reply = bridge.exchange(request("alice", **attributes))
    assert reply.code == REJECT
    assert reply.attributes[0][0] == MESSAGE_AUTHENTICATOR
    assert not reply.has_message
    assert bridge.directory.calls == []
    eap = [v for t, v in reply.attributes if t == EAP_MESSAGE]
    assert eap == ([b"\x04\x01\x00\x04"] if "EAP_Message" in attributes else [])


def test_chap_with_a_user_password_too_is_rejected_without_a_bind(bridge: Bridge) -> None:
    """A request with both CHAP-Password and User-Password is refused, not bound."""
    reply = bridge.exchange(request("alice", "alice-pass", CHAP_Password=b"\x01" + bytes(16)))
    assert reply.code == REJECT
    assert bridge.directory.calls == []


def test_a_grace_notice_fits_beside_the_most_proxy_state_allowed(bridge: Bridge) -> None:
    """1,012 octets of Proxy-State and a grace notice: accepted with the notice; more: dropped."""
    most = tuple(bytes([i]) * 251 for i in range(4))  # 4 x 253 octets with the headers
    reply = bridge.exchange(request("alice", "alice-pass", proxy_states=most))
    assert reply.code == ACCEPT and "days left" in reply.message
    assert reply.proxy_states == list(most)
    too_much = request("alice", "alice-pass", proxy_states=(*most, b"x" * 20))
    assert bridge.send(too_much.raw) == []
    assert bridge.counters["dropped.malformed.too-much-proxy-state"] == 1


def test_proxy_states_are_echoed_in_order(bridge: Bridge) -> None:
    """Two Proxy-State attributes come back unchanged and in the order received."""
    proxy_states = (b"second-hop\x00\xff", b"first-hop")
    req = request("alice", "alice-pass", proxy_states=proxy_states)
    reply = bridge.exchange(req)
    assert reply.code == ACCEPT
    assert reply.proxy_states == list(proxy_states)


# --- directory trouble: fail closed -------------------------------------------------------


def test_directory_unavailable_rejects_and_recovers(bridge: Bridge) -> None:
    """Directory down: Access-Reject without a message; once it is back, logins work again."""
    bridge.directory.answer = BindResult(BindStatus.UNAVAILABLE)
    reply = bridge.exchange(request("alice", "alice-pass"))
    assert reply.code == REJECT
    assert not reply.has_message
    assert bridge.counters["rejects"] == 1
    bridge.directory.answer = None
    assert bridge.exchange(request("alice", "alice-pass")).code == ACCEPT


def test_directory_errback_rejects(bridge: Bridge) -> None:
    """A directory Deferred that fails gives Access-Reject (fail closed); nothing escapes."""
    bridge.directory.error = RuntimeError("directory exploded")
    req = request("alice", "alice-pass")
    bridge.protocol.datagramReceived(req.raw, NAS)  # returns normally
    ((raw, to),) = bridge.transport.sent
    assert to == NAS
    reply = decode(req, raw)
    assert reply.code == REJECT
    assert not reply.has_message
    assert bridge.counters["rejects"] == 1
    assert bridge.counters.get("dropped.internal-error", 0) == 0
    assert bridge.store.get(entry_id("alice")) is None


def test_late_directory_errback_rejects(bridge: Bridge) -> None:
    """A bind that errbacks later still gets exactly one Access-Reject (fail closed)."""
    bridge.directory.hold = True
    req = request("alice", "alice-pass")
    assert bridge.send(req.raw) == []
    (d, _, _), *_ = bridge.directory.held
    before = len(bridge.transport.sent)
    d.errback(ConnectionError("ldap server went away"))
    replies = bridge.written_since(before, NAS)
    assert len(replies) == 1
    assert decode(req, replies[0]).code == REJECT
    assert bridge.counters["rejects"] == 1
    assert bridge.send(req.raw) == replies
    assert bridge.store.get(entry_id("alice")) is None


# --- what users are told ------------------------------------------------------------------


def test_locked_user_with_correct_password_is_told_locked(bridge: Bridge) -> None:
    """A locked user who gave the right password learns the account is locked."""
    reply = bridge.exchange(request("carol", "carol-pass"))
    assert reply.code == REJECT
    assert "locked" in reply.message


def test_locked_user_with_wrong_password_is_told_nothing(bridge: Bridge) -> None:
    """A wrong password for a locked user gets a bare Access-Reject: no Reply-Message."""
    reply = bridge.exchange(request("carol", "wrong-pass"))
    assert reply.code == REJECT
    assert not reply.has_message


def test_unknown_user_is_told_nothing(bridge: Bridge) -> None:
    """A user the directory does not know gets a bare Access-Reject."""
    reply = bridge.exchange(request("mallory", "whatever"))
    assert reply.code == REJECT
    assert not reply.has_message


# --- nothing escapes datagramReceived -----------------------------------------------------

FUZZ_AUTHENTICATOR = bytes(range(100, 116))  # fixed, so the examples are reproducible
SOURCES: list[tuple[Address, bytes]] = [(NAS, SECRET), (LEGACY, LEGACY_SECRET)]


@cache
def valid_datagrams() -> list[tuple[Address, bytes, bytes]]:
    """(source, datagram, its client's secret): requests known clients could send.

    The "pam" client does not require a Message-Authenticator, so its mutated requests get
    past the signature check and exercise password decryption and the login itself.
    """
    auth = FUZZ_AUTHENTICATOR
    state = bytes(16)
    legacy: dict[str, Any] = {"ma": False, "secret": LEGACY_SECRET, "authenticator": auth}
    signed = [
        request("alice", "alice-pass", ident=1, authenticator=auth),
        request("bob", "bob-pass", ident=2, authenticator=auth),
        request("bob", "123456", state=state, ident=3, authenticator=auth, proxy_states=(b"p",)),
        request(None, code=STATUS_SERVER, ident=4, authenticator=auth),
    ]
    unsigned = [
        request("alice", "alice-pass", ident=5, **legacy),
        request("bob", "bob-pass" + "123456", ident=6, **legacy),
        request("carol", "carol-pass", ident=7, NAS_Identifier="pam-host", **legacy),
        request("bob", "654321", state=state, ident=8, **legacy),
        request("alice", ident=9, CHAP_Password=bytes(17), **legacy),
        request("alice", "x" * 40, ident=10, proxy_states=(b"a", b"b"), **legacy),
    ]
    return [(NAS, req.raw, SECRET) for req in signed] + [
        (LEGACY, req.raw, LEGACY_SECRET) for req in unsigned
    ]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[Address, bytes, bytes]:
    """A valid datagram with up to four octets flipped, set, inserted or deleted, or cut
    short, or its Length field rewritten; then, half the time, the Length field made right."""
    addr, base, secret = draw(st.sampled_from(valid_datagrams()))
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "length"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "length" and len(data) >= 4:
            data[2:4] = struct.pack("!H", draw(st.integers(0, 0xFFFF)))
    if len(data) >= 4 and draw(st.booleans()):
        data[2:4] = struct.pack("!H", len(data))
    return addr, bytes(data), secret


random_datagrams = st.builds(
    lambda source, data: (source[0], data, source[1]),
    st.sampled_from(SOURCES),
    st.binary(max_size=300),
)


def test_no_exception_escapes_datagram_received(make_bridge: MakeBridge) -> None:
    """Random and mutated datagrams never reach the catch-all, and every reply is well-formed."""
    bridge = make_bridge(reject_delay=1.0)

    @settings(max_examples=300, derandomize=True, deadline=None, database=None)
    @given(st.one_of(random_datagrams, mutated()))
    def check(case: tuple[Address, bytes, bytes]) -> None:
        addr, datagram, secret = case
        before = len(bridge.transport.sent)
        bridge.protocol.datagramReceived(datagram, addr)  # raises nothing, by contract
        bridge.clock.advance(1.0)  # the delayed reject goes out
        bridge.clock.advance(30.0)  # and the reply cache empties
        for reply in bridge.written_since(before, addr):
            assert_well_formed(reply, datagram, secret)
        assert bridge.protocol.counters.get("dropped.internal-error", 0) == 0
        assert bridge.clock.getDelayedCalls() == []

    check()
    counters = bridge.counters
    assert counters["packets"] >= 300
    assert malformed_total(counters) > 0  # the fuzzing reached the decoder...
    assert counters.get("accepts", 0) + counters.get("rejects", 0) > 0  # ...and beyond it


# --- EAP (SPEC section 10): the listener's side; the method itself in test_eap_machine ----


@dataclass(frozen=True)
class Ended:
    """An EAP conversation's last RADIUS reply, as a supplicant's access point sees it."""

    code: int
    packet: EapPacket
    keys: MppeKeys | None
    reply: Reply


class OverRadius:
    """The EAP server's `respond`, answered by the RADIUS listener: the in-memory
    supplicant of tests/eap_peer.py logs in through RadiusProtocol with it."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def respond(self, message: bytes, state: bytes | None, client: str) -> Step | Ended:
        req = request("anonymous", state=state, eap=message)
        reply = self.bridge.exchange(req)
        packet = parse(b"".join(v for t, v in reply.attributes if t == EAP_MESSAGE))
        if reply.code == CHALLENGE:
            assert reply.state is not None
            return Challenge(packet, reply.state)
        keys = {}
        for kind, value in reply.attributes:
            if kind == VENDOR_SPECIFIC and value[:4] == (311).to_bytes(4, "big"):
                keys[value[4]] = req.packet.SaltDecrypt(value[6:])
        mppe = MppeKeys(recv=keys[17], send=keys[16]) if keys else None
        return Ended(reply.code, packet, mppe, reply)


@pytest.mark.parametrize("method", [Type.TTLS, Type.PEAP])
def test_an_eap_login_ends_with_eap_success_and_the_keys_the_peer_derives(
    make_bridge: MakeBridge, tmp_path: Path, method: Type
) -> None:
    """Every round a Challenge with a State; the accept carries EAP-Success and the MPPE
    keys (decrypted by pyrad) equal to the peer's MSK halves; audited with the method."""
    bridge = make_bridge(eap=True, mode="challenge")  # EAP is append mode whatever the mode
    ca = next(tmp_path.glob("EAP-Test-CA.pem"))
    peer = Peer(ca, "bob", "bob-pass" + bridge.code(), method)
    over = OverRadius(bridge)
    step = peer.login(over)  # type: ignore[arg-type]
    if method is Type.PEAP:  # the Result TLV, answered
        step, _ = peer.receive(over, step)  # type: ignore[arg-type]
        answer = bytes((Code.RESPONSE,)) + peer.inner()[1:]
        step = peer.flight(over, peer.seal(answer))  # type: ignore[arg-type]
    assert isinstance(step, Ended)
    assert (step.code, step.packet.code) == (ACCEPT, Code.SUCCESS)
    material = peer.export(b"EXPORTER_EAP_TLS_Key_Material", bytes((method,)))
    assert step.keys == MppeKeys(recv=material[:32], send=material[32:64])
    audit = bridge.audit_lines()[-1]
    assert audit["protocol"] == {Type.TTLS: "eap-ttls", Type.PEAP: "peap"}[method]
    assert (audit["user"], audit["outer_identity"], audit["reason"]) == (
        "bob",
        "anonymous",
        "accepted",
    )


def test_an_eap_reject_carries_eap_failure_after_the_reject_delay(
    make_bridge: MakeBridge, tmp_path: Path
) -> None:
    """A wrong code inside the tunnel: Access-Reject with EAP-Failure, reject_delay after
    the request that carried the password, and no Reply-Message before a right password."""
    bridge = make_bridge(eap=True, reject_delay=1.0)
    ca = next(tmp_path.glob("EAP-Test-CA.pem"))
    peer = Peer(ca, "bob", "bob-pass000000" if bridge.code() != "000000" else "bob-pass111111")
    over = OverRadius(bridge)
    peer.handshake(over)  # type: ignore[arg-type]
    sealed = peer.seal(peer.pap())
    last = request("anonymous", state=peer.state, eap=peer.response(b"\x00" + sealed).to_bytes())
    assert bridge.send(last.raw) == []  # waiting out the delay
    assert bridge.advance(0.999) == []
    replies = bridge.advance(0.001)
    assert len(replies) == 1
    reply = decode(last, replies[0])
    assert reply.code == REJECT
    eap = parse(b"".join(v for t, v in reply.attributes if t == EAP_MESSAGE))
    assert eap == EapPacket(Code.FAILURE, peer.identifier)
    assert bridge.audit_lines()[-1]["reason"] == "wrong-code"


def test_eap_without_a_message_authenticator_is_dropped_even_for_legacy_clients(
    make_bridge: MakeBridge,
) -> None:
    """RFC 3579 3.3: an Access-Request with EAP-Message and no Message-Authenticator is
    silently discarded, whatever require_message_authenticator says for the client."""
    bridge = make_bridge(eap=True)
    identity = EapPacket(Code.RESPONSE, 1, Type.IDENTITY, b"anonymous").to_bytes()
    req = request("anonymous", eap=identity, ma=False, secret=LEGACY_SECRET)
    assert bridge.send(req.raw, LEGACY) == []
    assert bridge.counters["dropped.missing-message-authenticator"] == 1


def test_a_long_eap_request_is_joined_from_its_attributes(make_bridge: MakeBridge) -> None:
    """An identity split over two EAP-Message attributes is read whole (the outer identity
    of 300 octets comes back in the audit of the refusal that follows)."""
    bridge = make_bridge(eap=True)
    name = b"n" * 300
    identity = EapPacket(Code.RESPONSE, 1, Type.IDENTITY, name).to_bytes()
    first = bridge.exchange(request("anonymous", eap=identity))
    assert first.code == CHALLENGE
    start = parse(b"".join(v for t, v in first.attributes if t == EAP_MESSAGE))
    assert (start.type, start.data) == (Type.TTLS, b"\x20")
    md5 = EapPacket(Code.RESPONSE, start.identifier, Type.NAK, b"\x04").to_bytes()
    refused = bridge.exchange(request("anonymous", state=first.state, eap=md5))
    assert refused.code == REJECT
    assert bridge.audit_lines()[-1]["outer_identity"] == "n" * 253
    assert bridge.audit_lines()[-1]["reason"] == "unsupported"


def test_an_eap_round_with_an_unknown_state_is_refused_and_audited(
    make_bridge: MakeBridge,
) -> None:
    """A State no conversation holds (expired, another server's): EAP-Failure at once,
    audited as eap-error under the request's User-Name; the next login is unaffected."""
    bridge = make_bridge(eap=True)
    stray = EapPacket(Code.RESPONSE, 9, Type.TTLS, b"\x00").to_bytes()
    reply = bridge.exchange(request("walter", state=b"s" * 16, eap=stray))
    assert reply.code == REJECT
    assert [v for t, v in reply.attributes if t == EAP_MESSAGE] == [b"\x04\x09\x00\x04"]
    line = bridge.audit_lines()[-1]
    assert (line["user"], line["protocol"], line["reason"]) == ("walter", "eap", "eap-error")
    identity = EapPacket(Code.RESPONSE, 1, Type.IDENTITY, b"anonymous").to_bytes()
    assert bridge.exchange(request("anonymous", eap=identity)).code == CHALLENGE


def test_audit_lines_name_the_nas_the_device_and_the_address(bridge: Bridge) -> None:
    """SPEC 12: NAS-Identifier, NAS-IP-Address and Calling-Station-Id, as the NAS sent
    them, and the address the request came from, in the decision's audit line."""
    req = request(
        "alice",
        "alice-pass",
        NAS_Identifier="vpn-1",
        NAS_IP_Address="192.0.2.7",
        Calling_Station_Id="203.0.113.9",
    )
    assert bridge.exchange(req).code == ACCEPT
    line = bridge.audit_lines()[-1]
    assert (line["nas_identifier"], line["nas_ip"]) == ("vpn-1", "192.0.2.7")
    assert (line["calling_station_id"], line["client_address"]) == ("203.0.113.9", NAS[0])
    assert line["client"] == f"vpn({NAS[0]})"
    plain = bridge.exchange(request("alice", "wrong-pass"))
    assert plain.code == REJECT
    assert "nas_identifier" not in bridge.audit_lines()[-1]  # absent when not sent
