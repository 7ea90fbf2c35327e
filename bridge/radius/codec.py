"""RADIUS wire format for the auth port: strict request decoding and reply encoding.

Pure: bytes in, bytes out; no sockets, no clock, no Twisted. The server needs a handful
of attributes, so they are read and written here directly, after an exact check of the
header and the attribute walk (pyrad is lenient about framing: it reads past the end of a
truncated attribute), without building pyrad's per-packet objects: that cost three times
the rest of the decoding (see docs/ldap-path.md). pyrad supplies the dictionary, and the
tests check every reply with pyrad as an independent implementation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Final

from pyrad.dictionary import Dictionary

from bridge.eap import mppe
from bridge.eap.packets import split_message

__all__ = [
    "ACCESS_ACCEPT",
    "ACCESS_CHALLENGE",
    "ACCESS_REJECT",
    "ACCESS_REQUEST",
    "DICTIONARY",
    "MALFORMED_CAUSES",
    "STATUS_SERVER",
    "MalformedPacket",
    "Request",
    "decode_request",
    "encode_reply",
    "peek_header",
    "verify_message_authenticator",
]

ACCESS_REQUEST: Final = 1
ACCESS_ACCEPT: Final = 2
ACCESS_REJECT: Final = 3
ACCESS_CHALLENGE: Final = 11
STATUS_SERVER: Final = 12

HEADER_LENGTH: Final = 20
MAX_PACKET_LENGTH: Final = 4096  # RFC 2865 s3
# Proxy-State is copied into the reply (RFC 2865 s5.33), so a request may carry only as
# much as leaves room for the reply's own attributes: a client must not be able to push
# a reply past 4096 octets and so turn an accept into an error. A proxy adds one small
# Proxy-State per hop; 1,024 octets is many hops.
MAX_PROXY_STATE_OCTETS: Final = 1024
MAX_ATTRIBUTES: Final = 200  # FreeRADIUS security.max_attributes
MAX_VALUE_LENGTH: Final = 253  # 255 minus the type and length octets

_USER_NAME: Final = 1
_USER_PASSWORD: Final = 2
_CHAP_PASSWORD: Final = 3
_STATE: Final = 24
_PROXY_STATE: Final = 33
_EAP_MESSAGE: Final = 79
_MESSAGE_AUTHENTICATOR: Final = 80
_NAS_IP_ADDRESS: Final = 4
_REPLY_MESSAGE: Final = 18
_NAS_IDENTIFIER: Final = 32
_CALLING_STATION_ID: Final = 31
_ZERO16: Final = bytes(16)
_MA_PLACEHOLDER: Final = bytes((_MESSAGE_AUTHENTICATOR, 18)) + _ZERO16
_HEADER: Final = struct.Struct("!BBH")
_AT_MOST_ONCE: Final = frozenset({_USER_NAME, _USER_PASSWORD, _STATE, _MESSAGE_AUTHENTICATOR})

_REPLY_CODES: Final = {
    ACCESS_REQUEST: frozenset({ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE}),
    STATUS_SERVER: frozenset({ACCESS_ACCEPT}),  # RFC 5997 s3, on the auth port
}

MALFORMED_CAUSES: Final = frozenset(
    {
        "short",  # fewer than 20 octets received
        "length",  # Length field below 20 or above 4096
        "truncated",  # fewer octets received than the Length field says
        "bad-code",  # not Access-Request or Status-Server
        "attribute-length",  # an attribute length below 2 or past the end of the packet
        "attribute-type",  # attribute type 0
        "too-many-attributes",  # more than MAX_ATTRIBUTES
        "duplicate-attribute",  # User-Name, User-Password, State or M-A more than once
        "ma-length",  # Message-Authenticator value not 16 octets
        "too-much-proxy-state",  # Proxy-State attributes over MAX_PROXY_STATE_OCTETS
        "password-length",  # User-Password not 16..128 octets in steps of 16
        "password-nul",  # decrypted password holds a NUL before its padding
        "decode",  # a value that does not decode (bad UTF-8, a value pyrad refuses)
        "bad-message-authenticator",  # present but wrong: forged, or a wrong shared secret
    }
)


class MalformedPacket(Exception):  # noqa: N818 - named for what it reports, as the protocol expects
    """A datagram that is not a well-formed request: drop it and count it under `cause`."""

    cause: str

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause = cause


def _load_dictionary() -> Dictionary:
    """The attribute dictionary shipped next to this module."""
    source = resources.files("bridge.radius").joinpath("dictionary")
    with source.open("r", encoding="utf-8") as lines:
        return Dictionary(lines)


DICTIONARY: Final[Dictionary] = _load_dictionary()


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded Access-Request or Status-Server, with what the server acts on."""

    code: int
    identifier: int
    authenticator: bytes
    raw: bytes  # exactly Length octets, trailing padding removed
    user_name: str | None
    password: str | None  # decrypted, NUL padding stripped
    state: bytes | None
    has_message_authenticator: bool
    has_chap: bool
    has_eap: bool
    eap_message: bytes  # the EAP-Message attributes' values joined in order (RFC 3579 3.1)
    proxy_states: tuple[bytes, ...]  # in the order received
    nas_identifier: str | None
    nas_ip: str | None
    calling_station_id: str | None = None  # the device (a MAC address, a phone's IP)


