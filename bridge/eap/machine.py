"""The EAP server of 802.1X logins: EAP-TTLS with PAP inside, PEAPv0 with GTC inside.

One RADIUS round at a time, pure apart from OpenSSL's in-memory state: an EAP response
comes in with the State of the last round, and out goes the next step. The method is
offered after the peer's Identity (TTLS first; a peer that Naks it for PEAP gets PEAP),
the TLS handshake runs in fragments, then the inner password comes through the tunnel:

- TTLS: the peer sends User-Name and User-Password AVPs (RFC 5281);
- PEAPv0: the server asks for the inner identity, then for the password with EAP-GTC,
  and after the password is accepted, confirms with the Result TLV.

The password is decided by the caller (`Verify`, then `verified`) exactly as a PAP one;
this module never sees a decision's reasons. An accepted login ends with the MSK's two
halves for the access point (RFC 5281 and PEAPv0's labels over TLS 1.2, RFC 9427's
exporter over TLS 1.3). Anything malformed, a method other than TTLS and PEAP, or a
conversation past its time ends that conversation alone, with EAP-Failure.

hostapd's `eap_server_ttls.c` and `eap_server_peap.c` map the same states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from OpenSSL import SSL

from bridge.eap import peap
from bridge.eap.conversations import Conversations
from bridge.eap.packets import (
    START,
    Code,
    EapError,
    EapPacket,
    Reassembly,
    TlsFragment,
    Type,
    fragments,
    method_name,
    parse,
    parse_fragment,
)
from bridge.eap.tls import TlsError, TlsSession
from bridge.eap.ttls import PapCredentials, read_pap

FRAGMENT_SIZE = 1024  # TLS octets per EAP request: fits an 802.11 frame, as FreeRADIUS's
MAX_ROUNDS = 100  # a conversation longer than this is a peer playing games
OFFERED = (Type.TTLS, Type.PEAP)
PROTOCOLS = {Type.TTLS: "eap-ttls", Type.PEAP: "peap"}  # for the audit log

_TLS12_LABELS = {Type.TTLS: b"ttls keying material", Type.PEAP: b"client EAP encryption"}
_TLS13_LABEL = b"EXPORTER_EAP_TLS_Key_Material"  # RFC 9427 section 2.1, the method as context
_KEY_MATERIAL = 128  # exported whole: TLS 1.3's exporter mixes the length into the output


class Phase(Enum):
    """Where a conversation stands between two rounds."""

    START = "start"  # the method's Start was sent: the peer may Nak it
    HANDSHAKE = "handshake"  # TLS flights going back and forth
    TUNNEL = "tunnel"  # TLS is up: the inner conversation begins
    INNER_IDENTITY = "inner-identity"  # PEAP: the inner identity was asked for
    INNER_PASSWORD = "inner-password"  # noqa: S105 - PEAP: GTC asked for the password
    RESULT = "result"  # PEAP: the Result TLV sent after an accept


@dataclass(slots=True, eq=False)
class Tunnel:
    """One peer's conversation, kept between rounds under the State sent last."""

    method: Type
    outer_identity: str
    identifier: int  # of the request sent last: the response must carry it
    tls: TlsSession = field(repr=False)
    phase: Phase = Phase.START
    rounds: int = 0
    incoming: Reassembly = field(default_factory=Reassembly, repr=False)
    outgoing: list[TlsFragment] = field(default_factory=list, repr=False)
    inner_user: str | None = None
    accepted: object = None  # the caller's accept, kept for PEAP's last round

    @property
    def protocol(self) -> str:
        """The method's name in audit lines."""
        return PROTOCOLS[self.method]


