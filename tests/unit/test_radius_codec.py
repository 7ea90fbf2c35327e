"""Unit tests of bridge.radius.codec: strict request decoding and reply encoding."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrad import packet as pyrad_packet
from pyrad.dictionary import Dictionary

from bridge.radius.codec import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    ACCESS_REJECT,
    ACCESS_REQUEST,
    DICTIONARY,
    MALFORMED_CAUSES,
    STATUS_SERVER,
    MalformedPacket,
    Request,
    decode_request,
    encode_reply,
    peek_header,
    verify_message_authenticator,
)

SECRET = b"testing123-but-longer"
PASSWORD = "Passw0rd"
AUTH = bytes(range(16))  # fixed Request Authenticator for hand-made packets
IDENT = 42


# --- helpers: hand-made bytes and pyrad's client side --------------------------------


def attr(attr_type: int, value: bytes) -> bytes:
    """One attribute in RFC 2865 s5 form; the length octet is computed."""
    return bytes((attr_type, len(value) + 2)) + value


def packet(body: bytes, code: int = ACCESS_REQUEST, length: int | None = None) -> bytes:
    """A header over `body`; `length` overrides the Length field."""
    size = 20 + len(body) if length is None else length
    return struct.pack("!BBH", code, IDENT, size) + AUTH + body


def hidden(password: str | bytes, secret: bytes = SECRET, authenticator: bytes = AUTH) -> bytes:
    """User-Password hidden by pyrad's client code, for the given authenticator."""
    client = pyrad_packet.AuthPacket(secret=secret, authenticator=authenticator, dict=DICTIONARY)
    value: bytes = client.PwCrypt(password)
    return value


def hide_raw(plain: bytes, secret: bytes = SECRET, authenticator: bytes = AUTH) -> bytes:
    """RFC 2865 s5.2 hiding of `plain` as given (no padding added): makes bad plaintexts."""
    out, previous = b"", authenticator
    for start in range(0, len(plain), 16):
        pad = hashlib.md5(secret + previous).digest()  # noqa: S324 - RFC 2865 s5.2 is MD5
        block = bytes(a ^ b for a, b in zip(plain[start : start + 16], pad, strict=True))
        out, previous = out + block, block
    return out


def client_request(
    password: str | None = PASSWORD,
    *,
    code: int = ACCESS_REQUEST,
    message_authenticator: bool = True,
    secret: bytes = SECRET,
    proxy_states: tuple[bytes, ...] = (),
    **attributes: object,
) -> tuple[pyrad_packet.AuthPacket, bytes]:
    """A request built by pyrad's client side with the shipped dictionary, and its bytes."""
    client = pyrad_packet.AuthPacket(code=code, id=IDENT, secret=secret, dict=DICTIONARY)
    client.AddAttribute("User-Name", "alice")
    if password is not None:
        client.AddAttribute("User-Password", client.PwCrypt(password))
    for name, value in attributes.items():
        client.AddAttribute(name.replace("_", "-"), value)
    if proxy_states:  # by code: pyrad would read an octets value starting "0x" as hex
        client[33] = list(proxy_states)
    if message_authenticator:
        client.add_message_authenticator()
    return client, client.RequestPacket()


def with_ma_last(body: bytes, secret: bytes = SECRET) -> bytes:
    """`body` plus a Message-Authenticator appended last, computed here with hmac."""
    unsigned = packet(body + attr(80, bytes(16)))
    digest = hmac.new(secret, unsigned, hashlib.md5).digest()
    return unsigned[:-16] + digest


def reply_attributes(reply: bytes) -> list[tuple[int, bytes]]:
    """The (type, value) list of a reply, walked independently of the codec."""
    out, offset = [], 20
    while offset < len(reply):
        attr_type, length = reply[offset], reply[offset + 1]
        assert length >= 2
        out.append((attr_type, reply[offset + 2 : offset + length]))
        offset += length
    assert offset == len(reply)
    return out


