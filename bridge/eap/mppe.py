"""MS-MPPE-Send-Key and MS-MPPE-Recv-Key, encrypted as RFC 2548 section 2.4.2 says.

The access point takes the Wi-Fi keys from these two attributes of the Access-Accept:
wrong bytes here do not fail the login, they fail the Wi-Fi link afterwards, silently.
The construction is the RADIUS salt encryption (the same as Tunnel-Password's, RFC 2868
section 3.5): a 2-octet salt with its top bit set, then the key's length, the key and
zero padding, XORed block by block with MD5(secret + Request Authenticator + salt), then
MD5(secret + the previous cipher block).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

MICROSOFT = 311  # the vendor of the MS-MPPE attributes
MS_MPPE_SEND_KEY = 16
MS_MPPE_RECV_KEY = 17


def new_salt(random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh salt: random, top bit set (unique per attribute of a packet)."""
    salt = random_bytes(2)
    return bytes((salt[0] | 0x80, salt[1]))


def encrypt_key(key: bytes, secret: bytes, authenticator: bytes, salt: bytes) -> bytes:
    """The attribute value: salt + the encrypted (length, key, padding)."""
    if len(salt) != 2 or not salt[0] & 0x80:
        raise ValueError("the salt is 2 octets with the top bit set")
    if len(key) > 240:
        raise ValueError("key too long for one attribute")
    plain = bytes((len(key),)) + key
    plain += b"\x00" * (-len(plain) % 16)
    out = bytearray()
    previous = authenticator + salt
    for i in range(0, len(plain), 16):
        pad = hashlib.md5(secret + previous).digest()  # noqa: S324 - RFC 2548
        block = bytes(a ^ b for a, b in zip(plain[i : i + 16], pad, strict=True))
        out += block
        previous = block
    return salt + bytes(out)


def vendor_attribute(vendor_type: int, value: bytes) -> bytes:
    """A Vendor-Specific (26) attribute of Microsoft's holding one sub-attribute."""
    sub = bytes((vendor_type, len(value) + 2)) + value
    return bytes((26, len(sub) + 6)) + MICROSOFT.to_bytes(4, "big") + sub
