"""The EAP server round by round, against an in-memory supplicant (tests/eap_peer.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from bridge.eap import peap
from bridge.eap.conversations import Conversations
from bridge.eap.machine import (
    MAX_ROUNDS,
    Challenge,
    EapServer,
    Failure,
    Success,
    Verify,
)
from bridge.eap.packets import Code, EapPacket, Type, parse_fragment
from bridge.eap.ttls import PapCredentials, encode_avp, read_pap
from tests.eap_peer import CLIENT, Peer, server_side

TLS12, TLS13 = SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION
ACCEPTED = object()  # what the caller keeps for an accept


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ca_and_context(tmp_path: Path) -> tuple[Path, SSL.Context]:
    return server_side(tmp_path, names=60)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(ca_and_context: tuple[Path, SSL.Context], clock: Clock) -> EapServer:
    return EapServer(ca_and_context[1], Conversations(clock, lifetime=30.0, per_client=4))


@pytest.fixture
def ca(ca_and_context: tuple[Path, SSL.Context]) -> Path:
    return ca_and_context[0]


def finish(server: EapServer, peer: Peer, step: object) -> Success:
    """After Verify: accept, and (PEAP) answer the Result TLV; returns the Success."""
    assert isinstance(step, Verify), step
    after = server.verified(step.tunnel, ACCEPTED, CLIENT)
    if peer.method is Type.PEAP:
        after, _ = peer.receive(server, after)
        assert peap.read_result(_as_response(peer.inner()))
        result = peap.result_request(peer.identifier, success=True)
        answer = EapPacket(Code.RESPONSE, result[1], peap.EXTENSIONS, result[5:]).to_bytes()
        after = peer.flight(server, peer.seal(answer))
    assert isinstance(after, Success), after
    return after


def _as_response(request: bytes) -> bytes:
    """The Result TLV request as the peer would echo it (a Response with the same TLV)."""
    return bytes((Code.RESPONSE,)) + request[1:]


@pytest.mark.parametrize("method", [Type.TTLS, Type.PEAP])
@pytest.mark.parametrize(("version", "size"), [(TLS12, 1024), (TLS13, 1024), (TLS12, 60)])
def test_a_login_reaches_verify_then_success_with_the_keys_the_peer_derives(
    server: EapServer, ca: Path, method: Type, version: int, size: int
) -> None:
    peer = Peer(ca, "carol", "carol-pw123456", method, version, fragment_size=size)
    step = peer.login(server)
    assert isinstance(step, Verify)
    assert step.credentials == PapCredentials("carol", "carol-pw123456")
    assert step.tunnel.outer_identity == "anonymous"
    assert step.tunnel.protocol == {Type.TTLS: "eap-ttls", Type.PEAP: "peap"}[method]
    success = finish(server, peer, step)
    assert success.packet.code is Code.SUCCESS
    assert success.packet.identifier == peer.identifier
    if version == TLS13:
        material = peer.export(b"EXPORTER_EAP_TLS_Key_Material", bytes((method,)))
    else:
        label = b"ttls keying material" if method is Type.TTLS else b"client EAP encryption"
        material = peer.export(label, None)
    assert (success.keys.recv, success.keys.send) == (material[:32], material[32:64])
    assert success.tunnel.accepted is ACCEPTED
    assert len(server.conversations) == 0


def test_a_rejected_password_ends_with_failure_at_once(server: EapServer, ca: Path) -> None:
    peer = Peer(ca, "carol", "wrong", Type.PEAP)
    step = peer.login(server)
    assert isinstance(step, Verify)
    after = server.verified(step.tunnel, None, CLIENT)
    assert isinstance(after, Failure) and after.decided
    assert after.packet == EapPacket(Code.FAILURE, peer.identifier)


def test_the_large_server_flight_goes_in_fragments_each_acknowledged(
    server: EapServer, ca: Path
) -> None:
    peer = Peer(ca, "carol", "pw", Type.TTLS, TLS12)
    peer.start(server)
    peer.shake()
    step = peer.flight(server, peer.tls_out())
    assert isinstance(step, Challenge)
    first = parse_fragment(step.packet.data)
    assert first.more and first.total_length is not None and first.total_length > 1024
    assert len(step.packet.to_bytes()) <= 1024 + 10
    wrong = server.respond(peer.response(b"\x00some data").to_bytes(), peer.state, CLIENT)
    assert isinstance(wrong, Failure)
    assert "acknowledgement" in wrong.why


def test_an_md5_peer_is_refused_naming_what_it_asked_for(server: EapServer, ca: Path) -> None:
    peer = Peer(ca, "carol", "pw")
    peer.start(server)
    step = peer.send(server, EapPacket(Code.RESPONSE, peer.identifier, Type.NAK, b"\x04"))
    assert isinstance(step, Failure) and step.refused_method
    assert "MD5_CHALLENGE" in step.why and "TTLS,PEAP" in step.why
    assert step.packet.code is Code.FAILURE


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x02", id="short"),
        pytest.param(b"\x02\x07\x00\x09\x01abc", id="length"),
        pytest.param(b"\x01\x07\x00\x06\x01a", id="a request from the peer"),
        pytest.param(b"\x02\x07\x00\x06\x04a", id="no identity first"),
    ],
)
def test_malformed_first_packets_end_with_failure(server: EapServer, raw: bytes) -> None:
    step = server.respond(raw, None, CLIENT)
    assert isinstance(step, Failure)
    assert step.packet.code is Code.FAILURE
    assert len(server.conversations) == 0


def test_a_state_continues_only_its_conversation_from_its_client_once(
    server: EapServer, ca: Path
) -> None:
    peer = Peer(ca, "carol", "pw")
    peer.start(server)
    hello = peer.response(b"\x00")  # an empty TTLS response: not a ClientHello
    assert isinstance(server.respond(hello.to_bytes(), peer.state, "192.0.2.99"), Failure)
    peer2 = Peer(ca, "carol", "pw")
    peer2.start(server)
    ok = peer2.state
    wrong_id = EapPacket(Code.RESPONSE, (peer2.identifier + 5) & 0xFF, Type.TTLS, b"\x00")
    step = server.respond(wrong_id.to_bytes(), ok, CLIENT)
    assert isinstance(step, Failure) and "response" in step.why
    again = server.respond(wrong_id.to_bytes(), ok, CLIENT)
    assert isinstance(again, Failure) and "unknown or expired" in again.why


def test_garbage_tls_ends_that_conversation_only(server: EapServer, ca: Path) -> None:
    good, bad = Peer(ca, "carol", "pw"), Peer(ca, "dave", "pw")
    good.start(server)
    bad.start(server)
    step = bad.send(server, bad.response(b"\x00" + b"\x16\x03\x01\x00\x05hello, not TLS" * 4))
    assert isinstance(step, Failure) and step.tunnel is not None
    assert isinstance(good.login(server), Verify)


def test_conversations_expire_and_are_counted(server: EapServer, ca: Path, clock: Clock) -> None:
    peer = Peer(ca, "carol", "pw")
    peer.start(server)
    clock.now += 31
    step = peer.send(server, peer.response(b"\x00"))
    assert isinstance(step, Failure) and "expired" in step.why
    assert server.conversations.counters["expired"] == 1


def test_a_client_holds_only_so_many_unfinished_handshakes(server: EapServer, ca: Path) -> None:
    peers = [Peer(ca, f"user{i}", "pw") for i in range(5)]
    for peer in peers:
        peer.start(server)
    assert len(server.conversations) == 4  # per_client
    assert server.conversations.counters["evicted-client"] == 1
    assert isinstance(peers[0].send(server, peers[0].response(b"\x00")), Failure)
    assert isinstance(peers[4].login(server), Verify)


def test_a_peer_acknowledging_forever_is_cut_off(server: EapServer, ca: Path) -> None:
    peer = Peer(ca, "carol", "pw", Type.TTLS, TLS12)
    peer.handshake(server)
    step = None
    for _ in range(MAX_ROUNDS + 1):  # an empty response draws an empty request, again
        step = peer.flight(server, b"")
        if isinstance(step, Failure):
            break
    assert isinstance(step, Failure) and "rounds" in step.why


def test_ttls_without_a_password_avp_or_with_an_unknown_mandatory_one_fails(
    server: EapServer, ca: Path
) -> None:
    for inner in (encode_avp(1, b"carol"), encode_avp(1, b"carol") + encode_avp(999, b"x")):
        peer = Peer(ca, "carol", "pw", Type.TTLS, TLS13)
        peer.handshake(server)
        step = peer.flight(server, peer.seal(inner))
        assert isinstance(step, Failure), step


def test_avps_skip_optional_unknowns_and_strip_the_password_padding() -> None:
    inner = encode_avp(77, b"opt", mandatory=False) + encode_avp(1, b"carol")
    inner += encode_avp(2, b"pw123456" + bytes(8))
    assert read_pap(inner) == PapCredentials("carol", "pw123456")


def test_a_peap_peer_that_naks_gtc_is_refused(server: EapServer, ca: Path) -> None:
    peer = Peer(ca, "carol", "pw", Type.PEAP, TLS12)
    peer.handshake(server)
    asked = peer.inner()
    while not asked:
        step, _ = peer.receive(server, peer.flight(server, b""))
        asked = peer.inner()
    step = peer.flight(server, peer.seal(bytes((Type.IDENTITY,)) + b"carol"))
    peer.receive(server, step)
    step = peer.flight(server, peer.seal(bytes((Type.NAK, Type.MSCHAPV2))))
    assert isinstance(step, Failure) and "MSCHAPV2" in step.why


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.binary(max_size=40),
    data=st.binary(max_size=300),
    flags=st.sampled_from([0x00, 0x40, 0x80, 0xC0, 0x20, 0x07]),
    kind=st.sampled_from([Type.TTLS, Type.PEAP, Type.NAK, Type.IDENTITY, 254]),
)
def test_whatever_a_peer_sends_the_server_answers_and_never_raises(
    server: EapServer, ca: Path, *, first: bytes, data: bytes, flags: int, kind: int
) -> None:
    """Random EAP packets, first and in the middle of a handshake: a step, never an
    exception, and a failure leaves no conversation behind for it."""
    assert isinstance(server.respond(first, None, CLIENT), (Challenge, Failure))
    peer = Peer(ca, "carol", "pw")
    peer.start(server)
    before = len(server.conversations)
    packet = EapPacket(Code.RESPONSE, peer.identifier, kind, bytes((flags,)) + data)
    step = server.respond(packet.to_bytes(), peer.state, CLIENT)
    assert isinstance(step, (Challenge, Failure))
    if isinstance(step, Failure):
        assert len(server.conversations) == before - 1