def outcome(data: bytes, secret: bytes = SECRET) -> Request | MalformedPacket:
    """What decode_request makes of `data`: the Request or the MalformedPacket raised."""
    try:
        return decode_request(data, secret)
    except MalformedPacket as exc:
        return exc


def expect_malformed(data: bytes, cause: str, secret: bytes = SECRET) -> None:
    """decode_request refuses `data` with exactly `cause`, a documented counter name."""
    with pytest.raises(MalformedPacket) as info:
        decode_request(data, secret)
    assert info.value.cause == cause
    assert cause in MALFORMED_CAUSES


# --- header ----------------------------------------------------------------------------


def test_peek_header_returns_code_identifier_authenticator() -> None:
    """peek_header reads code, identifier and authenticator without touching attributes."""
    data = packet(b"\x00\x00garbage", code=STATUS_SERVER)
    assert peek_header(data) == (STATUS_SERVER, IDENT, AUTH)


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        pytest.param(b"", "short", id="empty"),
        pytest.param(packet(b"")[:19], "short", id="19-octets"),
        pytest.param(packet(b"", length=19), "length", id="length-19"),
        pytest.param(packet(b"", length=0), "length", id="length-0"),
        pytest.param(packet(bytes(4077), length=4097), "length", id="length-4097"),
        pytest.param(packet(b"", length=100), "truncated", id="length-100-with-20-sent"),
        pytest.param(packet(attr(1, b"bob"))[:-1], "truncated", id="one-octet-short"),
    ],
)
def test_bad_lengths_are_refused_by_peek_and_decode(data: bytes, cause: str) -> None:
    """Under 20 octets, a Length outside 20..4096 or fewer octets than Length are malformed."""
    with pytest.raises(MalformedPacket) as info:
        peek_header(data)
    assert info.value.cause == cause
    expect_malformed(data, cause)


def test_length_4096_is_accepted() -> None:
    """A packet of exactly 4096 octets is within the limit."""
    body = attr(250, bytes(253)) * 15 + attr(250, bytes(4076 - 15 * 255 - 2))
    request = decode_request(packet(body), SECRET)
    assert len(request.raw) == 4096


def test_padding_after_length_is_ignored() -> None:
    """Octets beyond the Length field are padding: the request decodes without them."""
    _, data = client_request()
    request = decode_request(data + b"\xff" * 10, SECRET)
    assert request.raw == data
    assert request.password == PASSWORD
    assert verify_message_authenticator(request, SECRET)


@pytest.mark.parametrize("code", [0, 2, 3, 4, 5, 11, 13, 40, 43, 255])
def test_codes_other_than_access_request_and_status_server_are_refused(code: int) -> None:
    """Only Access-Request and Status-Server are accepted on the auth port."""
    expect_malformed(packet(attr(1, b"alice"), code=code), "bad-code")


# --- attribute walk ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        pytest.param(b"\x01\x00alice", "attribute-length", id="length-0"),
        pytest.param(b"\x01\x01alice", "attribute-length", id="length-1"),
        pytest.param(attr(1, b"alice") + b"\x12\x0aabc", "attribute-length", id="overflow"),
        pytest.param(b"\x12\xffabc", "attribute-length", id="overflow-255"),
        pytest.param(attr(1, b"alice") + b"\x12", "attribute-length", id="lone-octet"),
        pytest.param(attr(0, b"x"), "attribute-type", id="type-0"),
        pytest.param(attr(1, b"alice") + attr(0, b""), "attribute-type", id="type-0-empty"),
        pytest.param(attr(80, bytes(15)), "ma-length", id="ma-value-15"),
        pytest.param(attr(80, bytes(17)), "ma-length", id="ma-value-17"),
        pytest.param(attr(80, b""), "ma-length", id="ma-value-0"),
        pytest.param(attr(1, b"a") + attr(1, b"b"), "duplicate-attribute", id="two-user-names"),
        pytest.param(attr(24, b"s") + attr(24, b"t"), "duplicate-attribute", id="two-states"),
        pytest.param(
            attr(80, bytes(16)) + attr(80, bytes(16)), "duplicate-attribute", id="two-mas"
        ),
        pytest.param(
            attr(2, hidden("a")) + attr(2, hidden("b")), "duplicate-attribute", id="two-passwords"
        ),
    ],
)
def test_bad_attribute_walks_are_refused(body: bytes, cause: str) -> None:
    """Each violation of the exact attribute walk makes the whole packet malformed."""
    expect_malformed(packet(body), cause)


