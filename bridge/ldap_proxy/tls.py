"""The proxy's TLS towards its clients: StartTLS on the plain listener, and LDAPS.

The certificate and key come from PEM files (`ldap_proxy.tls`). They are loaded with
`cryptography` and handed to Twisted's `CertificateOptions`, which picks the ciphers;
TLS 1.2 is the minimum. The context is built at once, so a key that does not match the
certificate, or a file that is not PEM, stops the daemon at start-up instead of failing
the first client's handshake.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import ssl

from bridge.certificates import TlsSetupError, load_chain, load_key
from bridge.config import LdapProxyTls

__all__ = ["TlsSetupError", "server_tls_options"]


def server_tls_options(tls: LdapProxyTls) -> Any:
    """Twisted TLS options (an `IOpenSSLServerConnectionCreator`) for `tls`.

    The certificate file holds the server certificate first, then any intermediate
    certificates to send along with it.
    """
    chain = load_chain(tls.certificate)
    key = load_key(tls.key)
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
