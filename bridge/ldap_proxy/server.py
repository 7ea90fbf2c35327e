"""The LDAP listener: one session per client connection, decided binds, relayed operations.

A session is unbound until a simple bind succeeds. Unbound, it answers only the RootDSE
read (locally, from fixed values: no upstream connection for unauthenticated clients)
and refuses everything else with insufficientAccessRights (50). A bind first drops the
session's identity (RFC 4513 section 4), then:

- a user DN or bare user name: `Authenticator.login` in append mode decides (state
  machine, replay, locks, audit); when accepted the proxy binds upstream as the DN the
  directory found, with the password part, on a connection of the session's own;
- a DN listed in `passthrough_dns`: bound upstream as given, no code;
- the empty DN with an empty password: anonymous, forwarded only with `allow_anonymous`.

Once bound, every request but Bind, Unbind and StartTLS is passed upstream byte for
byte and the directory's responses come back the same way. Any refused bind answers
invalidCredentials (49), whatever the reason (the log says which). Requests are decoded
with ldaptor's codec inside a size-checked envelope: a malformed or oversize PDU closes
that connection only.

TLS towards clients (with `ldap_proxy.tls`): StartTLS is accepted on a connection that
is not yet TLS and has nothing outstanding (no bound session, nothing sent after the
request), otherwise operationsError (RFC 4511 section 4.14.1); connections accepted by
the LDAPS listener are TLS from the start. With `require_tls`, a simple bind on a
connection without TLS answers confidentialityRequired (13) and reaches no directory.

Limits: the factory refuses (closes at once) connections beyond `max_connections` in
total or `max_connections_per_address` from one IP address, and each session closes
itself after `idle_timeout` seconds without a request, with a Notice of Disconnection.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from typing import Protocol as Interface

from ldaptor.protocols import pureber, pureldap
from ldaptor.protocols.ldap.ldapserver import BaseLDAPServer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.auth import Caller
from bridge.config import DirectoryConfig, LdapProxyConfig
from bridge.connections import ConnectionCounter
from bridge.core.types import Decision, Reason
from bridge.directory import Binder, UnavailableError
from bridge.ldap_proxy.ber import BindRequest, bind_response, parse_bind_request
from bridge.ldap_proxy.framing import FramingError, operation_tag, pdu_size
from bridge.ldap_proxy.login import LoginResult
from bridge.ldap_proxy.names import UserMapper
from bridge.ldap_proxy.sockets import no_delay, write_now
from bridge.ldap_proxy.tls import server_tls_options
from bridge.ldap_proxy.upstream import UpstreamRefusedError, UpstreamUnavailableError
from bridge.ldapdn import DnKey, dn_key, same_dn
from bridge.logs import Throttle

log = Logger(namespace="bridge.ldap")

_DIGITS = re.compile(r"0x[0-9a-fA-F]+|[0-9]+")

MAX_PDU = 64 * 1024  # a bind or a search request is far smaller
MAX_BUFFER = 4 * MAX_PDU  # what a client may have sent ahead while its bind is decided

SUCCESS = 0
OPERATIONS_ERROR = 1
PROTOCOL_ERROR = 2
AUTH_METHOD_NOT_SUPPORTED = 7
UNAVAILABLE_CRITICAL_EXTENSION = 12
CONFIDENTIALITY_REQUIRED = 13
INVALID_CREDENTIALS = 49
INSUFFICIENT_ACCESS_RIGHTS = 50
UNAVAILABLE = 52

STARTTLS_OID = pureldap.LDAPStartTLSRequest.oid
NOTICE_OF_DISCONNECTION = b"1.3.6.1.4.1.1466.20036"
WHOAMI_OID = b"1.3.6.1.4.1.4203.1.11.3"
PASSWORD_MODIFY_OID = pureldap.LDAPPasswordModifyRequest.oid

# The answer to each refused request type (requests without a response are ignored).
_REFUSALS: dict[type[Any], type[Any]] = {
    pureldap.LDAPSearchRequest: pureldap.LDAPSearchResultDone,
    pureldap.LDAPModifyRequest: pureldap.LDAPModifyResponse,
    pureldap.LDAPAddRequest: pureldap.LDAPAddResponse,
    pureldap.LDAPDelRequest: pureldap.LDAPDelResponse,
    pureldap.LDAPModifyDNRequest: pureldap.LDAPModifyDNResponse,
    pureldap.LDAPCompareRequest: pureldap.LDAPCompareResponse,
    pureldap.LDAPExtendedRequest: pureldap.LDAPExtendedResponse,
}


class Login(Interface):
    """`LdapLogin`: the shared login decision, as the proxy calls it."""

    def __call__(
        self, username: str, field: str, caller: Caller, bind: Binder
    ) -> Deferred[LoginResult]:
        """Decide a login (append form), checking the password with `bind`."""

    def refuse(self, raw_username: str, reason: Reason, caller: Caller) -> Decision:
        """Audit a bind refused before any password check."""


class Upstream(Interface):
    """A bound upstream connection (`upstream.Link`)."""

    @property
    def producer(self) -> Any:
        """What to pause while the client cannot keep up."""

    def relay(self, on_pdus: Any, on_lost: Any) -> None:
        """Start passing whole response PDUs to `on_pdus`; `on_lost` once it closes."""

    def send(self, pdu: bytes) -> None:
        """Pass a request on, as encoded by the client."""

    def detach(self) -> None:
        """Stop passing responses on (the session's identity is gone)."""

    def close(self) -> None:
        """Unbind and disconnect."""


class Opener(Interface):
    """`upstream.Opener`: a bound upstream connection, or UpstreamRefusedError/Unavailable."""

    def __call__(
        self, urls: Sequence[str], dn: str, password: str, reuse: Any = None
    ) -> Deferred[Any]:
        """Bind `reuse` again or connect (servers in `urls` first, then the configured order)."""

    def bind_at(self, url: str, dn: str, password: str, reuse: Any = None) -> Deferred[Any]:
        """The same at `url` alone."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What a session needs from the config, prepared once."""

    mapper: UserMapper
    passthrough: frozenset[DnKey]
    allow_anonymous: bool = False
    max_pdu: int = MAX_PDU
    tls: Any = None  # Twisted TLS options for StartTLS; None: StartTLS is unavailable
    require_tls: bool = False
    max_connections: int = 1000
    max_connections_per_address: int = 100
    idle_timeout: float = 300.0

    @classmethod
    def from_config(cls, proxy: LdapProxyConfig, directory: DirectoryConfig) -> Settings:
        """From the `ldap_proxy` and `directory` sections; loads the certificate, if any.

        Raises `tls.TlsSetupError` when the certificate or key cannot be used.
        """
        keys = (dn_key(dn) for dn in proxy.passthrough_dns)
        return cls(
            mapper=UserMapper(directory.user_base, directory.user_filter),
            passthrough=frozenset(key for key in keys if key),
            allow_anonymous=proxy.allow_anonymous,
            tls=server_tls_options(proxy.tls) if proxy.tls is not None else None,
            require_tls=proxy.require_tls,
            max_connections=proxy.max_connections,
            max_connections_per_address=proxy.max_connections_per_address,
            idle_timeout=proxy.idle_timeout,
        )


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How a bind ended: the result code, and the upstream link when it succeeded."""

    code: int
    upstream: Any = None


_REFUSED = _Outcome(INVALID_CREDENTIALS)

# The requests a bound session acts on itself (Bind, Unbind, Extended: StartTLS); the
# rest is passed upstream undecoded.
_DECODED_WHEN_BOUND = frozenset({0x60, 0x42, 0x77})


def decode_request(pdu: bytes) -> Any:
    """ldaptor's LDAPMessage for one whole PDU, or None when it is not a valid request.

    ldaptor prints and skips tags it does not know; such a PDU counts as malformed.
    """
    skipped = io.StringIO()
    with contextlib.redirect_stdout(skipped):
        message, used = pureber.berDecodeObject(BaseLDAPServer.berdecoder, pdu)
    if skipped.getvalue() or used != len(pdu):
        return None
    if not isinstance(message, pureldap.LDAPMessage):
        return None
    if not isinstance(message.value, pureldap.LDAPProtocolRequest):
        return None
    if not isinstance(message.id, int) or not 0 < message.id < 2**31:
        return None
    return message


def _bind_request(msg_id: int, op: Any, controls: Any) -> BindRequest:
    """The proxy's view of a BindRequest that ldaptor decoded (SASL, controls, ...)."""

    def octets(value: Any) -> bytes:
        return value.encode() if isinstance(value, str) else bytes(value or b"")

    return BindRequest(
        msg_id,
        op.version,
        octets(op.dn),
        None if op.sasl else octets(op.auth),
        critical_control=any(critical for _type, critical, _value in controls or ()),
    )


def root_dse_entry(starttls: bool = False) -> Any:
    """The RootDSE an unbound client sees: enough to know it talks LDAPv3 (and StartTLS)."""
    extensions = [WHOAMI_OID, PASSWORD_MODIFY_OID, *([STARTTLS_OID] if starttls else [])]
    return pureldap.LDAPSearchResultEntry(
        objectName="",
        attributes=[
            ("objectClass", ["top"]),
            ("supportedLDAPVersion", ["3"]),
            ("supportedExtension", extensions),
        ],
    )


def _is_root_dse_read(op: Any) -> bool:
    return (
        isinstance(op, pureldap.LDAPSearchRequest)
        and op.baseObject in (b"", "")
        and op.scope == pureldap.LDAP_SCOPE_baseObject
    )


def _text(value: object) -> str | None:
    """An LDAPString as text; None when it is not valid UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


class LdapProxyProtocol(Protocol):
    """One client connection: its buffer, its identity, its upstream link."""

    def __init__(
        self,
        settings: Settings,
        login: Login,
        opener: Opener,
        reactor: Any,
        release: Callable[[], None] | None = None,
        *,
        throttle: Throttle | None = None,
    ) -> None:
        self._settings = settings
        self._throttle = throttle or Throttle(reactor.seconds)  # the factory's, shared
        self._login = login
        self._opener = opener
        self._reactor = reactor
        self._release = release  # the factory's count of open connections, once closed
        self._idle: Any = None  # the IDelayedCall of the idle timeout
        self.tls = False  # the connection is encrypted (LDAPS, or after StartTLS)
        self._buffer = bytearray()
        self._link: Any = None  # the session's upstream connection, kept across binds
        self._upstream: Any = None  # `_link` while bound: requests are relayed on it
        self._bound_as_user = False  # the directory accepted the user's password on `_link`
        self._binding = False  # a bind is being decided: requests wait in the buffer
        self._paused = False  # reading stopped: the client sent more while a bind is decided
        self._draining = False  # inside `_drain`: a bind decided at once must not recurse
        self._generation = 0  # bumped by every bind and by disconnection
        self._closed = False
        self.client = "unknown"

    # --- Protocol ------------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        """Note the client's address for the audit log; start the idle timer."""
        peer = self.transport.getPeer() if self.transport is not None else None
        self.client = str(getattr(peer, "host", "unknown"))
        self.tls = ISSLTransport.providedBy(self.transport)  # accepted by the LDAPS listener
        no_delay(self.transport)
        self._touch()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        """Buffer, then handle every whole request (unless a bind is being decided)."""
        if self._closed:
            return
        self._buffer += data
        if len(self._buffer) > MAX_BUFFER:
            self._drop("buffer limit")
            return
        if self._binding:
            self._pause()  # read no more until the bind is answered
            return
        self._drain()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """Drop the upstream link; a bind still being decided finds nobody to answer.

        The connection's place in the limits is kept until that bind is decided: a
        client that binds and hangs up at once must not have more binds in flight than
        `max_connections_per_address`."""
        self._closed = True
        self._generation += 1
        idle, self._idle = self._idle, None
        if idle is not None and idle.active():
            idle.cancel()
        if not self._binding:
            self._free_place()
        self._reset()
        self._close_link()

    def _free_place(self) -> None:
        """Give the connection's place in the factory's limits back (once)."""
        release, self._release = self._release, None
        if release is not None:
            release()

    # --- the idle timeout ----------------------------------------------------------------

    def _touch(self) -> None:
        """A request came in (or a response went out): restart the idle timer."""
        if self._closed:
            return
        timeout = self._settings.idle_timeout
        if self._idle is not None and self._idle.active():
            self._idle.reset(timeout)
        else:
            self._idle = self._reactor.callLater(timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle = None
        if self._closed:
            return
        notice = pureldap.LDAPExtendedResponse(
            resultCode=UNAVAILABLE,
            errorMessage="idle timeout",
            responseName=NOTICE_OF_DISCONNECTION,
        )
        self._reply(0, notice)
        self._drop("idle timeout")

    # --- requests ------------------------------------------------------------------------

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            self._drain_buffer()
        finally:
            self._draining = False

    def _drain_buffer(self) -> None:
        while not self._binding and not self._closed:
            try:
                size = pdu_size(self._buffer, 0, self._settings.max_pdu)
            except FramingError as exc:
                self._drop(str(exc))
                return
            if size is None or len(self._buffer) < size:
                return
            pdu = bytes(self._buffer[:size])
            del self._buffer[:size]
            if self._upstream is not None and operation_tag(pdu) not in _DECODED_WHEN_BOUND:
                self._touch()
                self._upstream.send(pdu)  # the directory judges the request itself
                continue
            bind = parse_bind_request(pdu)  # the hot path, read without ldaptor
            if bind is not None:
                self._touch()
                self._bind(bind)
                continue
            try:
                message = decode_request(pdu)
            except Exception as exc:  # ldaptor raises anything on bad input
                self._drop(f"undecodable request: {type(exc).__name__}")
                return
            if message is None:
                self._drop("not an LDAP request")
                return
            self._touch()
            try:
                self._dispatch(message, pdu)
            except Exception:  # one session's failure must not hang or spread
                log.failure("ldap.error client={client}", client=self.client)
                self._drop("internal error")
                return

    def _dispatch(self, message: Any, pdu: bytes) -> None:
        op, msg_id = message.value, message.id
        if isinstance(op, pureldap.LDAPBindRequest):
            self._bind(_bind_request(msg_id, op, message.controls))
        elif isinstance(op, pureldap.LDAPUnbindRequest):
            self._reset()
            self._close()
        elif isinstance(op, pureldap.LDAPExtendedRequest) and op.requestName == STARTTLS_OID:
            self._start_tls(msg_id)
        elif self._upstream is not None:
            self._upstream.send(pdu)
        elif _is_root_dse_read(op):
            self._reply(msg_id, root_dse_entry(starttls=self._settings.tls is not None))
            self._reply(msg_id, pureldap.LDAPSearchResultDone(resultCode=SUCCESS))
        else:
            answer = next((r for q, r in _REFUSALS.items() if isinstance(op, q)), None)
            if answer is not None:  # Abandon has no response
                self._reply(msg_id, answer(resultCode=INSUFFICIENT_ACCESS_RIGHTS))

    def _start_tls(self, msg_id: int) -> None:
        """Answer StartTLS, and on success switch the connection to TLS right after."""
        options = self._settings.tls
        if options is None:
            self._answer_start_tls(msg_id, UNAVAILABLE, "StartTLS is not configured")
        elif self.tls:
            self._answer_start_tls(msg_id, OPERATIONS_ERROR, "TLS is already in effect")
        elif self._upstream is not None:
            # Operations relayed upstream may still be outstanding: the proxy cannot tell.
            self._answer_start_tls(msg_id, OPERATIONS_ERROR, "StartTLS must precede the bind")
        elif self._buffer:
            # Requests sent behind StartTLS, in clear: never treat them as protected.
            self._answer_start_tls(msg_id, OPERATIONS_ERROR, "requests are outstanding")
        else:
            self._answer_start_tls(msg_id, SUCCESS, "")
            self.tls = True
            transport: Any = self.transport
            transport.startTLS(options)
            log.info("ldap.starttls client={client}", client=self.client)

    def _answer_start_tls(self, msg_id: int, code: int, message: str) -> None:
        response = pureldap.LDAPStartTLSResponse(
            resultCode=code,
            errorMessage=message,
            responseName=STARTTLS_OID if code == SUCCESS else None,
        )
        self._reply(msg_id, response)

    def _reply(self, msg_id: int, op: Any) -> None:
        if not self._closed and self.transport is not None:
            self.transport.write(pureldap.LDAPMessage(op, id=msg_id).toWire())

    # --- binds ---------------------------------------------------------------------------

    def _bind(self, request: BindRequest) -> None:
        self._reset()  # a bind drops the current identity, whatever its outcome
        msg_id = request.message_id
        if request.version != 3:
            self._answer_bind(msg_id, PROTOCOL_ERROR, "only LDAPv3 is supported")
            return
        if request.password is None:
            self._answer_bind(msg_id, AUTH_METHOD_NOT_SUPPORTED, "only simple binds")
            return
        if self._settings.require_tls and not self.tls:
            self._refuse("confidentiality-required", _text(request.dn) or "")
            self._answer_bind(msg_id, CONFIDENTIALITY_REQUIRED, "use StartTLS or LDAPS to bind")
            return
        if request.critical_control:
            self._answer_bind(msg_id, UNAVAILABLE_CRITICAL_EXTENSION, "")
            return
        self._binding = True
        self._generation += 1
        generation = self._generation
        if self._buffer:  # pipelined behind the bind: read no more until it is answered
            self._pause()
        decided = Deferred.fromCoroutine(self._decide(_text(request.dn), _text(request.password)))
        decided.addErrback(self._bind_failed)
        decided.addCallback(self._bound, msg_id, generation)
        decided.addErrback(self._fatal)

    def _bind_failed(self, failure: Failure) -> _Outcome:
        """Whatever went wrong deciding a bind, the client gets 49 and is not left waiting."""
        log.failure("ldap.bind.error client={client}", failure, client=self.client)
        return _REFUSED

    def _fatal(self, failure: Failure) -> None:
        log.failure("ldap.error client={client}", failure, client=self.client)
        self._drop("internal error")

    def _bound(self, outcome: _Outcome, msg_id: int, generation: int) -> None:
        if generation != self._generation or self._closed:  # the client left meanwhile
            self._close_link()  # the link this bind may have opened since (outcome.upstream)
            self._free_place()
            return
        self._binding = False
        if outcome.upstream is not None:
            self._attach(outcome.upstream, generation)
        self._answer_bind(msg_id, outcome.code, "")
        if self._paused:
            self._paused = False
            transport: Any = self.transport
            if transport is not None:
                transport.resumeProducing()
        self._drain()

    def _pause(self) -> None:
        """Stop reading from the client while a bind is decided (resumed in `_bound`).

        Only once it has sent more: most clients wait for the bind's answer, and then
        reading need not stop and start again (two epoll changes) for every bind."""
        transport: Any = self.transport
        if not self._paused and transport is not None:
            self._paused = True
            transport.pauseProducing()

    def _answer_bind(self, msg_id: int, code: int, message: str) -> None:
        if not self._closed and self.transport is not None:
            write_now(self.transport, bind_response(msg_id, code, message))

    async def _decide(self, dn: str | None, password: str | None) -> _Outcome:
        """The outcome of a simple bind; refusals are logged here with their reason."""
        if dn is None or password is None:
            return self._refuse("not-utf8", dn or "")
        if not dn:
            if password:
                return self._refuse("empty-dn-with-password", dn)
            if not self._settings.allow_anonymous:
                return self._refuse("anonymous", dn)
            return await self._open((), "", "", "anonymous", dn)
        key = dn_key(dn) if "=" in dn else None
        if key is not None and key in self._settings.passthrough:
            if not password:
                return self._refuse("empty-password", dn)
            return await self._open((), dn, password, "passthrough", dn)
        username = self._settings.mapper.username(dn)
        caller = Caller("ldap", self.client, client_address=self.client)
        if username is None:
            self._login.refuse(dn[:256], Reason.BAD_USERNAME, caller)
            return _REFUSED
        self._bound_as_user = False
        result = await self._login(username, password, caller, self._bind_user)
        decision = result.decision
        if not decision.accepted:  # SPEC 6: 49 whatever the reason, even a directory outage
            if self._bound_as_user:  # the directory took the password, the bridge did not
                self._close_link()
            return _REFUSED
        if result.dn is None or self._link is None or not self._bound_as_user:
            self._close_link()
            return self._refuse("no-bind-recorded", dn)
        if key is not None and not same_dn(dn, result.dn):
            self._close_link()
            return self._refuse("dn-mismatch", dn)
        self._log_bound("user", dn)
        return _Outcome(SUCCESS, self._link)

    async def _bind_user(self, url: str, dn: str, password: str) -> bool:
        """The login's one password check: a bind on the connection the session keeps."""
        try:
            link = await self._opener.bind_at(url, dn, password, reuse=self._link)
        except UpstreamRefusedError:
            return False
        except UpstreamUnavailableError as exc:
            self._close_link()
            raise UnavailableError(str(exc)) from exc
        self._keep_link(link)
        self._bound_as_user = True
        return True

    def _keep_link(self, link: Any) -> None:
        """`link` is the session's connection from now on (closing one it replaces)."""
        if self._link is not None and self._link is not link:
            self._link.close()
        self._link = link

    def _close_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    async def _open(
        self, urls: Sequence[str], dn: str, password: str, kind: str, bind_dn: str
    ) -> _Outcome:
        try:
            upstream = await self._opener(urls, dn, password, reuse=self._link)
        except UpstreamRefusedError:
            return self._refuse(f"{kind}-refused-upstream", bind_dn)
        except UpstreamUnavailableError as exc:
            log.warn(
                "ldap.bind.unavailable kind={kind} dn={dn} client={client} error={error}",
                kind=kind,
                dn=bind_dn,
                client=self.client,
                error=str(exc)[:200],
            )
            return _REFUSED  # SPEC 6: a failed bind is 49, whatever the reason
        self._keep_link(upstream)
        self._log_bound(kind, bind_dn)
        return _Outcome(SUCCESS, upstream)

    def _log_bound(self, kind: str, dn: str) -> None:
        log.info(
            "ldap.bind.ok kind={kind} dn={dn} client={client}", kind=kind, dn=dn, client=self.client
        )

    def _refuse(self, reason: str, dn: str) -> _Outcome:
        if self._throttle.allow(("bind.refused", reason, self.client)):
            log.info(
                "ldap.bind.refused reason={reason} dn={dn} client={client}"
                " (once a minute per reason and client)",
                reason=reason,
                dn=dn[:256],
                client=self.client,
            )
        return _REFUSED

    # --- the upstream link ---------------------------------------------------------------

    def _attach(self, upstream: Any, generation: int) -> None:
        self._upstream = upstream

        def on_pdus(data: bytes) -> None:
            if generation == self._generation and not self._closed and self.transport is not None:
                self._touch()  # a long search answering is not an idle connection
                write_now(self.transport, data)

        def on_lost() -> None:
            if generation == self._generation and self._upstream is upstream:
                self._upstream_lost()

        transport: Any = self.transport
        if transport is not None and upstream.producer is not None:
            transport.registerProducer(upstream.producer, True)
        upstream.relay(on_pdus, on_lost)

    def _upstream_lost(self) -> None:
        """The directory closed the session's connection: tell the client, then close."""
        self._upstream = self._link = None
        log.info("ldap.upstream.lost client={client}", client=self.client)
        notice = pureldap.LDAPExtendedResponse(
            resultCode=UNAVAILABLE,
            errorMessage="the directory closed the connection",
            responseName=NOTICE_OF_DISCONNECTION,
        )
        self._reply(0, notice)
        self._close()

    def _reset(self) -> None:
        """Forget the session's identity; its connection is kept for the next bind."""
        upstream, self._upstream = self._upstream, None
        if upstream is None:
            return
        transport: Any = self.transport
        if transport is not None and upstream.producer is not None:
            with contextlib.suppress(Exception):
                transport.unregisterProducer()
        upstream.detach()

    # --- closing -------------------------------------------------------------------------

    def _drop(self, why: str) -> None:
        cause = _DIGITS.sub("N", why)  # "PDU of 9999 bytes": one cause, whatever the numbers
        if self._throttle.allow(("drop", cause, self.client)):
            log.info(
                "ldap.drop reason={reason} client={client} (once a minute per reason and client)",
                reason=why,
                client=self.client,
            )
        self._reset()
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._buffer.clear()
        self._close_link()
        if self.transport is not None:
            self.transport.loseConnection()


class LdapProxyFactory(ServerFactory):
    """Builds one `LdapProxyProtocol` per connection, sharing the login and the opener.

    It counts open connections, in total and per IP address, for both listeners (plain
    and LDAPS share one factory); beyond a limit it builds no protocol, so Twisted closes
    the new connection at once. `refused` counts those.
    """

    def __init__(self, settings: Settings, login: Login, opener: Opener, reactor: Any) -> None:
        self.settings = settings
        self.login = login
        self.opener = opener
        self.reactor = reactor
        self.connections = ConnectionCounter(
            settings.max_connections, settings.max_connections_per_address
        )
        self.throttle = Throttle(reactor.seconds)  # log lines of all its connections

    @property
    def open_total(self) -> int:
        """Client connections open now (both listeners)."""
        return self.connections.open_total

    @property
    def open_by_address(self) -> dict[str, int]:
        """Client connections open now, by address."""
        return self.connections.open_by_address

    @property
    def refused(self) -> int:
        """Connections refused for the limits so far."""
        return self.connections.refused

    def buildProtocol(self, addr: Any) -> LdapProxyProtocol | None:  # noqa: N802
        """A session for a new client connection; None (close it) beyond the limits."""
        host = str(getattr(addr, "host", "unknown"))
        reason, release = self.connections.admit(host)
        if reason is not None:
            if self.throttle.allow(("connection.refused", reason, host)):
                log.warn(
                    "ldap.connection.refused reason={reason} client={client} open={open}"
                    " refused={refused}",
                    reason=reason,
                    client=host,
                    open=self.open_total,
                    refused=self.refused,
                )
            return None
        proto = LdapProxyProtocol(
            self.settings, self.login, self.opener, self.reactor, release, throttle=self.throttle
        )
        proto.factory = self
        return proto
