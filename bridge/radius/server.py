"""The RADIUS listener: datagrams in, decisions out, nothing escapes the handler.

The protocol only parses (with `codec`), checks who is asking, and maps the one
`Decision` the authenticator returns to a reply; it never decides a login itself.
"""

from __future__ import annotations

import ipaddress
import os
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.auth import Authenticator, Caller, ClientRules, LoginOutcome
from bridge.config import RadiusClient, RadiusConfig
from bridge.core.credentials import normalize_username
from bridge.core.policy import REJECT_SPREAD, Mode
from bridge.core.types import Decision, Identity, Outcome, Reason
from bridge.eap.packets import Code, EapPacket
from bridge.ldapdn import DnKey
from bridge.logs import Throttle, debugging
from bridge.radius import codec
from bridge.radius.codec import MalformedPacket, Request
from bridge.radius.eap import EapReply, EapResponder
from bridge.radius.replies import Replies
from bridge.radius.trace import trace

log = Logger(namespace="bridge.radius")

# A NAS retransmits within seconds (RFC 5080 2.2.1; FreeRADIUS keeps replies 5 s). The
# limit must hold every reply sent in that time at the highest rate: 65,536 over 10 s
# is 6,500 logins/s before new requests are refused as overload.
REPLY_CACHE_SECONDS = 10.0
REPLY_CACHE_LIMIT = 65_536
LOG_INTERVAL = 60.0
CLIENT_MEMO_LIMIT = 4096

PROMPT = "Enter the 6-digit code from your authenticator app"
LOCKED = "Your account is locked: contact your IT admin"
NOT_ENROLLED = "MFA is not set up for this account: contact your IT admin"
CODE_REQUIRED = "Add the 6-digit code from your authenticator app after your password"
NOT_ALLOWED = "You are not allowed to log in here: contact your IT admin"

Address = tuple[str, int]
CacheKey = tuple[str, int, int, bytes]


def days_left_message(days: int, setup_url: str | None = None) -> str:
    """The grace notice: the number and the word "day" (and where, when configured)."""
    unit = "day" if days == 1 else "days"
    where = f" at {setup_url}" if setup_url else ""
    return f"{days} {unit} left to set up MFA{where}"


@dataclass(slots=True)
class _Entry:
    expires: float
    arrived: float  # when the request came: a reject goes out reject_delay after it
    reply: bytes | None = None  # None while the request is still being decided


