"""Certificates and keys from the PEM files the config names (LDAP proxy, portal, EAP).

Loaded with `cryptography`, whose objects pyOpenSSL and Twisted take directly. Every
problem is a `TlsSetupError` naming the file, raised at start-up: a key that does not
match or a file that is not PEM stops the daemon before the first client's handshake.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

ServerKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


class TlsSetupError(Exception):
    """The configured certificate or key cannot be used."""


def read_file(path: Path) -> bytes:
    """The file's bytes, or a `TlsSetupError` naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsSetupError(f"cannot read {path}: {exc.strerror or exc}") from exc


def load_chain(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file, in order (the server's first, then its CAs)."""
    pems = _PEM_CERTIFICATE.findall(read_file(path))
    if not pems:
        raise TlsSetupError(f"no PEM certificate in {path}")
    try:
        return [x509.load_pem_x509_certificate(pem) for pem in pems]
    except ValueError as exc:
        raise TlsSetupError(f"invalid certificate in {path}: {exc}") from exc


def load_key(path: Path) -> ServerKey:
    """An unencrypted private key from a PEM file (RSA, EC or EdDSA)."""
    try:
        key = serialization.load_pem_private_key(read_file(path), password=None)
    except (ValueError, TypeError) as exc:  # TypeError: the key is encrypted
        raise TlsSetupError(f"invalid or encrypted private key in {path}: {exc}") from exc
    if not isinstance(key, ServerKey):
        raise TlsSetupError(f"{path}: a {type(key).__name__} cannot serve TLS")
    return key
