"""EAP packets, EAP-Message attributes, TLS-method fragments and MPPE key encryption."""

from __future__ import annotations

import contextlib
import os
import random

import pytest
from pyrad import packet
from pyrad.dictionary import Dictionary

from bridge.eap import mppe
from bridge.eap.packets import (
    MAX_TLS_MESSAGE,
    Code,
    EapError,
    EapPacket,
    Reassembly,
    TlsFragment,
    Type,
    fragments,
    nak,
    parse,
    parse_fragment,
    split_message,
)


def test_packets_round_trip_and_success_has_no_type() -> None:
    identity = EapPacket(Code.RESPONSE, 7, Type.IDENTITY, b"anonymous")
    assert identity.to_bytes() == b"\x02\x07\x00\x0e\x01anonymous"
    assert parse(identity.to_bytes()) == identity
    success = EapPacket(Code.SUCCESS, 9)
    assert success.to_bytes() == b"\x03\x09\x00\x04"
    assert parse(success.to_bytes()) == success
    assert nak(3, (Type.TTLS, Type.PEAP)).to_bytes() == b"\x02\x03\x00\x07\x03\x15\x19"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\x02\x01\x00", "of 3 octets"),
        (b"\x02\x01\x00\x09\x01abc", "length field 9"),
        (b"\x07\x01\x00\x05\x01", "code 7"),
        (b"\x03\x01\x00\x05\x01", "SUCCESS with data"),
        (b"\x02\x01\x00\x04", "RESPONSE without a type"),
    ],
)
def test_malformed_packets_are_errors(raw: bytes, problem: str) -> None:
    with pytest.raises(EapError, match=problem):
        parse(raw)


def test_a_long_packet_travels_in_several_attributes() -> None:
    raw = EapPacket(Code.REQUEST, 1, Type.TTLS, os.urandom(600)).to_bytes()
    chunks = split_message(raw)
    assert [len(c) for c in chunks] == [253, 253, 99]
    assert b"".join(chunks) == raw


@pytest.mark.parametrize("size", [0, 1, 1019, 1020, 1021, 5000, 40_000])
def test_fragments_reassemble_to_the_message(size: int) -> None:
    message = os.urandom(size)
    parts = fragments(message, 0, 1020)
    assert all(len(p.to_bytes()) <= 1020 for p in parts)
    assert [p.more for p in parts] == [True] * (len(parts) - 1) + [False]
    assert [p.total_length is not None for p in parts][1:] == [False] * (len(parts) - 1)
    assert (parts[0].total_length is not None) == (len(parts) > 1)
    whole = Reassembly()
    got = [whole.add(parse_fragment(p.to_bytes())) for p in parts]
    assert got[:-1] == [None] * (len(parts) - 1)
    assert got[-1] == message
    assert not whole.pending


def test_fragment_flags_and_version() -> None:
    start = TlsFragment(0x20, 1, b"")
    assert start.to_bytes() == b"\x21"
    parsed = parse_fragment(start.to_bytes())
    assert parsed.start and parsed.version == 1 and not parsed.more
    with pytest.raises(EapError, match="without flags"):
        parse_fragment(b"")
    with pytest.raises(EapError, match="without the length"):
        parse_fragment(b"\x80\x00\x01")


def test_a_peer_cannot_make_the_bridge_buffer_without_bound() -> None:
    with pytest.raises(EapError, match="announced"):
        parse_fragment(b"\xc0" + (MAX_TLS_MESSAGE + 1).to_bytes(4, "big"))
    lying = Reassembly()
    lying.add(TlsFragment(0x40, 0, b"x" * 100, total_length=150))
    with pytest.raises(EapError, match="grew past 150"):
        lying.add(TlsFragment(0x40, 0, b"x" * 100))
    short = Reassembly()
    short.add(TlsFragment(0x40, 0, b"x" * 100, total_length=300))
    with pytest.raises(EapError, match="200 octets, 300 announced"):
        short.add(TlsFragment(0, 0, b"x" * 100))
    endless = Reassembly(limit=1000)
    for _ in range(10):
        endless.add(TlsFragment(0x40, 0, b"x" * 100))
    with pytest.raises(EapError, match="grew past 1000"):
        endless.add(TlsFragment(0x40, 0, b"x" * 100))


def test_random_bytes_are_refused_or_parsed_never_a_crash() -> None:
    rng = random.Random(20261206)
    for _ in range(3000):
        raw = rng.randbytes(rng.randrange(0, 40))
        for parser in (parse, parse_fragment):
            with contextlib.suppress(EapError):
                parser(raw)


def test_mppe_keys_decrypt_with_pyrad_as_a_second_implementation() -> None:
    """pyrad's salt decryption (RFC 2868 3.5, the same construction) opens our values."""
    secret, authenticator = b"testing123", os.urandom(16)
    reply = packet.Packet(secret=secret, authenticator=authenticator, dict=Dictionary())
    for key in (os.urandom(32), os.urandom(16), b""):
        value = mppe.encrypt_key(key, secret, authenticator, mppe.new_salt())
        assert len(value) == 2 + 16 * (len(key) // 16 + 1)
        assert reply.SaltDecrypt(value) == key
    with pytest.raises(ValueError, match="top bit"):
        mppe.encrypt_key(b"k" * 32, secret, authenticator, b"\x00\x01")
    attribute = mppe.vendor_attribute(mppe.MS_MPPE_RECV_KEY, b"v" * 34)
    assert attribute[:8] == b"\x1a\x2a\x00\x00\x01\x37\x11\x24"
