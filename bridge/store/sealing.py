"""Encryption of TOTP secrets at rest, with a key kept in its own file."""

from __future__ import annotations

import base64
import hmac
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = b"\x01"


class KeyFileError(Exception):
    """The key file is unusable: unreadable, malformed or readable by others."""


class Sealer:
    """AES-256-GCM; the user name is bound in as associated data, so a sealed secret
    copied onto another user's row does not open."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise KeyFileError(f"key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._mac_key = hmac.new(key, b"mfa-bridge mac key", "sha256").digest()
        self.fingerprint = hmac.new(key, b"mfa-bridge key fingerprint", "sha256").hexdigest()[:16]

    def mac(self, data: bytes) -> bytes:
        """A keyed hash of `data` (HMAC-SHA256 under a key derived from the store's): what
        is kept of a password+code for a rebind, or signs a form token; never the data."""
        return hmac.digest(self._mac_key, data, "sha256")

    def seal(self, username: str, secret: bytes) -> bytes:
        """Encrypt `secret` for `username`'s row."""
        nonce = os.urandom(NONCE_BYTES)
        return VERSION + nonce + self._aead.encrypt(nonce, secret, username.encode())

    def open(self, username: str, sealed: bytes) -> bytes:
        """Decrypt a sealed secret; raises KeyFileError when the key does not fit."""
        if sealed[:1] != VERSION or len(sealed) < 1 + NONCE_BYTES + 16:
            raise KeyFileError("sealed secret has an unknown format")
        nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, username.encode())
        except InvalidTag as exc:
            raise KeyFileError("a stored secret does not open with this key file") from exc


def load_or_create_key(path: Path) -> bytes:
    """Read the key file, creating it (mode 0600, 256 random bits) when absent.

    A key file that group or others can read is refused: it would make the encryption of
    the database pointless.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create key file: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: key file is readable by others; chmod 600 it")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise KeyFileError(f"{path}: key file is not base64") from exc
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{path}: key file must hold {KEY_BYTES} bytes, holds {len(key)}")
    return key