def test_attribute_running_into_padding_is_refused() -> None:
    """An attribute that ends beyond Length is malformed even if padding octets follow."""
    data = packet(b"\x01\x08ali", length=25) + b"ce\x00\x00"
    expect_malformed(data, "attribute-length")


def test_two_hundred_attributes_are_accepted() -> None:
    """200 attributes is the limit and still decodes."""
    request = decode_request(packet(attr(250, b"") * 200), SECRET)
    assert request.user_name is None


@pytest.mark.parametrize("count", [201, 2038])
def test_more_than_two_hundred_attributes_are_refused(count: int) -> None:
    """201 attributes, or a 4096-octet packet of 2-octet ones, is too many."""
    expect_malformed(packet(attr(250, b"") * count), "too-many-attributes")


def test_unknown_attribute_is_ignored() -> None:
    """An attribute missing from the dictionary (type 250) does not stop decoding."""
    body = attr(1, b"alice") + attr(250, b"\x01") + attr(2, hidden("pw"))
    request = decode_request(packet(body), SECRET)
    assert (request.user_name, request.password) == ("alice", "pw")


def test_unknown_vendor_vsa_is_ignored() -> None:
    """A well-formed Vendor-Specific of a vendor not in the dictionary is ignored."""
    vsa = attr(26, struct.pack("!L", 99999) + attr(7, b"opaque"))
    request = decode_request(packet(attr(1, b"alice") + vsa + attr(2, hidden("pw"))), SECRET)
    assert (request.user_name, request.password) == ("alice", "pw")


@pytest.mark.parametrize(
    "vsa",
    [
        pytest.param(bytes.fromhex("1a0c000000090100") + bytes(4), id="cisco-sub-length-0"),
        pytest.param(bytes.fromhex("1a0c000000090101") + bytes(4), id="cisco-sub-length-1"),
        pytest.param(bytes.fromhex("1a0c0000000901ff") + bytes(4), id="cisco-sub-overflow"),
        pytest.param(bytes.fromhex("1a0c00000009") + bytes(6), id="cisco-sub-type-0"),
        pytest.param(bytes.fromhex("1a03ff"), id="vsa-too-short-for-vendor"),
        pytest.param(bytes.fromhex("1a02"), id="vsa-empty"),
    ],
)
def test_broken_vsa_does_not_hang(vsa: bytes) -> None:
    """A VSA whose sub-attributes do not add up returns or is refused, and never loops."""
    data = packet(attr(1, b"alice") + vsa)
    results: list[object] = []

    def run() -> None:
        try:
            results.append(outcome(data))
        except Exception as exc:  # reported below, so the thread never warns
            results.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "decode_request is looping on a VSA"
    assert len(results) == 1
    assert isinstance(results[0], Request | MalformedPacket)


# --- User-Password --------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        pytest.param(PASSWORD, id="short"),
        pytest.param("0123456789abcdef", id="exactly-16-octets"),
        pytest.param("x" * 100, id="100-chars"),
        pytest.param("y" * 128, id="128-octets"),
        pytest.param("pässwörd€🔑", id="non-ascii-utf8"),
        pytest.param("", id="empty"),
        pytest.param("pw 123456", id="with-space-and-code"),
    ],
)
def test_password_decrypts_to_what_the_client_hid(password: str) -> None:
    """A User-Password hidden by pyrad's client decrypts to the same text."""
    _, data = client_request(password)
    request = decode_request(data, SECRET)
    assert request.password == password


