"""The proxy's connection to the directory for one client session.

A `Link` is opened for the first bind of a session: it connects (ldaps://, or ldap://
with StartTLS when the directory section asks for it, the certificate chain and host
name verified) and binds. The bind of a user is the login's one password check. Between
binds it relays whole PDUs from the directory back to the client untouched, so results,
referrals, controls and intermediate responses reach the client exactly as the
directory sent them. A later bind on the same session rebinds the same connection (the
directory resets its identity), which saves a TCP connection per bind for the apps that
bind user after user on one connection. Only the proxy's own StartTLS and binds are
encoded and decoded here (binds by `ber`, StartTLS with ldaptor), under message IDs
counted down from the top of the range so they never meet a client's. Nothing blocks:
Twisted's TCP and TLS, no threads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ldaptor.protocols import pureldap
from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.config import DirectoryConfig
from bridge.ldap_proxy.ber import bind_request, message_id, result_code, unbind_request
from bridge.ldap_proxy.framing import FramingError, complete_prefix, pdu_size
from bridge.ldap_proxy.sockets import no_delay, write_now

log = Logger(namespace="bridge.ldap")

SUCCESS = 0
MAX_MESSAGE_ID = 2**31 - 1  # the proxy's own requests count down from here
# Bind answers that mean "not this identity", as opposed to "cannot answer now".
_REFUSING_CODES = frozenset({19, 32, 48, 49, 50, 53})
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


class UpstreamError(Exception):
    """Opening or binding the upstream connection failed."""


class UpstreamRefusedError(UpstreamError):
    """The directory refused the bind (wrong password, unknown DN, ...)."""


class UpstreamUnavailableError(UpstreamError):
    """No directory server could be reached, or TLS failed: fail closed."""


OnPdus = Callable[[bytes], None]
OnLost = Callable[[], None]


class Link(Protocol):
    """One upstream connection: a short handshake (StartTLS, bind), then a relay."""

    def __init__(self, url: str = "") -> None:
        self.url = url
        self._buffer = bytearray()
        self._waiter: Deferred[Any] | None = None
        self._waiting_for = 0
        self._on_pdus: OnPdus | None = None
        self._on_lost: OnLost | None = None
        self._next_id = MAX_MESSAGE_ID
        self.closed = False

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        """Send small LDAP messages at once (Nagle would hold them for the peer's ACK)."""
        no_delay(self.transport)

    # --- the handshake -------------------------------------------------------------------

    def request(self, encode: Callable[[int], bytes]) -> Deferred[int]:
        """Send one of the proxy's own requests (`encode` of a message ID); fires with the
        response's result code."""
        msg_id, self._next_id = self._next_id, self._next_id - 1
        waiter: Deferred[int] = Deferred(lambda _d: self.abort())
        self._waiter, self._waiting_for = waiter, msg_id
        assert self.transport is not None  # connected before any request
        write_now(self.transport, encode(msg_id))
        return waiter

    def _answer(self) -> None:
        """Read whole responses until the one the proxy waits for has come.

        Others are late answers to a client's requests from before a rebind: they go to
        the relay (whose session drops what belongs to an identity it has left).
        """
        while self._waiter is not None:
            size = pdu_size(self._buffer)
            if size is None or len(self._buffer) < size:
                return
            pdu = bytes(self._buffer[:size])
            del self._buffer[:size]
            if message_id(pdu) != self._waiting_for:
                if self._on_pdus is not None:
                    self._on_pdus(pdu)
                continue
            answer = result_code(pdu)
            if answer is None:
                raise FramingError("undecodable response")
            waiter, self._waiter = self._waiter, None
            if not waiter.called:
                waiter.callback(answer[1])
        self._forward()

    # --- the relay -----------------------------------------------------------------------

    def relay(self, on_pdus: OnPdus, on_lost: OnLost) -> None:
        """From now on every whole PDU from the directory goes to `on_pdus`, as bytes."""
        self._on_pdus, self._on_lost = on_pdus, on_lost
        self._forward()

    def detach(self) -> None:
        """Stop relaying: the session's identity is gone (a new bind is coming)."""
        self._on_pdus = self._on_lost = None

    def send(self, pdu: bytes) -> None:
        """Pass a client's request on, exactly as the client encoded it."""
        if not self.closed and self.transport is not None:
            write_now(self.transport, pdu)

    @property
    def producer(self) -> Any:
        """The transport, to pause when the client reads slower than the directory writes."""
        return self.transport

    def close(self) -> None:
        """Unbind and disconnect (the session ended or changed identity)."""
        if self.closed:
            return
        self.closed = True
        self._on_pdus = self._on_lost = None
        if self.transport is not None:
            self.transport.write(unbind_request(self._next_id))
            self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection now (a timeout, a protocol error)."""
        self.closed = True
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _forward(self) -> None:
        end = complete_prefix(self._buffer)
        if end and self._on_pdus is not None:
            chunk = bytes(self._buffer[:end])
            del self._buffer[:end]
            self._on_pdus(chunk)

    # --- Protocol ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        """Handshake replies are decoded; in relay mode whole PDUs are passed on."""
        self._buffer += data
        try:
            if self._waiter is not None:
                self._answer()
            else:
                self._forward()
        except Exception as exc:  # anything undecodable ends the link
            log.warn("ldap.upstream.malformed error={error}", error=str(exc)[:200])
            waiter, self._waiter = self._waiter, None
            self.abort()
            if waiter is not None and not waiter.called:
                waiter.errback(UpstreamUnavailableError(f"malformed response: {exc}"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """Fail the handshake, or tell the session its upstream is gone."""
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.called:
            waiter.errback(UpstreamUnavailableError(f"connection lost: {reason.getErrorMessage()}"))
        on_lost, self._on_pdus, self._on_lost = self._on_lost, None, None
        if on_lost is not None:
            on_lost()


def _trust_root(ca_file: Path | None) -> Any:
    """The CA bundle from the directory section, or the system's trust store."""
    if ca_file is None:
        return ssl.platformTrust()  # type: ignore[no-untyped-call]
    pems = _PEM_CERTIFICATE.findall(ca_file.read_bytes())
    if not pems:
        raise ValueError(f"no certificate in {ca_file}")
    certificates = [ssl.Certificate.loadPEM(pem) for pem in pems]
    return ssl.trustRootFromCertificates(certificates)  # type: ignore[no-untyped-call]


class _Quiet(Factory):
    """Twisted's `connectProtocol` factory without its two log lines ("Starting factory",
    "Stopping factory") per connection: a connection per client session made them ~6 % of
    the proxy's CPU for apps that connect per login."""

    noisy = False

    def __init__(self, link: Link) -> None:
        self._link = link

    def buildProtocol(self, addr: Any) -> Link:  # noqa: N802 - Twisted's name
        return self._link


class Opener:
    """Bound links to the configured directory servers, in order (failover)."""

    def __init__(self, config: DirectoryConfig, reactor: Any) -> None:
        self._config = config
        self._reactor = reactor
        needs_tls = config.start_tls or any(u.lower().startswith("ldaps:") for u in config.urls)
        self._trust = _trust_root(config.ca_file) if needs_tls else None

    def __call__(
        self, urls: Sequence[str], dn: str, password: str, reuse: Link | None = None
    ) -> Deferred[Link]:
        """A link bound as `dn`: servers in `urls` first, then the configured order.

        `reuse`, an open link of the session, is rebound rather than a new connection
        opened when its server is among them. Fails with UpstreamRefusedError (a reused
        link stays open, bound as nobody) or UpstreamUnavailableError.
        """
        return Deferred.fromCoroutine(self._open_any(urls, dn, password, reuse))

    def bind_at(
        self, url: str, dn: str, password: str, reuse: Link | None = None
    ) -> Deferred[Link]:
        """The same at `url` alone: the directory's failover has chosen the server."""
        return Deferred.fromCoroutine(self._at(url, dn, password, reuse))

    async def _open_any(
        self, urls: Sequence[str], dn: str, password: str, reuse: Link | None
    ) -> Link:
        ordered = list(dict.fromkeys([*urls, *self._config.urls]))
        if reuse is not None and not reuse.closed and reuse.url in ordered:
            ordered.remove(reuse.url)
            ordered.insert(0, reuse.url)
        last: Exception = UpstreamUnavailableError("no directory server configured")
        for url in ordered:
            try:
                return await self._at(url, dn, password, reuse)
            except UpstreamRefusedError:
                raise
            except UpstreamUnavailableError as exc:
                last = exc
        raise last

    async def _at(self, url: str, dn: str, password: str, reuse: Link | None) -> Link:
        attempt = Deferred.fromCoroutine(self._bind(url, dn, password, reuse))
        attempt.addTimeout(self._config.timeout, self._reactor)
        try:
            return await attempt
        except UpstreamRefusedError:
            raise
        except (UpstreamError, OSError, TimeoutError, CancelledError) as exc:
            error = exc if isinstance(exc, UpstreamError) else UpstreamUnavailableError(str(exc))
            log.warn(
                "ldap.upstream.unavailable server={server} error={error}",
                server=url,
                error=str(error)[:200],
            )
            raise error from exc

    async def _bind(self, url: str, dn: str, password: str, reuse: Link | None) -> Link:
        link = reuse if reuse is not None and not reuse.closed and reuse.url == url else None
        if link is None:
            link = await self._connect(url)
        try:
            # TLS (if any) completes before this is sent: a failed check sends nothing.
            code = await link.request(lambda msg_id: bind_request(msg_id, dn, password))
        except BaseException:
            link.abort()
            raise
        if code == SUCCESS:
            return link
        if code in _REFUSING_CODES:
            if link is not reuse:
                link.close()
            raise UpstreamRefusedError(f"bind refused ({code})")
        link.close()
        raise UpstreamUnavailableError(f"bind failed ({code})")

    def _tls_options(self, host: str) -> Any:
        return ssl.optionsForClientTLS(
            host,
            trustRoot=self._trust,
            extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
        )

    async def _start_tls(self, link: Link, host: str) -> None:
        code = await link.request(
            lambda msg_id: pureldap.LDAPMessage(pureldap.LDAPStartTLSRequest(), id=msg_id).toWire()
        )
        if code != SUCCESS:
            raise UpstreamUnavailableError(f"StartTLS refused ({code})")
        transport: Any = link.transport
        transport.startTLS(self._tls_options(host))

    async def _connect(self, url: str) -> Link:
        """A new connection to `url`, TLS set up when configured, not yet bound."""
        parts = urlsplit(url)
        host, secure = parts.hostname or "", parts.scheme.lower() == "ldaps"
        port = parts.port or (636 if secure else 389)
        endpoint: Any
        if isIPAddress(host):  # no resolver round trip (a thread) for an IPv4 address
            endpoint = TCP4ClientEndpoint(self._reactor, host, port, timeout=self._config.timeout)
        else:
            endpoint = HostnameEndpoint(self._reactor, host, port, timeout=self._config.timeout)
        if secure:
            endpoint = wrapClientTLS(self._tls_options(host), endpoint)
        try:
            link: Link = await endpoint.connect(_Quiet(Link(url)))
        except Exception as exc:
            raise UpstreamUnavailableError(f"connect: {exc}") from exc
        if self._config.start_tls and not secure:
            try:
                await self._start_tls(link, host)
            except BaseException:
                link.abort()
                raise
        return link
