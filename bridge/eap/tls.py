"""The server end of an EAP-TTLS or PEAP tunnel: TLS with its records in memory.

EAP carries TLS records inside RADIUS packets, so there is no socket: the peer's bytes
are written into OpenSSL's memory BIO, and what OpenSSL wants to send is read out of it
and cut into EAP fragments (`packets.fragments`). pyOpenSSL (already Twisted's) gives
the keying-material exporter the Wi-Fi keys come from; the standard library's `ssl` has
none. TLS 1.2 and 1.3; anything OpenSSL refuses is a `TlsError` that ends the one
conversation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography import x509
from OpenSSL import SSL

from bridge.certificates import ServerKey

READ_CHUNK = 16 * 1024


class TlsError(Exception):
    """The handshake failed, or the peer sent something TLS refuses."""


class TlsSession:
    """One tunnel's TLS state, driven by the bytes the peer sends."""

    def __init__(self, context: SSL.Context) -> None:
        self._tls = SSL.Connection(context, None)
        self._tls.set_accept_state()
        self.established = False

    def receive(self, records: bytes) -> bytes:
        """Take the peer's TLS bytes; returns what to send back (maybe nothing).

        During the handshake that is the next flight; once established, nothing (inner
        data is read with `read`).
        """
        try:
            self._tls.bio_write(records)
            if not self.established:
                try:
                    self._tls.do_handshake()
                    self.established = True
                except SSL.WantReadError:
                    pass
        except SSL.Error as exc:
            raise TlsError(_reason(exc)) from exc
        return self._outgoing()

    def read(self) -> bytes:
        """The inner (application) data the peer's records held, decrypted."""
        try:
            return _drain(self._tls.recv)
        except SSL.Error as exc:
            raise TlsError(_reason(exc)) from exc

    def write(self, data: bytes) -> bytes:
        """Inner data for the peer, as the TLS records to send."""
        try:
            self._tls.sendall(data)
        except SSL.Error as exc:
            raise TlsError(_reason(exc)) from exc
        return self._outgoing()

    def export(self, label: bytes, length: int, context: bytes | None = None) -> bytes:
        """Keying material (RFC 5705) for the Wi-Fi keys, once established."""
        if not self.established:
            raise TlsError("keys asked for before the handshake ended")
        key: bytes = self._tls.export_keying_material(label, length, context)
        return key

    @property
    def version(self) -> str:
        """The protocol version agreed ("TLSv1.2", "TLSv1.3")."""
        return str(self._tls.get_protocol_version_name())

    def _outgoing(self) -> bytes:
        return _drain(self._tls.bio_read)


def server_context(
    chain: Sequence[x509.Certificate], key: ServerKey, *, tls13: bool = True
) -> SSL.Context:
    """An OpenSSL context for the tunnel: TLS 1.2 at least (1.3 unless `tls13` is off),
    the server certificate first in `chain`, then its intermediates."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    if not tls13:
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate(chain[0])
    for extra in chain[1:]:
        context.add_extra_chain_cert(extra)
    context.use_privatekey(key)
    context.check_privatekey()
    context.set_options(SSL.OP_NO_TICKET)  # nothing to resume: each login is a new tunnel
    return context


def _drain(read: Callable[[int], bytes]) -> bytes:
    """Everything `read` has now (OpenSSL's memory BIO, or the tunnel's inner data)."""
    out = b""
    try:
        while True:
            out += read(READ_CHUNK)
    except (SSL.WantReadError, SSL.ZeroReturnError):  # nothing more now; the peer closed
        return out


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