def test_password_of_sixteen_octets_has_no_padding_block() -> None:
    """A 16-octet password is sent as one 16-octet block and decrypts exactly."""
    value = hidden("0123456789abcdef")
    assert len(value) == 16
    request = decode_request(packet(attr(2, value)), SECRET)
    assert request.password == "0123456789abcdef"


@pytest.mark.parametrize("size", [0, 5, 15, 17, 31, 144, 240])
def test_password_of_bad_length_is_refused(size: int) -> None:
    """User-Password must be 16..128 octets in steps of 16."""
    expect_malformed(packet(attr(2, bytes(range(size)))), "password-length")


def test_password_with_embedded_nul_is_refused() -> None:
    """A password that decrypts to abc NUL def is malformed, never passed on."""
    value = hide_raw(b"abc\x00def".ljust(16, b"\x00"))
    expect_malformed(packet(attr(2, value)), "password-nul")


def test_password_nul_in_second_block_is_refused() -> None:
    """An embedded NUL past the first block is found too."""
    value = hide_raw(b"a" * 20 + b"\x00b".ljust(12, b"\x00"))
    expect_malformed(packet(attr(2, value)), "password-nul")


def test_password_that_is_not_utf8_is_refused() -> None:
    """A password that decrypts to invalid UTF-8 is malformed ("decode")."""
    value = hide_raw(b"\xff\xfepw".ljust(16, b"\x00"))
    expect_malformed(packet(attr(2, value)), "decode")


def test_wrong_secret_never_yields_the_password() -> None:
    """With the wrong secret the password is garbled: refused or decoded to something else."""
    for n in range(50):
        authenticator = bytes([n]) * 16
        data = struct.pack("!BBH", 1, n, 38) + authenticator
        data += attr(2, hidden(PASSWORD, authenticator=authenticator))
        result = outcome(data, b"not-the-secret")
        if isinstance(result, MalformedPacket):
            assert result.cause in {"decode", "password-nul"}
        else:
            assert result.password != PASSWORD


# --- other fields ---------------------------------------------------------------------


def test_fields_are_decoded_from_a_pyrad_client_request() -> None:
    """User-Name, NAS fields, State, Proxy-State order and the flags come out as sent."""
    client = pyrad_packet.AuthPacket(id=IDENT, secret=SECRET, dict=DICTIONARY)
    client.AddAttribute("User-Name", "ålice@example.com")
    client.AddAttribute("User-Password", client.PwCrypt("123456"))
    client.AddAttribute("NAS-Identifier", "vpn-1")
    client.AddAttribute("NAS-IP-Address", "192.0.2.7")
    client[24] = [b"\x00state\xff"]
    client[33] = [b"first", b"0x41"]
    client.add_message_authenticator()
    data = client.RequestPacket()
    request = decode_request(data, SECRET)
    assert request == Request(
        code=ACCESS_REQUEST,
        identifier=IDENT,
        authenticator=client.authenticator,
        raw=data,
        user_name="ålice@example.com",
        password="123456",
        state=b"\x00state\xff",
        has_message_authenticator=True,
        has_chap=False,
        has_eap=False,
        eap_message=b"",
        proxy_states=(b"first", b"0x41"),
        nas_identifier="vpn-1",
        nas_ip="192.0.2.7",
    )


def test_absent_attributes_are_none() -> None:
    """A request with no attributes decodes with every optional field empty."""
    request = decode_request(packet(b""), SECRET)
    assert request.user_name is None
    assert request.password is None
    assert request.state is None
    assert request.nas_identifier is None
    assert request.nas_ip is None
    assert request.proxy_states == ()
    assert not request.has_message_authenticator
    assert not request.has_chap
    assert not request.has_eap


def test_chap_and_eap_are_flagged() -> None:
    """CHAP-Password and EAP-Message are reported so the server can refuse them."""
    body = attr(1, b"alice") + attr(3, bytes(17)) + attr(79, b"\x02\x01\x00\x05\x01")
    request = decode_request(packet(body), SECRET)
    assert request.has_chap
    assert request.has_eap
    assert request.password is None


