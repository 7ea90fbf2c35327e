"""The proxy's TLS towards its clients: StartTLS on the plain listener, and LDAPS.

The certificate and key come from PEM files (`ldap_proxy.tls`). They are loaded with
`cryptography` and handed to Twisted's `CertificateOptions`, which picks the ciphers;
TLS 1.2 is the minimum. The context is built at once, so a key that does not match the
certificate, or a file that is not PEM, stops the daemon at start-up instead of failing
the first client's handshake.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl

from bridge.config import LdapProxyTls

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


class TlsSetupError(Exception):
    """The configured certificate or key cannot be used."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsSetupError(f"cannot read {path}: {exc.strerror or exc}") from exc


def server_tls_options(tls: LdapProxyTls) -> Any:
    """Twisted TLS options (an `IOpenSSLServerConnectionCreator`) for `tls`.

    The certificate file holds the server certificate first, then any intermediate
    certificates to send along with it.
    """
    pems = _PEM_CERTIFICATE.findall(_read(tls.certificate))
    if not pems:
        raise TlsSetupError(f"no PEM certificate in {tls.certificate}")
    try:
        chain = [x509.load_pem_x509_certificate(pem) for pem in pems]
    except ValueError as exc:
        raise TlsSetupError(f"invalid certificate in {tls.certificate}: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(_read(tls.key), password=None)
    except (ValueError, TypeError) as exc:  # TypeError: the key is encrypted
        raise TlsSetupError(f"invalid or encrypted private key in {tls.key}: {exc}") from exc
    # pyOpenSSL takes cryptography's objects directly (its own X509/PKey are deprecated).
    certificate: Any = chain[0]
    options = ssl.CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=certificate,
        extraCertChain=chain[1:],  # type: ignore[arg-type]
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    try:
        options.getContext()
    except Exception as exc:  # OpenSSL.SSL.Error: the key does not match, ...
        raise TlsSetupError(f"{tls.certificate} and {tls.key}: {exc}") from exc
    return options
