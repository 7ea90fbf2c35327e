"""RFC 6238 TOTP at a given time: which step a code matches, never which time it is now."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import struct
from base64 import b32decode, b32encode
from dataclasses import dataclass

import pyotp

_COUNTER = struct.Struct(">Q")
_WORD = struct.Struct(">I")
SECRET_BYTES = 20  # 160 bits, RFC 4226 R6's recommendation
MIN_SECRET_BYTES = 16  # 128 bits: the least RFC 4226 allows, and what we accept as is
LEGACY_SECRET_BYTES = 10  # 80 bits: older pam_google_authenticator keys, with a warning


@dataclass(frozen=True, slots=True)
class TotpParams:
    """How codes are made: SHA-1, `digits` digits, a `step`-second period, +-`window` steps."""

    digits: int = 6
    step: int = 30
    window: int = 1


def time_step(now: int, params: TotpParams) -> int:
    """The step number that covers Unix time `now`."""
    return now // params.step


def code_at_step(secret: bytes, step: int, digits: int = 6) -> str:
    """The HOTP value (RFC 4226 section 5.3) of `secret` for counter `step`.

    Written out rather than through pyotp, which re-encodes the key to base32 and back on
    every call: this runs up to 2 x window + 1 times per login.
    """
    digest = hmac.digest(secret, _COUNTER.pack(step), "sha1")
    offset = digest[-1] & 0x0F
    value = _WORD.unpack_from(digest, offset)[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def match_step(secret: bytes, code: str, now: int, params: TotpParams) -> int | None:
    """The step within the window whose code equals `code`, newest first, or None.

    Every candidate is compared in constant time and the loop is bounded by the window,
    so the cost never depends on the code or on history.
    """
    current = time_step(now, params)
    found: int | None = None
    wanted = code.encode("ascii", "replace")
    for step in range(current + params.window, max(current - params.window, 0) - 1, -1):
        candidate = code_at_step(secret, step, params.digits).encode()
        if hmac.compare_digest(candidate, wanted) and found is None:
            found = step
    return found


_BASE32 = re.compile("[A-Z2-7]+")
_GUARD_LABEL = b"mfa-bridge replay guard\x00"


def guard_tag(secret: bytes) -> bytes:
    """Which key a replay guard belongs to: 128 bits of a hash, never the key itself.

    Kept beside `last_step`, so the guard survives a reset and applies again only if the
    same key comes back (re-imported), never to the codes of another key.
    """
    return hashlib.sha256(_GUARD_LABEL + secret).digest()[:16]


def new_secret() -> bytes:
    """A fresh 160-bit key from the operating system's CSPRNG."""
    return secrets.token_bytes(SECRET_BYTES)


def encode_secret(secret: bytes) -> str:
    """The base32 form users type into an authenticator app (no padding)."""
    return b32encode(secret).decode("ascii").rstrip("=")


def decode_secret(text: str, shortest: int = MIN_SECRET_BYTES) -> bytes:
    """Parse a base32 key as apps show it (any case, spaces and dashes allowed).

    Raises ValueError when it is not base32 or shorter than `shortest` octets (128 bits).
    """
    cleaned = "".join(text.split()).replace("-", "").upper().rstrip("=")
    if not _BASE32.fullmatch(cleaned):
        raise ValueError("not a base32 key")
    padded = cleaned + "=" * (-len(cleaned) % 8)
    try:
        secret = b32decode(padded)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise ValueError("not a base32 key") from exc
    if len(secret) < shortest:
        raise ValueError(f"key too short: {len(secret) * 8} bits, at least {shortest * 8} needed")
    return secret


def provisioning_uri(secret: bytes, username: str, issuer: str, params: TotpParams) -> str:
    """The otpauth:// URI of the Google Authenticator key-URI format, for the QR code."""
    totp = pyotp.TOTP(encode_secret(secret), digits=params.digits, interval=params.step)
    uri: str = totp.provisioning_uri(name=username, issuer_name=issuer)
    return uri
