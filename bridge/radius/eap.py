"""RADIUS's EAP adapter: EAP-Message in, the EAP server's next step out (SPEC section 10).

The TLS rounds are answered by `bridge.eap`; the inner password is decided by the same
`Authenticator` as a PAP password in append mode (grace, exempt, replay, failures,
locks and audit lines alike), with the method as the audit line's protocol and the outer
identity beside the user. A conversation that fails before a password was decided is
audited here, with the reason the peer is never told.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure as TwistedFailure

from bridge.auth import Authenticator, Caller, ClientRules, LoginOutcome
from bridge.certificates import TlsSetupError, load_chain, load_key
from bridge.config import EapConfig, RadiusClient
from bridge.core.policy import Mode
from bridge.core.types import Decision, Outcome, Reason
from bridge.eap.conversations import Conversations
from bridge.eap.machine import Challenge, EapServer, Failure, Step, Success, Tunnel, Verify
from bridge.eap.packets import Code, EapPacket
from bridge.eap.tls import server_context
from bridge.ldapdn import DnKey
from bridge.logs import Throttle, debugging
from bridge.radius import codec
from bridge.radius.trace import describe_eap

log = Logger(namespace="bridge.radius.eap")

LOG_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class EapReply:
    """What the RADIUS reply carries: its code, the EAP packet, and per code the rest."""

    code: int
    eap_message: bytes
    state: bytes | None = None  # Access-Challenge: the conversation's next State
    keys: tuple[bytes, bytes] | None = field(default=None, repr=False)  # (recv, send)
    decision: Decision | None = None  # the inner password's, for the Reply-Message
    groups: frozenset[DnKey] = frozenset()  # the user's configured groups: reply rules


def eap_context(config: EapConfig) -> SSL.Context:
    """The tunnels' TLS context for `radius.eap`; a `TlsSetupError` names what cannot be used.

    The certificate file holds the server certificate, then any intermediates. With
    `ca_file`, the certificate must be issued by a CA there or in the file, and the
    intermediates of `ca_file` are sent along (the roots are the clients' to trust).
    """
    chain = load_chain(config.certificate)
    key = load_key(config.key)
    if config.ca_file is not None:
        authorities = load_chain(config.ca_file)
        if not any(_issued_by(chain[0], ca) for ca in chain[1:] + authorities):
            raise TlsSetupError(f"{config.certificate} is not issued by a CA in {config.ca_file}")
        chain += [ca for ca in authorities if ca not in chain and not _issued_by(ca, ca)]
    try:
        context = server_context(chain, key)
    except SSL.Error as exc:  # the key does not match the certificate
        raise TlsSetupError(f"{config.certificate} and {config.key}: {exc}") from exc
    return context


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class EapResponder:
    """Answers Access-Requests that carry EAP-Message, one round at a time."""

    def __init__(
        self, context: SSL.Context, authenticator: Authenticator, clock: IReactorTime
    ) -> None:
        self._server = EapServer(context, Conversations(clock.seconds))
        self._auth = authenticator
        self._throttle = Throttle(clock.seconds, LOG_INTERVAL)
        self.counters: Counter[str] = Counter()

    def use(self, context: SSL.Context) -> None:
        """A new certificate (SIGHUP) for the tunnels that start from now on."""
        self._server.context = context

    @property
    def conversation_counters(self) -> Counter[str]:
        """Conversations dropped unfinished: expired, evicted (per client, in all)."""
        return self._server.conversations.counters

    def respond(
        self,
        message: bytes,
        state: bytes | None,
        caller: Caller,
        client: RadiusClient,
        *,
        address: str,
        user_name: str = "",
        rules: ClientRules | None = None,
        device: str | None = None,
    ) -> Deferred[EapReply]:
        """The reply to one Access-Request's EAP-Message (and State, after the first).

        `user_name` is the request's User-Name (the NAS copies the outer identity there):
        the name audited when a conversation fails before it is known. `caller` is the
        request's, as for PAP; `rules` and `device` the client's and the
        Calling-Station-Id.
        """
        step = self._server.respond(message, state, address)
        return self._reply(step, _Login(caller, client, address, user_name, rules, device))

    def _reply(self, step: Step, login: _Login) -> Deferred[EapReply]:
        if isinstance(step, Challenge):
            self.counters["rounds"] += 1
            if debugging():
                log.debug(
                    "eap.round client={client} {packet}",
                    client=login.address,
                    packet=describe_eap(step.packet.to_bytes()),
                )
            return succeed(
                EapReply(codec.ACCESS_CHALLENGE, step.packet.to_bytes(), state=step.state)
            )
        if isinstance(step, Success):
            self.counters["accepts"] += 1
            accepted = step.tunnel.accepted
            assert isinstance(accepted, LoginOutcome)  # `verified` keeps what it was given
            keys = (step.keys.recv, step.keys.send)
            reply = EapReply(
                codec.ACCESS_ACCEPT,
                step.packet.to_bytes(),
                keys=keys,
                decision=accepted.decision,
                groups=accepted.groups,
            )
            return succeed(reply)
        if isinstance(step, Failure):
            return succeed(self._failed(step, login))
        return self._verify(step, login)

    def _verify(self, step: Verify, login: _Login) -> Deferred[EapReply]:
        """Decide the inner password as PAP's append mode does, then take the next step."""
        tunnel = step.tunnel
        caller = _caller(tunnel, login)
        credentials = step.credentials

        def decided(outcome: LoginOutcome) -> Deferred[EapReply]:
            accepted = outcome if outcome.decision.outcome is Outcome.ACCEPT else None
            after = self._reply(self._server.verified(tunnel, accepted, login.address), login)
            if accepted is None:
                return after.addCallback(lambda reply: replace(reply, decision=outcome.decision))
            return after

        def broken(failure: TwistedFailure) -> EapReply:
            log.failure("radius.eap.login-error client={client}", failure, client=login.address)
            decision = self._auth.refuse(credentials.user_name, Reason.INTERNAL_ERROR, caller)
            return EapReply(codec.ACCESS_REJECT, _eap_failure(tunnel), decision=decision)

        d = self._auth.login_outcome(
            credentials.user_name,
            credentials.password,
            Mode.APPEND,
            caller,
            rules=login.rules,
            device=login.device,
        )
        return d.addCallback(decided).addErrback(broken)

    def _failed(self, step: Failure, login: _Login) -> EapReply:
        """EAP-Failure; audited and logged here unless a password decision ended it."""
        self.counters["failures"] += 1
        if step.decided:
            return EapReply(codec.ACCESS_REJECT, step.packet.to_bytes())
        tunnel = step.tunnel
        reason = Reason.UNSUPPORTED if step.refused_method else Reason.EAP_ERROR
        user = (tunnel.inner_user or tunnel.outer_identity) if tunnel is not None else None
        caller = _caller(tunnel, login)
        decision = self._auth.refuse(user or login.user_name, reason, caller)
        address = login.address
        if self._throttle.allow((reason, address)):
            log.warn(
                "radius.eap.failed client={client} method={method} outer_identity={outer!r}: {why}",
                client=address,
                method=caller.protocol,
                outer=caller.outer_identity,
                why=step.why,
            )
        return EapReply(codec.ACCESS_REJECT, step.packet.to_bytes(), decision=decision)


@dataclass(frozen=True, slots=True)
class _Login:
    """Who an EAP round came from: the client, its address, and for the inner login the
    request's User-Name, the client's rules and the device."""

    caller: Caller  # the RADIUS request's, given the method's name for the audit
    client: RadiusClient
    address: str
    user_name: str = ""
    rules: ClientRules | None = None
    device: str | None = None


def _caller(tunnel: Tunnel | None, login: _Login) -> Caller:
    """The request's caller, named by the method, with the outer identity beside it."""
    if tunnel is None:
        return replace(login.caller, protocol="eap", outer_identity=login.user_name or None)
    return replace(login.caller, protocol=tunnel.protocol, outer_identity=tunnel.outer_identity)


def _eap_failure(tunnel: Tunnel) -> bytes:
    return EapPacket(Code.FAILURE, tunnel.identifier).to_bytes()