def test_user_name_that_is_not_utf8_is_refused() -> None:
    """A User-Name that is not UTF-8 is malformed ("decode")."""
    expect_malformed(packet(attr(1, b"al\xffce")), "decode")


def test_nas_ip_of_wrong_length_is_refused() -> None:
    """An exception from pyrad's value decoding becomes MalformedPacket("decode")."""
    expect_malformed(packet(attr(4, b"\xc0\x00\x02")), "decode")


def test_status_server_decodes() -> None:
    """A Status-Server from pyrad's client side decodes with its Message-Authenticator."""
    client = pyrad_packet.AuthPacket(code=STATUS_SERVER, id=IDENT, secret=SECRET, dict=DICTIONARY)
    client.AddAttribute("NAS-Identifier", "probe")
    client.add_message_authenticator()
    request = decode_request(client.RequestPacket(), SECRET)
    assert request.code == STATUS_SERVER
    assert verify_message_authenticator(request, SECRET)


# --- Message-Authenticator --------------------------------------------------------------


def test_message_authenticator_from_pyrad_verifies() -> None:
    """A Message-Authenticator added by pyrad's client verifies with the right secret."""
    _, data = client_request()
    assert verify_message_authenticator(decode_request(data, SECRET), SECRET)


def assert_bad_ma(data: bytes) -> None:
    """decode_request refuses a wrong Message-Authenticator before decrypting anything."""
    with pytest.raises(MalformedPacket) as info:
        decode_request(data, SECRET)
    assert info.value.cause == "bad-message-authenticator"


def test_message_authenticator_with_a_flipped_byte_fails() -> None:
    """Flipping one octet of the Message-Authenticator value makes it fail."""
    _, data = client_request()
    at = data.index(b"\x50\x12") + 2 + 15
    tampered = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
    assert_bad_ma(tampered)


def test_message_authenticator_fails_when_another_byte_changes() -> None:
    """Changing the User-Name after signing makes the Message-Authenticator fail."""
    _, data = client_request()
    tampered = data.replace(b"alice", b"alicf")
    assert_bad_ma(tampered)


def test_message_authenticator_with_wrong_secret_fails() -> None:
    """Signed with another secret, the Message-Authenticator does not verify."""
    _, data = client_request(password=None, secret=b"another-secret")
    assert_bad_ma(data)


def test_message_authenticator_last_verifies() -> None:
    """Position does not matter: a Message-Authenticator as last attribute verifies."""
    data = with_ma_last(attr(1, b"alice") + attr(2, hidden("pw")) + attr(33, b"ps"))
    assert data[-18:-16] == b"\x50\x12"
    request = decode_request(data, SECRET)
    assert request.password == "pw"
    assert verify_message_authenticator(request, SECRET)


def test_message_authenticator_value_elsewhere_is_not_zeroed() -> None:
    """Only the attribute is zeroed: its value repeated in another attribute still counts."""
    unsigned = packet(attr(1, b"alice") + attr(80, bytes(16)) + attr(33, bytes(16)))
    digest = hmac.new(SECRET, unsigned, hashlib.md5).digest()
    echoed = unsigned.replace(attr(80, bytes(16)), attr(80, digest))[:-16] + digest
    assert_bad_ma(echoed)


def test_missing_message_authenticator_is_false() -> None:
    """A request without Message-Authenticator does not verify."""
    _, data = client_request(message_authenticator=False)
    request = decode_request(data, SECRET)
    assert not request.has_message_authenticator
    assert not verify_message_authenticator(request, SECRET)


# --- encode_reply ------------------------------------------------------------------------


