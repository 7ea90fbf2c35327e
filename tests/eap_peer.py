"""A minimal EAP-TTLS/PAP and PEAPv0/GTC supplicant, in memory, for the EAP server's
unit tests (eapol_test is the real one, in the integration tests).

It plays the peer's side of `bridge.eap.machine.EapServer` round by round with its own
pyOpenSSL client, so the tests can see the keys both ends derive and can break any
round on purpose.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL

from bridge.certificates import load_chain, load_key
from bridge.eap import peap
from bridge.eap.machine import Challenge, EapServer, Step
from bridge.eap.packets import (
    Code,
    EapPacket,
    Reassembly,
    TlsFragment,
    Type,
    fragments,
    nak,
    parse_fragment,
)
from bridge.eap.tls import server_context
from bridge.eap.ttls import USER_NAME, USER_PASSWORD, encode_avp
from tests.certs import make_ca, make_server_cert

CLIENT = "192.0.2.10"


def server_side(directory: Path, names: int = 1) -> tuple[Path, SSL.Context]:
    """A test CA (its file) and a tunnel context with a server certificate it issued for
    `names` DNS names (many names: a certificate several EAP packets long)."""
    ca = make_ca(directory, "EAP Test CA")
    sans: list[x509.GeneralName] = [x509.DNSName(f"ap{i}.example.org") for i in range(names)]
    cert_path, key_path = make_server_cert(ca, directory, "radius", sans)
    return ca.path, server_context(load_chain(cert_path), load_key(key_path))


@dataclass
class Peer:
    """One supplicant conversation: user, password, method, TLS version, fragment size."""

    ca: Path
    user: str
    password: str
    method: Type = Type.TTLS
    version: int = SSL.TLS1_3_VERSION
    fragment_size: int = 1024
    outer: str = "anonymous"
    tls: SSL.Connection = field(init=False)
    whole: Reassembly = field(default_factory=Reassembly)
    identifier: int = 0
    state: bytes | None = None
    established: bool = False

    def __post_init__(self) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(self.version)
        context.set_max_proto_version(self.version)
        context.load_verify_locations(str(self.ca))
        context.set_verify(SSL.VERIFY_PEER, lambda *_args: True)
        self.tls = SSL.Connection(context, None)
        self.tls.set_connect_state()

    def send(self, server: EapServer, packet: EapPacket) -> Step:
        """One round: `packet` to the server with the State of the last challenge."""
        step = server.respond(packet.to_bytes(), self.state, CLIENT)
        if isinstance(step, Challenge):
            self.state = step.state
            self.identifier = step.packet.identifier
        return step

    def response(self, data: bytes, method: int | None = None) -> EapPacket:
        """A response of the conversation's method (or `method`) to the last request."""
        return EapPacket(Code.RESPONSE, self.identifier, method or self.method, data)

    def start(self, server: EapServer) -> Step:
        """Identity, then (for PEAP) a Nak of TTLS; returns the server's Start."""
        self.state = None
        step = self.send(server, EapPacket(Code.RESPONSE, 7, Type.IDENTITY, self.outer.encode()))
        if self.method is Type.PEAP:
            assert isinstance(step, Challenge)
            step = self.send(server, nak(self.identifier, (Type.PEAP,)))
        return step

    def tls_out(self) -> bytes:
        out = b""
        with contextlib.suppress(SSL.WantReadError):
            while True:
                out += self.tls.bio_read(16384)
        return out

    def flight(self, server: EapServer, records: bytes) -> Step:
        """Send TLS records in fragments of `fragment_size`; returns the server's answer to
        the last one (each earlier one must be acknowledged)."""
        pieces = fragments(records, 0, self.fragment_size)
        step: Step | None = None
        for index, piece in enumerate(pieces):
            step = self.send(server, self.response(piece.to_bytes()))
            if index < len(pieces) - 1:
                assert isinstance(step, Challenge), step
                assert parse_fragment(step.packet.data) == TlsFragment(0, 0, b""), "no ack"
        assert step is not None
        return step

    def receive(self, server: EapServer, step: Step) -> tuple[Step, bytes | None]:
        """Collect a server message's fragments (acknowledging each); feed it to TLS.
        Returns the last step and what TLS then wants to send (None: not a TLS message)."""
        while True:
            assert isinstance(step, Challenge), step
            self.state, self.identifier = step.state, step.packet.identifier
            fragment = parse_fragment(step.packet.data)
            if fragment.start:
                return step, None
            message = self.whole.add(fragment)
            if message is not None:
                break
            step = self.send(server, self.response(b"\x00"))
        if message:
            self.tls.bio_write(message)
        self.shake()
        return step, self.tls_out()

    def shake(self) -> None:
        with contextlib.suppress(SSL.WantReadError):
            self.tls.do_handshake()
            self.established = True

    def inner(self) -> bytes:
        """What the server sent inside the tunnel."""
        out = b""
        with contextlib.suppress(SSL.WantReadError, SSL.ZeroReturnError):
            while True:
                out += self.tls.recv(16384)
        return out

    def seal(self, data: bytes) -> bytes:
        self.tls.sendall(data)
        return self.tls_out()

    def handshake(self, server: EapServer) -> Step:
        """From the Start to an established tunnel; returns the server's next step."""
        step = self.start(server)
        self.shake()
        step = self.flight(server, self.tls_out())  # ClientHello
        while True:
            step, out = self.receive(server, step)
            if out:
                step = self.flight(server, out)
            elif self.established:
                return step
            else:
                raise AssertionError(f"handshake stuck: {self.tls.get_state_string()!r}")

    def pap(self) -> bytes:
        """TTLS's inner data: User-Name and User-Password AVPs, the password NUL-padded."""
        padded = self.password.encode() + bytes(-len(self.password.encode()) % 16)
        return encode_avp(USER_NAME, self.user.encode()) + encode_avp(USER_PASSWORD, padded)

    def login(self, server: EapServer) -> Step:
        """The whole conversation up to the server's Verify (or whatever stops it)."""
        self.handshake(server)
        if self.method is Type.TTLS:
            return self.flight(server, self.seal(self.pap()))
        asked = self.inner()
        while not asked:  # the server's Finished, or tickets: acknowledged, the request follows
            step, _ = self.receive(server, self.flight(server, b""))
            asked = self.inner()
        assert asked == peap.identity_request()
        step = self.flight(server, self.seal(bytes((Type.IDENTITY,)) + self.user.encode()))
        step, _ = self.receive(server, step)  # the GTC request
        assert self.inner().startswith(bytes((Type.GTC,)))
        return self.flight(server, self.seal(bytes((Type.GTC,)) + self.password.encode()))

    def export(self, label: bytes, context: bytes | None) -> bytes:
        key: bytes = self.tls.export_keying_material(label, 128, context)
        return key