class RadiusProtocol(DatagramProtocol):
    """RFC 2865 authentication with RFC 5080 duplicate detection and RFC 5997 Status-Server."""

    def __init__(
        self,
        config: RadiusConfig,
        authenticator: Authenticator,
        clock: IReactorTime,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        setup_url: str | None = None,
        eap: EapResponder | None = None,
        replies: Replies | None = None,
    ) -> None:
        self._config = config
        self.eap = eap  # None: no radius.eap certificate, EAP is refused
        self._reply_rules = replies or Replies()
        self._rules = {client.name: rules_of(client) for client in config.clients}
        self._setup_url = setup_url  # the portal, named in grace notices
        self._auth = authenticator
        self._clock = clock
        self._random = random_bytes
        self._mode = Mode(config.mode)
        self._clients = sorted(config.clients, key=lambda c: c.network.prefixlen, reverse=True)
        self._client_of: dict[str, RadiusClient | None] = {}
        self._replies: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._throttle = Throttle(clock.seconds, LOG_INTERVAL)
        # Rejects waiting out reject_delay, with what they will send.
        self._pending: dict[CacheKey, tuple[IDelayedCall, Address, bytes]] = {}
        self._in_flight = 0  # logins waiting for the directory or the store
        self._drained: list[Deferred[None]] | None = None  # set once draining (shutdown)
        self.counters: Counter[str] = Counter()

    def reconfigure(
        self,
        config: RadiusConfig,
        *,
        setup_url: str | None = None,
        replies: Replies | None = None,
    ) -> None:
        """New clients, secrets, modes, rules, reply attributes and timings for the next
        request (SIGHUP).

        Replies already cached keep answering retransmissions; challenges issued stay
        valid for their user and client.
        """
        self._config = config
        self._reply_rules = replies or Replies()
        self._rules = {client.name: rules_of(client) for client in config.clients}
        self._mode = Mode(config.mode)
        self._clients = sorted(config.clients, key=lambda c: c.network.prefixlen, reverse=True)
        self._client_of.clear()
        self._setup_url = setup_url

    def stopProtocol(self) -> None:  # noqa: N802 - Twisted's name
        """Cancel reject delays still waiting when the listener goes away."""
        for call, _addr, _reply in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()

    def drain(self) -> Deferred[None]:
        """Take no new request; fires once every login in flight has been answered.

        Rejects waiting out reject_delay are sent at once: at shutdown every decision
        made is sent, and nothing new is started.
        """
        if self._drained is None:
            self._drained = []
        for key, (call, addr, reply) in list(self._pending.items()):
            if call.active():
                call.cancel()
            self._delayed(key, addr, reply)
        done: Deferred[None] = Deferred()
        if self._in_flight == 0:
            done.callback(None)
        else:
            self._drained.append(done)
        return done

    def _landed(self, result: object) -> object:
        """A login in flight was answered (or failed): the drain may be complete."""
        self._in_flight -= 1
        if self._in_flight == 0 and self._drained:
            waiting, self._drained = self._drained, []
            for done in waiting:
                if not done.called:  # a deadline may have fired it already
                    done.callback(None)
        return result

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:  # noqa: N802
        """Handle one datagram; any failure is a drop with a counter and a log line."""
        self.counters["packets"] += 1
        if self._drained is not None:  # shutting down: the NAS retries the other server
            self.counters["dropped.shutting-down"] += 1
            return
        try:
            self._received(datagram, addr)
        except Exception:
            self.counters["dropped.internal-error"] += 1
            log.failure("radius.internal-error client={client}", client=addr[0])

    def _received(self, datagram: bytes, addr: Address) -> None:
        client = self._client(addr[0])
        if client is None:
            self._drop("unknown-client", addr, "packet from an address that is not a client")
            return
        try:
            code, identifier, authenticator = codec.peek_header(datagram)
        except MalformedPacket as exc:
            self._drop(f"malformed.{exc.cause}", addr, "malformed packet")
            return
        now = self._clock.seconds()
        self._expire(now)
        key = (addr[0], addr[1], identifier, authenticator)
        entry = self._replies.get(key)
        if entry is not None:
            self.counters["duplicates"] += 1
            if entry.reply is not None and self.transport is not None:
                self.transport.write(entry.reply, addr)
            return
        try:
            request = codec.decode_request(datagram, client.secret)
        except MalformedPacket as exc:
            if exc.cause == "bad-message-authenticator":
                self._drop(exc.cause, addr, "bad Message-Authenticator (wrong shared secret?)")
            else:
                self._drop(f"malformed.{exc.cause}", addr, "malformed packet")
            return
        if not request.has_message_authenticator and (
            client.require_message_authenticator
            or code == codec.STATUS_SERVER
            or request.has_eap  # RFC 3579 3.3: discarded without one
        ):
            self._drop(
                "missing-message-authenticator",
                addr,
                "request without Message-Authenticator; fix the client or set"
                " require_message_authenticator: false for it",
            )
            return
        if debugging():
            trace("radius.request", addr, request.raw)
        if len(self._replies) >= REPLY_CACHE_LIMIT:
            self._drop("overload", addr, "too many requests in progress")
            return
        self._replies[key] = _Entry(now + REPLY_CACHE_SECONDS, now)
        if code == codec.STATUS_SERVER:
            self.counters["status-server"] += 1
            self._send(key, addr, codec.encode_reply(request, client.secret, codec.ACCESS_ACCEPT))
            return
        self.counters["access-requests"] += 1
        self._access_request(request, client, key, addr)

    def _access_request(
        self, request: Request, client: RadiusClient, key: CacheKey, addr: Address
    ) -> None:
        caller = caller_of(request, client, addr[0])
        user = request.user_name or ""
        rules = self._rules[client.name]
        device = request.calling_station_id
        if request.has_eap and self.eap is not None:
            self._in_flight += 1
            d_eap = self.eap.respond(
                request.eap_message,
                request.state,
                caller,
                client,
                address=addr[0],
                user_name=user,
                rules=rules,
                device=device,
            )
            d_eap.addCallback(self._answer_eap, request, client, key, addr)
            d_eap.addErrback(self._failed, request, client, key, addr)
            d_eap.addBoth(self._landed)
            return
        if request.has_chap or request.has_eap or request.password is None:
            decision = self._auth.refuse(user, Reason.UNSUPPORTED, caller)
            self._answer(decision, request, client, key, addr)
            return
        d: Deferred[LoginOutcome]
        if request.state is not None:  # the answer to a challenge (issued by any instance)
            d = self._auth.answer_state(
                request.state, user, addr[0], request.password, caller, rules=rules, device=device
            )
        else:
            mode = Mode(client.mode) if client.mode is not None else self._mode
            d = self._auth.login_outcome(
                user, request.password, mode, caller, rules=rules, device=device
            )
        self._in_flight += 1
        d.addCallback(self._answer_outcome, request, client, key, addr)
        d.addErrback(self._failed, request, client, key, addr)
        d.addBoth(self._landed)

    def _failed(
        self,
        failure: Failure,
        request: Request,
        client: RadiusClient,
        key: CacheKey,
        addr: Address,
    ) -> None:
        log.failure("radius.login-error client={client}", failure, client=addr[0])
        caller = caller_of(request, client, addr[0])
        decision = self._auth.refuse(request.user_name or "", Reason.INTERNAL_ERROR, caller)
        self._answer(decision, request, client, key, addr)

    def _answer_outcome(
        self,
        outcome: LoginOutcome,
        request: Request,
        client: RadiusClient,
        key: CacheKey,
        addr: Address,
    ) -> None:
        self._answer(
            outcome.decision,
            request,
            client,
            key,
            addr,
            owner=outcome.identity,
            groups=outcome.groups,
        )

    def _answer(
        self,
        decision: Decision,
        request: Request,
        client: RadiusClient,
        key: CacheKey,
        addr: Address,
        *,
        owner: Identity | None = None,
        groups: frozenset[DnKey] = frozenset(),
    ) -> None:
        state: bytes | None = None
        extra = b""
        message: str | None
        if decision.outcome is Outcome.CHALLENGE:
            if owner is None:  # a challenge always names its entry: fail closed if not
                raise ValueError("a challenge without the entry it is for")
            typed = normalize_username(request.user_name or "") or ""
            state = self._issue_state(typed, owner, addr[0])
            code, message = codec.ACCESS_CHALLENGE, PROMPT
            self.counters["challenges"] += 1
        elif decision.outcome is Outcome.ACCEPT:
            code = codec.ACCESS_ACCEPT
            extra = self._reply_rules.for_login(groups, client.name)
            message = None
            if decision.days_left is not None:
                message = days_left_message(decision.days_left, self._setup_url)
            self.counters["accepts"] += 1
        else:
            code, message = codec.ACCESS_REJECT, reject_message(decision)
            self.counters["rejects"] += 1
        eap_failure = None
        if request.has_eap:  # EAP refused, or failed inside: the peer is told at once
            eap_failure = EapPacket(Code.FAILURE, _eap_identifier(request)).to_bytes()
        reply = codec.encode_reply(
            request,
            client.secret,
            code,
            reply_message=message,
            state=state,
            eap_message=eap_failure,
            attributes=extra,
        )
        self._deliver(code, key, addr, reply)

    def _answer_eap(
        self, reply: EapReply, request: Request, client: RadiusClient, key: CacheKey, addr: Address
    ) -> None:
        """An EAP round's reply: a challenge with the next EAP request, or the end."""
        message = None
        extra = b""
        if reply.decision is not None and reply.code == codec.ACCESS_ACCEPT:
            self.counters["accepts"] += 1
            extra = self._reply_rules.for_login(reply.groups, client.name)
            if reply.decision.days_left is not None:
                message = days_left_message(reply.decision.days_left, self._setup_url)
        elif reply.code == codec.ACCESS_REJECT:
            self.counters["rejects"] += 1
            message = reject_message(reply.decision) if reply.decision is not None else None
        data = codec.encode_reply(
            request,
            client.secret,
            reply.code,
            reply_message=message,
            state=reply.state,
            eap_message=reply.eap_message,
            mppe_keys=reply.keys,
            random_bytes=self._random,
            attributes=extra,
        )
        self._deliver(reply.code, key, addr, data)

    def _deliver(self, code: int, key: CacheKey, addr: Address, reply: bytes) -> None:
        """Send now, or, for a reject, reject_delay after the request arrived."""
        # A reject goes out reject_delay after the request *arrived*, not after the work
        # that decided it: an unknown user (a search) and a wrong password (a search and
        # a bind) take the same time, so the time tells nothing. No transport: the
        # listener stopped while this login was in flight, and a delay scheduled now
        # would outlive stopProtocol. Draining for shutdown: the decision goes out now.
        entry = self._replies.get(key)
        arrived = entry.arrived if entry is not None else self._clock.seconds()
        wait = arrived + self._reject_delay() - self._clock.seconds()
        if (
            code == codec.ACCESS_REJECT
            and wait > 0
            and self.transport is not None
            and self._drained is None
        ):
            call = self._clock.callLater(wait, self._delayed, key, addr, reply)
            self._pending[key] = (call, addr, reply)
            return
        self._send(key, addr, reply)

    def _reject_delay(self) -> float:
        """reject_delay, plus up to a tenth of it at random.

        The moment a request is taken up lags its arrival by whatever the reactor was
        doing; that lag (a millisecond or so) differs a little between unknown users and
        wrong passwords under a burst. A random spread many times wider hides it.
        """
        delay = self._config.reject_delay
        if delay <= 0:
            return 0.0
        spread = int.from_bytes(self._random(2), "big") / 65536
        return delay * (1 + REJECT_SPREAD * spread)

    def _delayed(self, key: CacheKey, addr: Address, reply: bytes) -> None:
        self._pending.pop(key, None)
        self._send(key, addr, reply)

    def _send(self, key: CacheKey, addr: Address, reply: bytes) -> None:
        if debugging():
            trace("radius.reply", addr, reply)
        entry = self._replies.get(key)
        if entry is not None:
            entry.reply = reply
            entry.expires = self._clock.seconds() + REPLY_CACHE_SECONDS
            self._replies.move_to_end(key)  # keep the cache in expiry order
        if self.transport is not None:
            self.transport.write(reply, addr)

    def _issue_state(self, username: str, owner: Identity, client: str) -> bytes:
        state = self._random(16)
        self._auth.issue_challenge(state, username, owner, client, self._config.state_ttl)
        return state

    def _expire(self, now: float) -> None:
        """Forget replies past their lifetime (kept in arrival order; challenges live in
        the store, for any instance sharing it)."""
        while self._replies:
            key, entry = next(iter(self._replies.items()))
            if entry.expires > now:
                break
            del self._replies[key]

    def _client(self, host: str) -> RadiusClient | None:
        """The client entry for a source address (most specific network first), memoised."""
        if host in self._client_of:
            return self._client_of[host]
        found = None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        for client in self._clients:
            if address is not None and address in client.network:
                found = client
                break
        if len(self._client_of) >= CLIENT_MEMO_LIMIT:
            self._client_of.clear()
        self._client_of[host] = found
        return found

    def _drop(self, cause: str, addr: Address, what: str) -> None:
        """Count a dropped packet and log it, at most once a minute per cause and client."""
        self.counters[f"dropped.{cause}"] += 1
        if not self._throttle.allow((cause, addr[0])):
            return
        log.warn(
            "radius.drop cause={cause} client={client}: {what}",
            cause=cause,
            client=addr[0],
            what=what,
        )


