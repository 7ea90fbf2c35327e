"""EAP packets (RFC 3748) as RADIUS carries them (RFC 3579), and the fragments of the
TLS-based methods (EAP-TTLS, RFC 5281; PEAP): pure, no I/O.

An EAP packet may be longer than one RADIUS attribute: it travels split over several
EAP-Message attributes, joined again in order. A TLS record flight may be longer than
one EAP packet: the TLS-based methods cut it into fragments with L (length included),
M (more to come) and S (start) flags, each acknowledged by an empty one. Every length
here is checked before it is trusted; anything inconsistent is an `EapError` that ends
that conversation only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

ATTRIBUTE_CHUNK = 253  # the value of one EAP-Message attribute, at most
MAX_TLS_MESSAGE = 64 * 1024  # a TLS flight we reassemble, at most (certificates included)


class EapError(ValueError):
    """A malformed or inconsistent EAP packet or fragment."""


class Code(IntEnum):
    """The EAP packet codes."""

    REQUEST = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


class Type(IntEnum):
    """The EAP method types the bridge names (others are refused by number)."""

    IDENTITY = 1
    NOTIFICATION = 2
    NAK = 3
    MD5_CHALLENGE = 4
    GTC = 6
    TLS = 13
    TTLS = 21
    PEAP = 25
    MSCHAPV2 = 26
    EXPANDED = 254


@dataclass(frozen=True, slots=True)
class EapPacket:
    """One EAP packet: Success and Failure have no type and no data."""

    code: Code
    identifier: int
    type: int | None = None
    data: bytes = b""

    def to_bytes(self) -> bytes:
        """The packet on the wire."""
        if self.type is None:
            return struct.pack("!BBH", self.code, self.identifier, 4)
        body = bytes((self.type,)) + self.data
        return struct.pack("!BBH", self.code, self.identifier, 4 + len(body)) + body


def parse(raw: bytes) -> EapPacket:
    """An EAP packet from its bytes (the EAP-Message attributes joined)."""
    if len(raw) < 4:
        raise EapError(f"EAP packet of {len(raw)} octets")
    code, identifier, length = struct.unpack("!BBH", raw[:4])
    if length != len(raw):
        raise EapError(f"EAP length field {length}, {len(raw)} octets received")
    try:
        kind = Code(code)
    except ValueError:
        raise EapError(f"EAP code {code}") from None
    if kind in (Code.SUCCESS, Code.FAILURE):
        if length != 4:
            raise EapError(f"EAP {kind.name} with data")
        return EapPacket(kind, identifier)
    if length < 5:
        raise EapError(f"EAP {kind.name} without a type")
    return EapPacket(kind, identifier, raw[4], bytes(raw[5:]))


def split_message(raw: bytes) -> list[bytes]:
    """An EAP packet as the values of consecutive EAP-Message attributes."""
    return [raw[i : i + ATTRIBUTE_CHUNK] for i in range(0, len(raw), ATTRIBUTE_CHUNK)] or [b""]


def method_name(number: int) -> str:
    """An EAP method's name for log lines ("MD5_CHALLENGE", or its number)."""
    try:
        return Type(number).name
    except ValueError:
        return str(number)


def nak(identifier: int, offered: tuple[int, ...]) -> EapPacket:
    """A legacy Nak naming the methods offered instead (RFC 3748 section 5.3.1)."""
    return EapPacket(Code.RESPONSE, identifier, Type.NAK, bytes(offered))


# --- the TLS-based methods' fragments (RFC 5281 section 9.2, PEAPv0) ---------------------

LENGTH_INCLUDED = 0x80
MORE_FRAGMENTS = 0x40
START = 0x20
VERSION_MASK = 0x07


@dataclass(frozen=True, slots=True)
class TlsFragment:
    """The data of an EAP-TTLS or PEAP packet: flags, version, TLS bytes."""

    flags: int
    version: int
    data: bytes
    total_length: int | None = None  # with the L flag: the whole message's length

    @property
    def more(self) -> bool:
        """More fragments of this message follow."""
        return bool(self.flags & MORE_FRAGMENTS)

    @property
    def start(self) -> bool:
        """The server's first packet of the method (no TLS data)."""
        return bool(self.flags & START)

    def to_bytes(self) -> bytes:
        """The method data of the EAP packet (what follows its type)."""
        flags = (self.flags & ~VERSION_MASK) | (self.version & VERSION_MASK)
        if self.total_length is not None:
            flags |= LENGTH_INCLUDED
            return struct.pack("!BI", flags, self.total_length) + self.data
        return bytes((flags & ~LENGTH_INCLUDED,)) + self.data


def parse_fragment(data: bytes) -> TlsFragment:
    """The flags, version and TLS bytes of an EAP-TTLS or PEAP packet's data."""
    if not data:
        raise EapError("TLS method data without flags")
    flags = data[0]
    if flags & LENGTH_INCLUDED:
        if len(data) < 5:
            raise EapError("TLS message length flag without the length")
        (total,) = struct.unpack("!I", data[1:5])
        if total > MAX_TLS_MESSAGE:
            raise EapError(f"TLS message of {total} octets announced")
        return TlsFragment(flags, flags & VERSION_MASK, bytes(data[5:]), total)
    return TlsFragment(flags, flags & VERSION_MASK, bytes(data[1:]))


class Reassembly:
    """A peer's TLS message arriving in fragments: kept until the last one, bounded."""

    def __init__(self, limit: int = MAX_TLS_MESSAGE) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._announced: int | None = None

    @property
    def pending(self) -> bool:
        """A message has started and is not complete yet."""
        return bool(self._parts)

    def add(self, fragment: TlsFragment) -> bytes | None:
        """The whole message once its last fragment came; None while more are due."""
        if not self._parts and fragment.total_length is not None:
            self._announced = fragment.total_length
        self._size += len(fragment.data)
        if self._size > min(self._limit, self._announced or self._limit):
            raise EapError(f"TLS message grew past {self._announced or self._limit} octets")
        self._parts.append(fragment.data)
        if fragment.more:
            return None
        message = b"".join(self._parts)
        if self._announced is not None and len(message) != self._announced:
            raise EapError(f"TLS message of {len(message)} octets, {self._announced} announced")
        self._parts, self._size, self._announced = [], 0, None
        return message


def fragments(message: bytes, version: int, size: int) -> list[TlsFragment]:
    """`message` cut for EAP packets whose method data holds at most `size` octets.

    A message that fits goes whole, without L; otherwise every fragment but the last has
    M, and the first has L with the whole length (as RFC 5281 and hostapd do).
    """
    if size < 16:
        raise ValueError("fragment size too small")
    if len(message) + 1 <= size:
        return [TlsFragment(0, version, message)]
    first = size - 5
    pieces = [message[:first]]
    pieces += [message[i : i + size - 1] for i in range(first, len(message), size - 1)]
    out = []
    for index, piece in enumerate(pieces):
        more = MORE_FRAGMENTS if index < len(pieces) - 1 else 0
        total = len(message) if index == 0 else None
        out.append(TlsFragment(more, version, piece, total))
    return out
