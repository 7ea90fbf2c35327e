"""The tunnel's TLS with records in memory, against an OpenSSL client, through fragments."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from bridge.eap.packets import Reassembly, fragments, parse_fragment
from bridge.eap.tls import TlsError, TlsSession, server_context
from tests.certs import make_ca, make_server_cert

TTLS_LABEL = b"ttls keying material"


def context_and_ca(tmp_path: Path, tls13: bool) -> tuple[SSL.Context, Path]:
    ca = make_ca(tmp_path, "Test CA")
    cert_path, key_path = make_server_cert(ca, tmp_path, "radius", [x509.DNSName("radius.test")])
    chain = [x509.load_pem_x509_certificate(cert_path.read_bytes())]
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return server_context(chain, key, tls13=tls13), ca.path  # type: ignore[arg-type]  # an EC key


def client(ca: Path, version: int) -> SSL.Connection:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(version)
    context.set_max_proto_version(version)
    context.load_verify_locations(str(ca))
    context.set_verify(SSL.VERIFY_PEER, lambda *_args: True)
    peer = SSL.Connection(context, None)
    peer.set_connect_state()
    peer.set_tlsext_host_name(b"radius.test")
    return peer


def pending(peer: SSL.Connection) -> bytes:
    out = b""
    try:
        while True:
            out += peer.bio_read(16384)
    except SSL.WantReadError:
        return out


def through_eap(records: bytes) -> bytes:
    """What the other end gets after the records are cut into 1,000-octet EAP fragments."""
    whole = Reassembly()
    got = None
    for fragment in fragments(records, 0, 1000):
        got = whole.add(parse_fragment(fragment.to_bytes()))
    assert got is not None
    return got


@pytest.mark.parametrize(
    ("version", "name"), [(SSL.TLS1_2_VERSION, "TLSv1.2"), (SSL.TLS1_3_VERSION, "TLSv1.3")]
)
def test_a_handshake_inner_data_and_the_same_keys_on_both_ends(
    tmp_path: Path, version: int, name: str
) -> None:
    context, ca = context_and_ca(tmp_path, tls13=True)
    server, peer = TlsSession(context), client(ca, version)
    for _ in range(6):  # flights go back and forth until both ends are done
        with contextlib.suppress(SSL.WantReadError):
            peer.do_handshake()
        sent = pending(peer)
        if sent:
            answer = server.receive(through_eap(sent))
            if answer:
                peer.bio_write(through_eap(answer))
        if server.established and peer.get_protocol_version_name() == name:
            break
    assert server.established
    assert server.version == name
    peer.sendall(b"\x00\x00\x00\x01inner PAP AVPs")
    server.receive(pending(peer))
    assert server.read() == b"\x00\x00\x00\x01inner PAP AVPs"
    peer.bio_write(server.write(b"inner answer"))
    assert peer.recv(100) == b"inner answer"
    assert server.export(TTLS_LABEL, 64) == peer.export_keying_material(TTLS_LABEL, 64)


def test_a_client_offering_only_tls_1_3_to_a_1_2_server_is_refused(tmp_path: Path) -> None:
    context, ca = context_and_ca(tmp_path, tls13=False)
    server, peer = TlsSession(context), client(ca, SSL.TLS1_3_VERSION)
    with pytest.raises(SSL.WantReadError):
        peer.do_handshake()
    with pytest.raises(TlsError):
        server.receive(pending(peer))


def test_garbage_ends_the_conversation_and_keys_need_a_handshake(tmp_path: Path) -> None:
    context, _ca = context_and_ca(tmp_path, tls13=True)
    server = TlsSession(context)
    with pytest.raises(TlsError, match="before the handshake"):
        server.export(TTLS_LABEL, 64)
    with pytest.raises(TlsError):
        server.receive(b"\x16\x03\x01\x00\x05hello, not TLS at all" * 3)
