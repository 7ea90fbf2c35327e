"""TLS to the directory: one strict SSLContext checks chain and host name (IP SANs too)."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from ldap3.core.exceptions import LDAPCertificateError

from bridge.config import DirectoryConfig
from bridge.directory import _make_server, _VerifiedTls
from tests.certs import self_signed


def _config(**changes: object) -> DirectoryConfig:
    base: dict[str, object] = {
        "urls": ("ldaps://127.0.0.1",),
        "bind_dn": "cn=svc",
        "bind_password": "pw",
        "user_base": "dc=example",
    }
    return DirectoryConfig(**(base | changes))  # type: ignore[arg-type]


def _handshake(tls: _VerifiedTls, cert: Path, key: Path, host: str) -> SimpleNamespace:
    """Run `tls.wrap_socket` against an in-process TLS server; the fake ldap3 connection."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    ours, theirs = socket.socketpair()

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(theirs, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            theirs.close()

    thread = threading.Thread(target=serve)
    thread.start()
    connection = SimpleNamespace(socket=ours, server=SimpleNamespace(host=host))
    try:
        tls.wrap_socket(connection, do_handshake=True)
    finally:
        connection.socket.close()
        thread.join(5)
    return connection


def test_plain_ldap_has_no_tls() -> None:
    """ldap:// without start_tls stays plain."""
    server = _make_server("ldap://127.0.0.1", _config(urls=("ldap://127.0.0.1",)))
    assert server.server.tls is None


@pytest.mark.parametrize(("url", "start_tls"), [("ldaps://h", False), ("ldap://h", True)])
def test_context_is_strict(url: str, start_tls: bool) -> None:
    """Both ldaps:// and StartTLS verify the chain and the host name, TLS 1.2 at least."""
    tls = _make_server(url, _config(urls=(url,), start_tls=start_tls)).server.tls
    assert isinstance(tls, _VerifiedTls)
    context = tls._context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_ip_address_certificate_is_accepted(tmp_path: Path) -> None:
    """A certificate with an IP SAN matches a server given by IP (no ssl.match_hostname)."""
    cert, key = self_signed(tmp_path, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    tls = _make_server("ldaps://127.0.0.1", _config(ca_file=cert)).server.tls
    connection = _handshake(tls, cert, key, "127.0.0.1")
    assert isinstance(connection.socket, ssl.SSLSocket)


def test_wrong_name_is_refused_readably(tmp_path: Path) -> None:
    """A trusted certificate for another host fails with OpenSSL's reason, not a cert dump."""
    cert, key = self_signed(tmp_path, x509.DNSName("ldap.example.org"))
    tls = _make_server("ldaps://127.0.0.1", _config(ca_file=cert)).server.tls
    with pytest.raises(LDAPCertificateError, match="certificate verify failed: IP address mis"):
        _handshake(tls, cert, key, "127.0.0.1")