def peek_header(data: bytes) -> tuple[int, int, bytes]:
    """(code, identifier, request authenticator) after the length checks of RFC 2865 s3.

    Attributes are not looked at, so this is safe on datagrams from unknown sources.
    Octets beyond the Length field are padding and are ignored.
    """
    if len(data) < HEADER_LENGTH:
        raise MalformedPacket("short", f"{len(data)} octets")
    code, identifier, length = struct.unpack_from("!BBH", data)
    if not HEADER_LENGTH <= length <= MAX_PACKET_LENGTH:
        raise MalformedPacket("length", f"Length field {length}")
    if len(data) < length:
        raise MalformedPacket("truncated", f"Length field {length}, {len(data)} octets received")
    return code, identifier, bytes(data[4:HEADER_LENGTH])


def _walk_attributes(raw: bytes) -> list[tuple[int, int, bytes]]:
    """(type, offset, value) of each attribute; they must tile raw[20:] exactly (RFC 2865 s5)."""
    attributes: list[tuple[int, int, bytes]] = []
    offset, end = HEADER_LENGTH, len(raw)
    while offset < end:
        if len(attributes) == MAX_ATTRIBUTES:
            raise MalformedPacket("too-many-attributes", f"more than {MAX_ATTRIBUTES}")
        if end - offset < 2:
            raise MalformedPacket("attribute-length", f"lone octet at {offset}")
        attr_type, attr_length = raw[offset], raw[offset + 1]
        if attr_length < 2 or offset + attr_length > end:
            raise MalformedPacket("attribute-length", f"length {attr_length} at {offset}")
        if attr_type == 0:
            raise MalformedPacket("attribute-type", f"type 0 at {offset}")
        attributes.append((attr_type, offset, raw[offset + 2 : offset + attr_length]))
        offset += attr_length
    return attributes


def _decrypt_password(hidden: bytes, secret: bytes, authenticator: bytes) -> str:
    """Undo the User-Password hiding of RFC 2865 s5.2, strictly."""
    if not 16 <= len(hidden) <= 128 or len(hidden) % 16:
        raise MalformedPacket("password-length", f"{len(hidden)} octets")
    plain = bytearray()
    previous = authenticator
    for start in range(0, len(hidden), 16):
        block = hidden[start : start + 16]
        pad = hashlib.md5(secret + previous).digest()  # noqa: S324 - RFC 2865 mandates MD5
        mixed = int.from_bytes(block, "big") ^ int.from_bytes(pad, "big")
        plain += mixed.to_bytes(16, "big")
        previous = block
    password = bytes(plain).rstrip(b"\x00")
    if b"\x00" in password:
        raise MalformedPacket("password-nul")
    try:
        return password.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPacket("decode", "User-Password is not UTF-8") from exc


def _text(value: bytes | None, name: str) -> str | None:
    """A text attribute as UTF-8 (RFC 2865 s5), or MalformedPacket."""
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPacket("decode", f"{name} is not UTF-8") from exc