def independent_checks(reply: bytes, request: Request, secret: bytes = SECRET) -> None:
    """Length, Response Authenticator and Message-Authenticator recomputed without the codec."""
    assert struct.unpack("!H", reply[2:4])[0] == len(reply) <= 4096
    assert reply[1] == request.identifier
    assert reply[20] == 80
    assert reply[21] == 18
    signed = reply[:4] + request.authenticator + reply[20:] + secret
    expected = hashlib.md5(signed).digest()  # noqa: S324 - RFC 2865 s3 Response Authenticator
    assert reply[4:20] == expected
    signed_over = reply[:4] + request.authenticator + reply[20:22] + bytes(16) + reply[38:]
    assert reply[22:38] == hmac.new(secret, signed_over, hashlib.md5).digest()


@pytest.mark.parametrize(
    ("code", "message", "state"),
    [
        pytest.param(ACCESS_ACCEPT, None, None, id="accept"),
        pytest.param(ACCESS_ACCEPT, "3 days left to set up MFA", None, id="accept-message"),
        pytest.param(ACCESS_REJECT, "account locked: contact your IT admin", None, id="reject"),
        pytest.param(ACCESS_CHALLENGE, "Enter your code", b"\x01" * 32, id="challenge"),
    ],
)
def test_reply_is_signed_and_message_authenticator_first(
    code: int, message: str | None, state: bytes | None
) -> None:
    """Every reply has M-A first, right authenticators, and pyrad's client accepts it."""
    client, data = client_request()
    request = decode_request(data, SECRET)
    reply = encode_reply(request, SECRET, code, reply_message=message, state=state)
    assert reply[0] == code
    independent_checks(reply, request)
    decoded = client.CreateReply(packet=reply)
    assert client.VerifyReply(decoded, reply, enforce_ma=True)
    assert decoded.code == code
    if message is not None:
        assert decoded["Reply-Message"] == [message]
    if state is not None:
        assert decoded[24] == [state]


def test_reply_attribute_order_and_proxy_states() -> None:
    """Order is M-A, Reply-Message, State, then both Proxy-States unchanged and in order."""
    client, data = client_request(proxy_states=(b"second-hop", b"0x4141"))
    request = decode_request(data, SECRET)
    assert request.proxy_states == (b"second-hop", b"0x4141")
    reply = encode_reply(request, SECRET, ACCESS_CHALLENGE, reply_message="Code?", state=b"S")
    independent_checks(reply, request)
    assert [t for t, _ in reply_attributes(reply)] == [80, 18, 24, 33, 33]
    assert [v for t, v in reply_attributes(reply) if t == 33] == [b"second-hop", b"0x4141"]
    assert client.VerifyReply(client.CreateReply(packet=reply), reply, enforce_ma=True)


def test_reply_to_hand_made_request_copies_interleaved_proxy_states() -> None:
    """Proxy-States separated by other attributes are still copied in their order."""
    body = attr(33, b"a") + attr(1, b"alice") + attr(33, b"b") + attr(2, hidden("pw"))
    request = decode_request(with_ma_last(body + attr(33, b"c")), SECRET)
    reply = encode_reply(request, SECRET, ACCESS_REJECT)
    independent_checks(reply, request)
    assert reply_attributes(reply)[1:] == [(33, b"a"), (33, b"b"), (33, b"c")]


@pytest.mark.parametrize("text", ["a" * 600, "é" * 300, "€" * 200 + "x", "k" * 253, "k" * 254])
def test_long_reply_message_is_split_between_characters(text: str) -> None:
    """Over 253 octets the Reply-Message spans attributes, each valid UTF-8, in order."""
    client, data = client_request()
    request = decode_request(data, SECRET)
    reply = encode_reply(request, SECRET, ACCESS_REJECT, reply_message=text)
    independent_checks(reply, request)
    chunks = [v for t, v in reply_attributes(reply) if t == 18]
    assert all(1 <= len(c) <= 253 for c in chunks)
    assert all(len(c) > 250 for c in chunks[:-1]), "chunks are not filled"
    assert "".join(c.decode("utf-8") for c in chunks) == text
    assert client.VerifyReply(client.CreateReply(packet=reply), reply, enforce_ma=True)


