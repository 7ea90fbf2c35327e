"""EAP-TTLS's inner data: the Diameter AVPs that carry PAP's name and password (RFC 5281).

Inside the tunnel a TTLS peer sends AVPs: a 4-octet code, a flags octet, a 3-octet
length, an optional vendor number, the data, and padding to a multiple of 4. PAP is
User-Name (1) and User-Password (2, padded with NULs to a multiple of 16). An AVP the
server does not know may be skipped unless its M (mandatory) flag is set: then the
login fails, as section 10.1 says.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from bridge.eap.packets import EapError

USER_NAME = 1
USER_PASSWORD = 2
VENDOR_FLAG = 0x80
MANDATORY_FLAG = 0x40
_KNOWN = frozenset({USER_NAME, USER_PASSWORD})
_VALUE_LIMIT = 253  # as RADIUS's: a user name or password longer than this is refused


@dataclass(frozen=True, slots=True)
class PapCredentials:
    """What the peer sent inside the tunnel: its user name and password field."""

    user_name: str
    password: str = field(repr=False)  # never in a repr or a log


def encode_avp(code: int, data: bytes, *, mandatory: bool = True) -> bytes:
    """One AVP (no vendor), padded to a multiple of 4 octets."""
    flags = MANDATORY_FLAG if mandatory else 0
    length = 8 + len(data)
    return struct.pack("!IB", code, flags) + length.to_bytes(3, "big") + data + bytes(-length % 4)


def read_pap(inner: bytes) -> PapCredentials:
    """The User-Name and User-Password AVPs of the peer's inner data."""
    values: dict[int, bytes] = {}
    offset = 0
    while offset < len(inner):
        if len(inner) - offset < 8:
            raise EapError("truncated AVP header")
        code, flags = struct.unpack_from("!IB", inner, offset)
        length = int.from_bytes(inner[offset + 5 : offset + 8], "big")
        start = offset + (12 if flags & VENDOR_FLAG else 8)
        if length < start - offset or offset + length > len(inner):
            raise EapError(f"AVP {code} of length {length}")
        vendor = flags & VENDOR_FLAG
        if vendor or code not in _KNOWN:
            if flags & MANDATORY_FLAG:
                raise EapError(f"unsupported mandatory AVP {code}")
        elif code in values:
            raise EapError(f"AVP {code} twice")
        else:
            values[code] = bytes(inner[start : offset + length])
        offset += length + (-length % 4)
    if USER_NAME not in values or USER_PASSWORD not in values:
        raise EapError("no User-Name and User-Password AVPs")
    return PapCredentials(
        _text(values[USER_NAME], "User-Name"),
        _text(values[USER_PASSWORD].rstrip(b"\x00"), "User-Password"),
    )


def _text(value: bytes, name: str) -> str:
    if len(value) > _VALUE_LIMIT or b"\x00" in value:
        raise EapError(f"{name} AVP malformed")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise EapError(f"{name} AVP is not UTF-8") from None