def decode_request(data: bytes, secret: bytes) -> Request:
    """Strictly validate and decode a request; raises MalformedPacket and nothing else.

    A Message-Authenticator, when present, is verified before the password is decrypted
    (cause "bad-message-authenticator"), so a wrong shared secret is reported as such
    rather than as a garbled password. Whether one is *required* is the caller's policy.
    """
    code, identifier, authenticator = peek_header(data)
    if code not in _REPLY_CODES:
        raise MalformedPacket("bad-code", f"code {code}")
    length = struct.unpack_from("!H", data, 2)[0]
    raw = bytes(data[:length])

    once: dict[int, bytes] = {}
    proxy_states: list[bytes] = []
    eap_parts: list[bytes] = []
    first: dict[int, bytes] = {}  # the first value of every other attribute
    ma_offset = -1
    for attr_type, offset, value in _walk_attributes(raw):
        if attr_type in _AT_MOST_ONCE:
            if attr_type in once:
                raise MalformedPacket("duplicate-attribute", f"type {attr_type}")
            once[attr_type] = value
            if attr_type == _MESSAGE_AUTHENTICATOR:
                ma_offset = offset
        elif attr_type == _PROXY_STATE:
            proxy_states.append(value)
        elif attr_type == _EAP_MESSAGE:
            eap_parts.append(value)
        else:
            first.setdefault(attr_type, value)

    carried = sum(len(value) + 2 for value in proxy_states)
    if carried > MAX_PROXY_STATE_OCTETS:
        raise MalformedPacket("too-much-proxy-state", f"{carried} octets")
    message_authenticator = once.get(_MESSAGE_AUTHENTICATOR)
    if message_authenticator is not None and len(message_authenticator) != 16:
        raise MalformedPacket("ma-length", f"{len(message_authenticator)} octets")

    user_name = _text(once.get(_USER_NAME), "User-Name")
    nas_identifier = _text(first.get(_NAS_IDENTIFIER), "NAS-Identifier")
    nas_ip_value = first.get(_NAS_IP_ADDRESS)
    if nas_ip_value is not None and len(nas_ip_value) != 4:
        raise MalformedPacket("decode", "NAS-IP-Address is not 4 octets")
    nas_ip = socket.inet_ntoa(nas_ip_value) if nas_ip_value is not None else None

    if message_authenticator is not None and not _ma_matches(
        raw, ma_offset, message_authenticator, secret
    ):
        raise MalformedPacket("bad-message-authenticator")

    hidden = once.get(_USER_PASSWORD)
    password = None if hidden is None else _decrypt_password(hidden, secret, authenticator)

    return Request(
        code=code,
        identifier=identifier,
        authenticator=authenticator,
        raw=raw,
        user_name=user_name,
        password=password,
        state=once.get(_STATE),
        has_message_authenticator=message_authenticator is not None,
        has_chap=_CHAP_PASSWORD in first,
        has_eap=bool(eap_parts),
        eap_message=b"".join(eap_parts),
        proxy_states=tuple(proxy_states),
        nas_identifier=nas_identifier,
        nas_ip=nas_ip,
        calling_station_id=_text(first.get(_CALLING_STATION_ID), "Calling-Station-Id"),
    )


def verify_message_authenticator(request: Request, secret: bytes) -> bool:
    """Check the Message-Authenticator over the raw bytes (RFC 3579 s3.2); False if absent."""
    return request.has_message_authenticator and _message_authenticator_valid(request.raw, secret)


def _message_authenticator_valid(raw: bytes, secret: bytes) -> bool:
    """HMAC-MD5 keyed with the secret over the packet as received with the attribute's value
    zeroed, compared in constant time. Its position in the packet does not matter.
    """
    try:
        attributes = _walk_attributes(raw)
    except MalformedPacket:  # only a hand-built Request can get here
        return False
    for attr_type, offset, value in attributes:
        if attr_type == _MESSAGE_AUTHENTICATOR:
            return _ma_matches(raw, offset, value, secret)
    return False


def _ma_matches(raw: bytes, offset: int, value: bytes, secret: bytes) -> bool:
    start = offset + 2
    zeroed = raw[:start] + _ZERO16 + raw[start + 16 :]
    return hmac.compare_digest(hmac.digest(secret, zeroed, "md5"), value)


def _split_text(text: str) -> list[bytes]:
    """UTF-8 chunks of at most 253 octets, cut only between characters."""
    encoded = text.encode("utf-8")
    chunks: list[bytes] = []
    start = 0
    while start < len(encoded):
        end = min(start + MAX_VALUE_LENGTH, len(encoded))
        while end < len(encoded) and encoded[end] & 0xC0 == 0x80:  # continuation octet
            end -= 1
        chunks.append(encoded[start:end])
        start = end
    return chunks