def test_empty_reply_message_adds_nothing() -> None:
    """An empty Reply-Message is left out rather than sent with no value."""
    _, data = client_request()
    reply = encode_reply(decode_request(data, SECRET), SECRET, ACCESS_ACCEPT, reply_message="")
    assert [t for t, _ in reply_attributes(reply)] == [80]


def test_status_server_reply() -> None:
    """A Status-Server gets an Access-Accept signed with its authenticator, M-A first."""
    client = pyrad_packet.AuthPacket(code=STATUS_SERVER, id=IDENT, secret=SECRET, dict=DICTIONARY)
    client[33] = [b"hop"]
    client.add_message_authenticator()
    request = decode_request(client.RequestPacket(), SECRET)
    reply = encode_reply(request, SECRET, ACCESS_ACCEPT)
    independent_checks(reply, request)
    assert reply_attributes(reply)[1:] == [(33, b"hop")]
    assert client.VerifyReply(client.CreateReply(packet=reply), reply, enforce_ma=True)


def test_reply_with_wrong_secret_is_refused_by_pyrad_client() -> None:
    """A reply signed with another secret fails pyrad's client-side verification."""
    client, data = client_request()
    reply = encode_reply(decode_request(data, SECRET), b"other-secret", ACCESS_ACCEPT)
    assert not client.VerifyReply(client.CreateReply(packet=reply), reply)


@pytest.mark.parametrize(
    ("request_code", "code", "state"),
    [
        pytest.param(STATUS_SERVER, ACCESS_REJECT, None, id="status-server-reject"),
        pytest.param(STATUS_SERVER, ACCESS_CHALLENGE, None, id="status-server-challenge"),
        pytest.param(ACCESS_REQUEST, 5, None, id="accounting-response"),
        pytest.param(ACCESS_REQUEST, ACCESS_ACCEPT, b"s", id="state-in-accept"),
        pytest.param(ACCESS_REQUEST, ACCESS_REJECT, b"s", id="state-in-reject"),
        pytest.param(ACCESS_REQUEST, ACCESS_CHALLENGE, b"", id="empty-state"),
        pytest.param(ACCESS_REQUEST, ACCESS_CHALLENGE, bytes(254), id="state-too-long"),
    ],
)
def test_reply_that_cannot_answer_is_a_value_error(
    request_code: int, code: int, state: bytes | None
) -> None:
    """Wrong reply codes and misplaced or oversized State are programming errors."""
    request = decode_request(packet(b"", code=request_code), SECRET)
    with pytest.raises(ValueError, match=r"State|code"):
        encode_reply(request, SECRET, code, state=state)


def test_more_proxy_state_than_a_reply_has_room_for_is_malformed() -> None:
    """Over 1,024 octets of Proxy-State (its copy would crowd the reply): dropped as such."""
    with pytest.raises(MalformedPacket) as raised:
        decode_request(with_ma_last(attr(33, bytes(253)) * 5), SECRET)
    assert raised.value.cause == "too-much-proxy-state"
    request = decode_request(with_ma_last(attr(33, bytes(253)) * 4), SECRET)
    assert len(request.proxy_states) == 4


def test_a_reply_that_would_pass_4096_octets_goes_out_without_its_message() -> None:
    """The most Proxy-State allowed and an overlong notice: the accept is sent, the text not."""
    request = decode_request(with_ma_last(attr(33, bytes(253)) * 4), SECRET)
    reply = encode_reply(request, SECRET, ACCESS_ACCEPT, reply_message="x" * 3500)
    assert len(reply) <= 4096 and reply[0] == ACCESS_ACCEPT
    types, offset = [], 20
    while offset < len(reply):
        types.append(reply[offset])
        offset += reply[offset + 1]
    assert types == [80, 33, 33, 33, 33]  # Message-Authenticator, the Proxy-States: no text
    short = encode_reply(request, SECRET, ACCESS_ACCEPT, reply_message="14 days left")
    assert b"14 days left" in short