def caller_of(request: Request, client: RadiusClient, address: str) -> Caller:
    """Who asked, for the audit line: the client's name and address, and what the NAS
    said of itself and of the device (SPEC 12)."""
    return Caller(
        "radius",
        f"{client.name}({address})",
        client.name,
        nas_identifier=request.nas_identifier,
        nas_ip=request.nas_ip,
        calling_station_id=request.calling_station_id,
        client_address=address,
    )


def rules_of(client: RadiusClient) -> ClientRules:
    """A client's SPEC 11 settings as the Authenticator applies them."""
    return ClientRules.of(client.name, client.allowed_groups, client.mfa, client.remember_seconds)


def _eap_identifier(request: Request) -> int:
    """The identifier of the request's EAP packet (0 when it has none)."""
    return request.eap_message[1] if len(request.eap_message) > 1 else 0


def reject_message(decision: Decision) -> str | None:
    """What a rejected user may be told: nothing unless the password was right."""
    if not decision.password_ok:
        return None
    if decision.reason is Reason.LOCKED or decision.lock_reason is not None:
        return LOCKED
    if decision.reason is Reason.NOT_ENROLLED:
        return NOT_ENROLLED
    if decision.reason is Reason.CODE_REQUIRED:
        return CODE_REQUIRED
    if decision.reason is Reason.NOT_ALLOWED:
        return NOT_ALLOWED
    return None
