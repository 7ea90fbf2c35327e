"""The proxy's own reader and writer for bind messages, checked against ldaptor's codec."""

from __future__ import annotations

import random

import pytest
from ldaptor.protocols import pureber, pureldap
from ldaptor.protocols.ldap.ldapclient import LDAPClient
from ldaptor.protocols.ldap.ldapserver import BaseLDAPServer

from bridge.ldap_proxy import ber


def ldaptor_decode(pdu: bytes, client_side: bool = False) -> pureldap.LDAPMessage:
    decoder = LDAPClient.berdecoder if client_side else BaseLDAPServer.berdecoder
    message, used = pureber.berDecodeObject(decoder, pdu)
    assert used == len(pdu)
    return message


@pytest.mark.parametrize(
    ("msg_id", "dn", "password"),
    [
        (1, "uid=alice,ou=people,dc=example,dc=org", "secret123456"),
        (127, "", ""),
        (128, "x" * 200, "p" * 300),  # long-form lengths, a message ID with its top bit set
        (ber.MAX_MESSAGE_ID, "cn=ünïcode,dc=example", "pässwörd"),
    ],
)
def test_bind_request_is_what_ldaptor_reads(msg_id: int, dn: str, password: str) -> None:
    pdu = ber.bind_request(msg_id, dn, password)
    message = ldaptor_decode(pdu)
    assert message.id == msg_id
    assert isinstance(message.value, pureldap.LDAPBindRequest)
    assert (message.value.version, message.value.sasl) == (3, False)
    assert (message.value.dn, message.value.auth) == (dn.encode(), password.encode())
    parsed = ber.parse_bind_request(pdu)
    assert parsed == ber.BindRequest(msg_id, 3, dn.encode(), password.encode())


@pytest.mark.parametrize(
    ("msg_id", "code", "text"), [(1, 0, ""), (300, 49, "no"), (7, 53, "x" * 150)]
)
def test_bind_response_is_what_ldaptor_reads(msg_id: int, code: int, text: str) -> None:
    pdu = ber.bind_response(msg_id, code, text)
    message = ldaptor_decode(pdu, client_side=True)
    assert message.id == msg_id
    assert isinstance(message.value, pureldap.LDAPBindResponse)
    assert (message.value.resultCode, message.value.errorMessage) == (code, text.encode())
    assert ber.result_code(pdu) == (msg_id, code)
    assert ber.message_id(pdu) == msg_id


def test_reads_ldaptor_encoded_binds_and_results() -> None:
    request = pureldap.LDAPMessage(pureldap.LDAPBindRequest(dn="uid=bob", auth="pw"), id=42)
    assert ber.parse_bind_request(request.toWire()) == ber.BindRequest(42, 3, b"uid=bob", b"pw")
    starttls = pureldap.LDAPMessage(
        pureldap.LDAPExtendedResponse(resultCode=2, responseName=b"1.3.6.1.4.1.1466.20037"), id=9
    )
    assert ber.result_code(starttls.toWire()) == (9, 2)
    unbind = ldaptor_decode(ber.unbind_request(5))
    assert (unbind.id, type(unbind.value)) == (5, pureldap.LDAPUnbindRequest)


def test_binds_it_does_not_read_exactly_are_left_to_ldaptor() -> None:
    """SASL, controls, message ID 0, trailing bytes, a search: None (decoded the slow way)."""
    sasl = pureldap.LDAPBindRequest(dn="", auth=("PLAIN", b"x"), sasl=True)
    with_control = pureldap.LDAPMessage(
        pureldap.LDAPBindRequest(dn="uid=a", auth="p"),
        id=3,
        controls=[("1.2.840.113556.1.4.319", True, None)],
    )
    search = pureldap.LDAPMessage(pureldap.LDAPSearchRequest(baseObject="o=x"), id=2)
    plain = ber.bind_request(4, "uid=a", "p")
    for pdu in (
        pureldap.LDAPMessage(sasl, id=1).toWire(),
        with_control.toWire(),
        search.toWire(),
        ber.bind_request(0, "uid=a", "p"),
        plain + b"\x00",
        plain[:-1],
        b"",
    ):
        assert ber.parse_bind_request(pdu) is None
    assert ber.result_code(search.toWire()) is None


def test_random_and_damaged_bytes_never_raise() -> None:
    """Whatever arrives, the reader answers None or a request ldaptor reads the same way."""
    rng = random.Random(20261206)
    base = ber.bind_request(77, "uid=carol,dc=example", "carol-pass123456")
    for _ in range(5000):
        pdu = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            pdu[rng.randrange(len(pdu))] = rng.randrange(256)
        parsed = ber.parse_bind_request(bytes(pdu))
        ber.result_code(bytes(pdu))
        if parsed is None:
            continue
        message = ldaptor_decode(bytes(pdu))
        assert (message.id, message.value.version) == (parsed.message_id, parsed.version)
        assert (message.value.dn, message.value.auth) == (parsed.dn, parsed.password)
    for size in range(40):
        ber.parse_bind_request(rng.randbytes(size))
        ber.result_code(rng.randbytes(size))
