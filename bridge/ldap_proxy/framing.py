"""Cut a byte stream into LDAP PDUs by their BER header alone, with a size limit.

Only the outer envelope is read here (an LDAPMessage is a SEQUENCE with a definite
length); decoding what is inside is ldaptor's job. Both directions use this: the client
side to refuse oversize or malformed requests before buffering them, the upstream side
to relay whole responses without decoding them.
"""

from __future__ import annotations

SEQUENCE = 0x30
MAX_LENGTH_OCTETS = 4  # 4 GiB is more than any PDU we accept or relay


class FramingError(Exception):
    """The stream does not start with an acceptable LDAPMessage header."""


def pdu_size(buffer: bytes | bytearray, offset: int = 0, limit: int | None = None) -> int | None:
    """Total size of the PDU at `offset` (header included); None until the header is in.

    Raises FramingError for anything but a definite-length SEQUENCE, and for a PDU
    longer than `limit`: the caller closes the connection rather than buffer it.
    """
    available = len(buffer) - offset
    if available < 1:
        return None
    if buffer[offset] != SEQUENCE:
        raise FramingError(f"expected a SEQUENCE, got tag 0x{buffer[offset]:02x}")
    if available < 2:
        return None
    first = buffer[offset + 1]
    if first < 0x80:
        size = 2 + first
    else:
        octets = first & 0x7F
        if octets == 0:
            raise FramingError("indefinite length")
        if octets > MAX_LENGTH_OCTETS:
            raise FramingError(f"length in {octets} octets")
        if available < 2 + octets:
            return None
        length = int.from_bytes(buffer[offset + 2 : offset + 2 + octets], "big")
        size = 2 + octets + length
    if limit is not None and size > limit:
        raise FramingError(f"PDU of {size} bytes exceeds the limit of {limit}")
    return size


def complete_prefix(buffer: bytes | bytearray, limit: int | None = None) -> int:
    """How many leading bytes of `buffer` are whole PDUs (0 if not even one)."""
    end = 0
    while (size := pdu_size(buffer, end, limit)) is not None and end + size <= len(buffer):
        end += size
    return end


INTEGER = 0x02


def operation_tag(pdu: bytes | bytearray) -> int | None:
    """The protocolOp tag of a whole LDAPMessage PDU (0x60 BindRequest, ...); None if odd.

    Lets a bound session pass most requests on without decoding them: only the ones the
    proxy acts on (Bind, Unbind, Extended) need ldaptor.
    """
    first = pdu[1] if len(pdu) > 1 else 0
    offset = 2 + (first & 0x7F if first >= 0x80 else 0)
    if len(pdu) < offset + 3 or pdu[offset] != INTEGER:
        return None
    offset += 2 + pdu[offset + 1]
    return pdu[offset] if offset < len(pdu) else None