def encode_reply(
    request: Request,
    secret: bytes,
    code: int,
    *,
    reply_message: str | None = None,
    state: bytes | None = None,
    eap_message: bytes | None = None,
    mppe_keys: tuple[bytes, bytes] | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
    attributes: bytes = b"",
) -> bytes:
    """The reply datagram: Message-Authenticator first, then Reply-Message, State, Proxy-State.

    `eap_message` goes out split over EAP-Message attributes (RFC 3579 3.1), and
    `mppe_keys` (receive, send) as MS-MPPE-Recv-Key and MS-MPPE-Send-Key, encrypted with
    the secret and the request authenticator under fresh salts (RFC 2548 2.4).
    `attributes` are encoded ones added as they are (the reply rules of SPEC 11).

    A long Reply-Message is split over several attributes, and left out if it would take
    the reply past 4096 octets; the request's Proxy-State attributes are copied
    unchanged and in order. The Message-Authenticator is computed
    with the request authenticator, then the Response Authenticator over the final bytes.
    Raises ValueError for a code that does not answer this request (Status-Server gets
    Access-Accept only), a State outside a challenge or not 1..253 octets, or a reply over
    4096 octets.
    """
    if code not in _REPLY_CODES.get(request.code, frozenset()):
        raise ValueError(f"code {code} does not answer a request of code {request.code}")
    if state is not None and code != ACCESS_CHALLENGE:
        raise ValueError("State belongs in an Access-Challenge only")
    if state is not None and not 1 <= len(state) <= MAX_VALUE_LENGTH:
        raise ValueError(f"State must be 1..{MAX_VALUE_LENGTH} octets, not {len(state)}")

    out = bytearray(_MA_PLACEHOLDER)
    message = b"".join(
        bytes((_REPLY_MESSAGE, len(chunk) + 2)) + chunk
        for chunk in _split_text(reply_message or "")
    )
    after = b"" if state is None else bytes((_STATE, len(state) + 2)) + state
    after += attributes
    if eap_message is not None:
        after += b"".join(
            bytes((_EAP_MESSAGE, len(chunk) + 2)) + chunk for chunk in split_message(eap_message)
        )
    if mppe_keys is not None:
        after += _mppe_attributes(mppe_keys, secret, request.authenticator, random_bytes)
    carried = sum(len(p) + 2 for p in request.proxy_states)
    fixed = HEADER_LENGTH + len(out) + carried + len(after)
    if fixed + len(message) <= MAX_PACKET_LENGTH:  # else the decision goes out without it
        out += message
    out += after
    for proxy_state in request.proxy_states:
        out += bytes((_PROXY_STATE, len(proxy_state) + 2)) + proxy_state
    header = _HEADER.pack(code, request.identifier, HEADER_LENGTH + len(out))
    signed = header + request.authenticator + out
    out[2:18] = hmac.digest(secret, signed, "md5")  # RFC 3579 s3.2, request auth.
    response = hashlib.md5(  # noqa: S324 - RFC 2865 s3 mandates MD5
        header + request.authenticator + out + secret
    ).digest()
    data = header + response + bytes(out)
    if len(data) > MAX_PACKET_LENGTH:
        raise ValueError(f"reply of {len(data)} octets exceeds {MAX_PACKET_LENGTH}")
    return data


def _mppe_attributes(
    keys: tuple[bytes, bytes],
    secret: bytes,
    authenticator: bytes,
    random_bytes: Callable[[int], bytes],
) -> bytes:
    """MS-MPPE-Recv-Key and MS-MPPE-Send-Key, each under a salt of its own."""
    recv, send = keys
    recv_salt = mppe.new_salt(random_bytes)
    send_salt = mppe.new_salt(random_bytes)
    if send_salt == recv_salt:  # unique within the packet (RFC 2548 2.4.2)
        send_salt = bytes((send_salt[0], send_salt[1] ^ 1))
    return mppe.vendor_attribute(
        mppe.MS_MPPE_RECV_KEY, mppe.encrypt_key(recv, secret, authenticator, recv_salt)
    ) + mppe.vendor_attribute(
        mppe.MS_MPPE_SEND_KEY, mppe.encrypt_key(send, secret, authenticator, send_salt)
    )