# --- property: nothing but MalformedPacket escapes --------------------------------------


def decode_or_malformed(data: bytes) -> None:
    """decode_request returns a Request or raises MalformedPacket with a documented cause."""
    result = outcome(data)
    if isinstance(result, MalformedPacket):
        assert result.cause in MALFORMED_CAUSES
    else:
        assert result.raw == data[: len(result.raw)]
        verify_message_authenticator(result, SECRET)


_, VALID = client_request(proxy_states=(b"hop",), NAS_Identifier="nas", NAS_IP_Address="10.0.0.1")

framed = st.builds(
    lambda code, body: packet(body, code=code),
    st.sampled_from([ACCESS_REQUEST, STATUS_SERVER]),
    st.binary(max_size=300),
)
attribute_lists = st.lists(
    st.tuples(
        st.sampled_from([1, 2, 3, 4, 24, 26, 32, 33, 79, 80, 250]),
        st.binary(max_size=40),
    ),
    max_size=12,
).map(lambda attrs: packet(b"".join(attr(t, v) for t, v in attrs)))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """The valid packet with a few octets overwritten, inserted, removed, or cut."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        if action == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        elif action == "cut":
            del data[at:]
    return bytes(data)


@settings(
    max_examples=2000,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.one_of(
        st.binary(max_size=4200),
        st.binary(min_size=20, max_size=4200),
        framed,
        attribute_lists,
        mutated(),
    )
)
def test_any_bytes_decode_or_raise_malformed(data: bytes) -> None:
    """For any input of 0..4200 octets decode_request returns or raises MalformedPacket only."""
    decode_or_malformed(data)


def test_eap_messages_are_joined_and_split_and_mppe_keys_encrypted_for_the_nas() -> None:
    """A request's EAP-Message attributes are joined in order; the reply's EAP packet is
    split into 253-octet attributes after State, and the MS-MPPE keys open with pyrad."""
    eap = bytes(range(256)) * 2 + b"tail"
    body = attr(1, b"anonymous") + attr(79, eap[:253]) + attr(79, eap[253:506])
    request = decode_request(with_ma_last(body + attr(79, eap[506:])), SECRET)
    assert request.has_eap and request.eap_message == eap
    recv, send = os.urandom(32), os.urandom(32)
    reply = encode_reply(request, SECRET, ACCESS_ACCEPT, eap_message=eap, mppe_keys=(recv, send))
    independent_checks(reply, request)
    attributes = reply_attributes(reply)
    assert [t for t, _ in attributes] == [80, 79, 79, 79, 26, 26]
    assert [len(v) for t, v in attributes if t == 79] == [253, 253, len(eap) - 506]
    assert b"".join(v for t, v in attributes if t == 79) == eap
    opener = pyrad_packet.Packet(
        secret=SECRET, authenticator=request.authenticator, dict=Dictionary()
    )
    vsas = {v[4]: v[6:] for t, v in attributes if t == 26 and v[:4] == b"\x00\x00\x01\x37"}
    assert opener.SaltDecrypt(vsas[17]) == recv  # MS-MPPE-Recv-Key
    assert opener.SaltDecrypt(vsas[16]) == send  # MS-MPPE-Send-Key
    assert vsas[16][:2] != vsas[17][:2]  # a salt of its own each


def test_same_random_salts_are_still_made_distinct() -> None:
    """Even a random source that repeats itself gives the two keys different salts."""
    request = decode_request(with_ma_last(attr(1, b"a") + attr(79, b"\x02\x01\x00\x04")), SECRET)
    reply = encode_reply(
        request,
        SECRET,
        ACCESS_ACCEPT,
        eap_message=b"\x03\x01\x00\x04",
        mppe_keys=(b"r" * 32, b"s" * 32),
        random_bytes=lambda n: b"\x12" * n,
    )
    salts = [v[6:8] for t, v in reply_attributes(reply) if t == 26]
    assert len(set(salts)) == 2 and all(s[0] & 0x80 for s in salts)
