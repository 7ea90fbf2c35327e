"""The few LDAP messages on the proxy's hot path, read and written without ldaptor.

Every login through the proxy is a BindRequest in, a BindRequest out, a BindResponse
back and a BindResponse out. ldaptor's general BER codec builds an object tree for each
(a quarter of the proxy's CPU per bind when it was measured); these four are fixed,
small shapes (RFC 4511 section 4.2), so they are read and written here directly. A
request this reader does not recognise exactly (controls, SASL, odd encodings) is
not refused here: it returns None and the caller decodes it with ldaptor as before.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQUENCE = 0x30
INTEGER = 0x02
OCTET_STRING = 0x04
ENUMERATED = 0x0A
BIND_REQUEST = 0x60  # [APPLICATION 0], constructed
BIND_RESPONSE = 0x61  # [APPLICATION 1], constructed
UNBIND_REQUEST = 0x42  # [APPLICATION 2], primitive
SIMPLE = 0x80  # [0] OCTET STRING, the simple authentication choice
MAX_MESSAGE_ID = 2**31 - 1


@dataclass(frozen=True, slots=True)
class BindRequest:
    """A client's BindRequest, as the proxy decides it (names and passwords as sent)."""

    message_id: int
    version: int
    dn: bytes
    password: bytes | None  # None: not a simple bind (SASL)
    critical_control: bool = False  # a control the proxy would have to understand


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes((size,))
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + _length(len(value)) + value


def _integer(tag: int, value: int) -> bytes:
    """A non-negative INTEGER or ENUMERATED, in the fewest octets (a leading 0 keeps it
    positive when the top bit is set)."""
    return _tlv(tag, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _message(message_id: int, op: bytes) -> bytes:
    return _tlv(SEQUENCE, _integer(INTEGER, message_id) + op)


def bind_request(message_id: int, dn: str, password: str) -> bytes:
    """An LDAPv3 simple BindRequest."""
    body = _integer(INTEGER, 3) + _tlv(OCTET_STRING, dn.encode()) + _tlv(SIMPLE, password.encode())
    return _message(message_id, _tlv(BIND_REQUEST, body))


def bind_response(message_id: int, code: int, message: str = "") -> bytes:
    """A BindResponse with an empty matchedDN."""
    body = (
        _integer(ENUMERATED, code) + _tlv(OCTET_STRING, b"") + _tlv(OCTET_STRING, message.encode())
    )
    return _message(message_id, _tlv(BIND_RESPONSE, body))


def unbind_request(message_id: int) -> bytes:
    """An UnbindRequest (no response comes)."""
    return _message(message_id, bytes((UNBIND_REQUEST, 0)))


class _Reader:
    """Definite-length TLVs in `data[start:end]`; None from `next` on anything else."""

    __slots__ = ("_data", "_end", "offset")

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self._data, self.offset, self._end = data, start, end

    def next(self) -> tuple[int, int, int] | None:
        """(tag, start, end) of the next element; the reader moves past it."""
        data, at, end = self._data, self.offset, self._end
        if at + 2 > end:
            return None
        tag, first = data[at], data[at + 1]
        at += 2
        if first >= 0x80:
            octets = first & 0x7F
            if octets == 0 or octets > 4 or at + octets > end:
                return None
            size = int.from_bytes(data[at : at + octets], "big")
            at += octets
        else:
            size = first
        if at + size > end:
            return None
        self.offset = at + size
        return tag, at, at + size

    @property
    def done(self) -> bool:
        return self.offset == self._end

    def integer(self, tag: int) -> int | None:
        """A non-negative INTEGER (or ENUMERATED) of at most 4 octets and 31 bits."""
        item = self.next()
        if item is None or item[0] != tag or not 0 < item[2] - item[1] <= 5:
            return None
        value = int.from_bytes(self._data[item[1] : item[2]], "big", signed=True)
        return value if 0 <= value <= MAX_MESSAGE_ID else None


def _envelope(pdu: bytes) -> tuple[int, _Reader] | None:
    """The message ID of a whole LDAPMessage PDU and a reader at its protocolOp."""
    outer = _Reader(pdu, 0, len(pdu)).next()
    if outer is None or outer[0] != SEQUENCE or outer[2] != len(pdu):
        return None
    reader = _Reader(pdu, outer[1], outer[2])
    message_id = reader.integer(INTEGER)
    return None if message_id is None else (message_id, reader)


def message_id(pdu: bytes) -> int | None:
    """The message ID of a whole PDU; None when it is not an LDAPMessage."""
    envelope = _envelope(pdu)
    return envelope[0] if envelope is not None else None


def parse_bind_request(pdu: bytes) -> BindRequest | None:
    """A BindRequest without controls, read directly; None for anything else."""
    envelope = _envelope(pdu)
    if envelope is None:
        return None
    msg_id, reader = envelope
    op = reader.next()
    if op is None or op[0] != BIND_REQUEST or not reader.done or msg_id == 0:
        return None
    fields = _Reader(pdu, op[1], op[2])
    version = fields.integer(INTEGER)
    name = fields.next()
    auth = fields.next()
    if version is None or name is None or name[0] != OCTET_STRING or auth is None:
        return None
    if not fields.done or auth[0] != SIMPLE:
        return None
    return BindRequest(msg_id, version, pdu[name[1] : name[2]], pdu[auth[1] : auth[2]])


def result_code(pdu: bytes) -> tuple[int, int] | None:
    """(message ID, resultCode) of a response that starts with an LDAPResult
    (BindResponse, ExtendedResponse, ...); None when the PDU is not one."""
    envelope = _envelope(pdu)
    if envelope is None:
        return None
    msg_id, reader = envelope
    op = reader.next()
    if op is None or op[0] & 0xE0 != 0x60:  # APPLICATION, constructed
        return None
    code = _Reader(pdu, op[1], op[2]).integer(ENUMERATED)
    return None if code is None else (msg_id, code)