@dataclass(frozen=True, slots=True)
class MppeKeys:
    """The two halves of the MSK, as MS-MPPE-Recv-Key and MS-MPPE-Send-Key carry them."""

    recv: bytes = field(repr=False)
    send: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send `packet` in an Access-Challenge with `state`; the conversation waits."""

    packet: EapPacket
    state: bytes


@dataclass(frozen=True, slots=True)
class Verify:
    """Decide `credentials` as a PAP login, then call `EapServer.verified`."""

    tunnel: Tunnel
    credentials: PapCredentials


@dataclass(frozen=True, slots=True)
class Success:
    """Access-Accept with EAP-Success and the keys; `tunnel.accepted` is the decision."""

    packet: EapPacket
    keys: MppeKeys
    tunnel: Tunnel


@dataclass(frozen=True, slots=True)
class Failure:
    """Access-Reject with EAP-Failure. `why` is for the log, never for the peer."""

    packet: EapPacket
    why: str
    tunnel: Tunnel | None = None
    refused_method: bool = False  # the peer wanted a method that is not offered
    decided: bool = False  # the password was decided (and audited) already


Step = Challenge | Verify | Success | Failure


class _MethodRefusedError(EapError):
    """The peer Naked every method offered."""


class EapServer:
    """EAP-TTLS and PEAP for every client, with the unfinished conversations in `table`."""

    def __init__(self, context: SSL.Context, table: Conversations[Tunnel]) -> None:
        self.context = context  # replaced when the certificate is (SIGHUP)
        self.conversations = table

    def respond(self, message: bytes, state: bytes | None, client: str) -> Step:
        """The next step for the EAP-Message `message` received from `client`."""
        try:
            packet = parse(message)
        except EapError as exc:
            return _failure(message[1] if len(message) > 1 else 0, str(exc))
        if packet.code is not Code.RESPONSE:
            return _failure(packet.identifier, f"EAP {packet.code.name} from the peer")
        if state is None:
            return self._begin(packet, client)
        tunnel = self.conversations.take(state, client)
        if tunnel is None:
            return _failure(packet.identifier, "unknown or expired conversation")
        try:
            return self._continue(tunnel, packet, client)
        except _MethodRefusedError as exc:
            return _failure(packet.identifier, str(exc), tunnel, refused_method=True)
        except (EapError, TlsError) as exc:
            return _failure(packet.identifier, str(exc), tunnel)

    def verified(self, tunnel: Tunnel, accepted: object, client: str) -> Step:
        """The step after the inner password was decided: `accepted` is the caller's
        accept (kept on the tunnel), or None for a reject."""
        identifier = tunnel.identifier
        if accepted is None:
            return _failure(identifier, "login rejected", tunnel, decided=True)
        tunnel.accepted = accepted
        if tunnel.method is Type.TTLS:
            return Success(EapPacket(Code.SUCCESS, identifier), _keys(tunnel), tunnel)
        tunnel.phase = Phase.RESULT
        result = peap.result_request(_next(identifier), success=True)
        return self._send(tunnel, identifier, tunnel.tls.write(result), client)

    def _begin(self, packet: EapPacket, client: str) -> Step:
        if packet.type != Type.IDENTITY:
            return _failure(packet.identifier, "the conversation did not begin with Identity")
        outer = packet.data.decode("utf-8", "replace").replace("\x00", "")[:253]
        tunnel = Tunnel(Type.TTLS, outer, packet.identifier, TlsSession(self.context))
        return self._request(tunnel, packet.identifier, client, TlsFragment(START, 0, b""))

    def _continue(self, tunnel: Tunnel, packet: EapPacket, client: str) -> Step:
        if packet.identifier != tunnel.identifier:
            raise EapError(f"response {packet.identifier} to request {tunnel.identifier}")
        tunnel.rounds += 1
        if tunnel.rounds > MAX_ROUNDS:
            raise EapError(f"more than {MAX_ROUNDS} rounds")
        after = packet.identifier
        if packet.type == Type.NAK and tunnel.phase is Phase.START:
            return self._nak(tunnel, packet, client)
        if packet.type != tunnel.method:
            raise EapError(f"a {method_name(packet.type or 0)} response to {tunnel.protocol}")
        fragment = parse_fragment(packet.data)
        if tunnel.outgoing:  # sending a flight: the peer acknowledges each fragment
            if fragment.data or fragment.more:
                raise EapError("data where a fragment's acknowledgement was due")
            return self._request(tunnel, after, client, tunnel.outgoing.pop(0))
        message = tunnel.incoming.add(fragment)
        if message is None:  # acknowledge; more fragments of the peer's message follow
            return self._request(tunnel, after, client, TlsFragment(0, 0, b""))
        if tunnel.phase in (Phase.START, Phase.HANDSHAKE):
            return self._handshake(tunnel, after, message, client)
        if message:
            tunnel.tls.receive(message)
        return self._inner(tunnel, after, tunnel.tls.read(), client)

    def _nak(self, tunnel: Tunnel, packet: EapPacket, client: str) -> Step:
        """The peer refused the method offered: offer the other, or end."""
        for method in OFFERED:
            if method in packet.data and method is not tunnel.method:
                tunnel.method = method
                start = TlsFragment(START, 0, b"")
                return self._request(tunnel, packet.identifier, client, start)
        asked = ",".join(method_name(t) for t in packet.data) or "none"
        offered = ",".join(m.name for m in OFFERED)
        raise _MethodRefusedError(f"the peer asked for {asked}; offered {offered}")

    def _handshake(self, tunnel: Tunnel, after: int, message: bytes, client: str) -> Step:
        tunnel.phase = Phase.HANDSHAKE
        out = tunnel.tls.receive(message)
        if not tunnel.tls.established:
            if not out:
                raise EapError("the TLS handshake stalled")
            return self._send(tunnel, after, out, client)
        tunnel.phase = Phase.TUNNEL
        inner = tunnel.tls.read()
        if out and not inner:  # the server's Finished (TLS 1.2): the peer answers it
            return self._send(tunnel, after, out, client)
        return self._inner(tunnel, after, inner, client)

    def _inner(self, tunnel: Tunnel, after: int, inner: bytes, client: str) -> Step:
        """The inner conversation: the peer's decrypted data in, the next request out."""
        if tunnel.method is Type.TTLS:
            if tunnel.phase is not Phase.TUNNEL:
                raise EapError(f"TTLS data in phase {tunnel.phase.value}")
            if not inner:  # ask for the AVPs with an empty request
                return self._send(tunnel, after, b"", client)
            credentials = read_pap(inner)
            tunnel.inner_user = credentials.user_name
            return Verify(tunnel, credentials)
        if tunnel.phase is Phase.TUNNEL:
            if inner:
                raise EapError("inner data before the inner identity was asked for")
            tunnel.phase = Phase.INNER_IDENTITY
            return self._send(tunnel, after, tunnel.tls.write(peap.identity_request()), client)
        if tunnel.phase is Phase.INNER_IDENTITY:
            name = peap.read_inner(inner, Type.IDENTITY)
            tunnel.inner_user = name.decode("utf-8", "replace")[:253]
            tunnel.phase = Phase.INNER_PASSWORD
            return self._send(tunnel, after, tunnel.tls.write(peap.gtc_request()), client)
        if tunnel.phase is Phase.INNER_PASSWORD:
            password = peap.read_inner(inner, Type.GTC)
            try:
                text = password.decode("utf-8")
            except UnicodeDecodeError:
                raise EapError("GTC response is not UTF-8") from None
            return Verify(tunnel, PapCredentials(tunnel.inner_user or "", text))
        if not peap.read_result(inner):
            raise EapError("the peer did not confirm the Result TLV")
        return Success(EapPacket(Code.SUCCESS, after), _keys(tunnel), tunnel)

    def _send(self, tunnel: Tunnel, after: int, records: bytes, client: str) -> Step:
        """A TLS flight: its first fragment now, the rest as the peer acknowledges."""
        first, *rest = fragments(records, 0, FRAGMENT_SIZE)
        tunnel.outgoing = rest
        return self._request(tunnel, after, client, first)

    def _request(self, tunnel: Tunnel, after: int, client: str, fragment: TlsFragment) -> Step:
        tunnel.identifier = _next(after)
        packet = EapPacket(Code.REQUEST, tunnel.identifier, tunnel.method, fragment.to_bytes())
        return Challenge(packet, self.conversations.keep(client, tunnel))


def _keys(tunnel: Tunnel) -> MppeKeys:
    """The MSK's halves: the first 32 octets to the access point's receive side."""
    if tunnel.tls.version == "TLSv1.3":
        context = bytes((tunnel.method,))
        material = tunnel.tls.export(_TLS13_LABEL, _KEY_MATERIAL, context)
    else:
        material = tunnel.tls.export(_TLS12_LABELS[tunnel.method], _KEY_MATERIAL)
    return MppeKeys(recv=material[:32], send=material[32:64])


def _next(identifier: int) -> int:
    return (identifier + 1) & 0xFF


def _failure(
    identifier: int,
    why: str,
    tunnel: Tunnel | None = None,
    *,
    refused_method: bool = False,
    decided: bool = False,
) -> Failure:
    packet = EapPacket(Code.FAILURE, identifier)
    return Failure(packet, why, tunnel, refused_method=refused_method, decided=decided)
