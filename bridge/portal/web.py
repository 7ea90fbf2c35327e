"""The portal over HTTP(S): twisted.web resources around `flows.Portal`.

Every response carries the security headers (a CSP without script, no framing, no
caching, no referrer); every form carries a CSRF token (the session's, or before sign-in
a random one also set as a cookie) and a POST without the matching token, or from
another origin, is refused with 403. The session cookie is HttpOnly and
SameSite=Strict, and Secure when the portal is reached over HTTPS.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import segno
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from bridge.connections import ConnectionCounter
from bridge.core.policy import REJECT_SPREAD
from bridge.core.selfservice import SetupResult
from bridge.core.types import Decision
from bridge.logs import Throttle
from bridge.portal import pages
from bridge.portal.flows import NewSecret, Portal, SignIn, SignInResult
from bridge.portal.sessions import Session, token

log = Logger(namespace="bridge.portal")

# What a page handler gives: the body, a Deferred of it (the store is read first), or
# NOT_DONE_YET when it answers the request itself.
Page = bytes | int | Deferred[bytes]

SESSION_COOKIE = b"mfa_session"
CSRF_COOKIE = b"mfa_csrf"
SECURE_PREFIX = b"__Host-"  # over HTTPS: host-only, Secure, Path=/; no subdomain can plant it
MAX_BODY = 8192
HEADERS = {
    b"Content-Security-Policy": b"default-src 'none'; style-src 'self'; img-src 'self'; "
    b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    b"X-Frame-Options": b"DENY",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"same-origin",  # no-referrer would make browsers send Origin: null
    b"Cache-Control": b"no-store",
    b"Pragma": b"no-cache",
    b"Cross-Origin-Opener-Policy": b"same-origin",
}

SIGN_IN_MESSAGES = {
    SignInResult.CODE_REQUIRED: "MFA is set up for your account: enter the 6-digit code too.",
    SignInResult.WRONG_CODE: "That code is not right (or was used already). Try the next one.",
    SignInResult.NOT_ENROLLED: "MFA must be set up for you by IT before you can sign in.",
    SignInResult.FAILED: "Sign-in failed. Check your user name and password.",
    SignInResult.LIMITED: "Too many attempts. Wait a few minutes, then try again.",
}


def _form(request: Request) -> dict[str, str]:
    """The fields of a POSTed form, from the body only (never from the URL, which proxies log)."""
    cached = getattr(request, "_portal_form", None)
    if cached is not None:
        return dict(cached)
    content = request.content
    raw = content.read() if content is not None else b""
    fields: dict[str, str] = {}
    try:
        for name, value in parse_qsl(raw.decode("utf-8"), keep_blank_values=True):
            fields.setdefault(name, value)
    except UnicodeDecodeError:
        fields = {}
    request._portal_form = fields  # type: ignore[attr-defined]
    return fields


def _arg(request: Request, name: str) -> str:
    return _form(request).get(name, "")


class LimitedRequest(Request):
    """A request whose body may not exceed MAX_BODY: the connection is dropped past it.

    Twisted reads a whole body before rendering; this stops a big one (declared, or
    chunked without a length) while it arrives, instead of buffering it.
    """

    _received = 0

    def gotLength(self, length: int | None) -> None:  # noqa: N802 - Twisted's name
        """Refuse a declared length over the limit before reading any of it."""
        if length is not None and length > MAX_BODY:
            self._drop()
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        """Count what arrives; drop the connection once it passes the limit."""
        self._received += len(data)
        if self._received > MAX_BODY:
            self._drop()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def _drop(self) -> None:
        transport: Any = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.abortConnection()


def _qr_svg(uri: str) -> str:
    svg: str = segno.make(uri, error="m").svg_inline(scale=5, border=2, dark="#1d2430")
    return svg


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client, and all of them, may hold of the portal (`portal.*` keys)."""

    max_connections: int = 256
    max_connections_per_address: int = 16
    request_timeout: float = 10.0  # for a request's headers and body, from its first byte
    idle_timeout: float = 30.0  # for a kept-alive connection's next request
    failure_delay: float = 0.0  # a failed sign-in is answered this long after it came


class PortalChannel(http.HTTPChannel):
    """An HTTP connection with a deadline for each request as a whole.

    Twisted's own timeout restarts with every byte, so a request trickling in a line every
    few seconds would hold its descriptor for ever; here it has `request_timeout` seconds
    from its first byte to its last, and is cut off after.
    """

    request_timeout = 10.0
    clock: Any = None  # the site's reactor (IReactorTime)
    released: Callable[[], None] | None = None  # the site's count of open connections
    _deadline: Any = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        """Start the request's deadline with its first byte."""
        if self._deadline is None and not getattr(self, "_handlingRequest", False):
            self._deadline = self.clock.callLater(self.request_timeout, self._too_slow)
        http.HTTPChannel.dataReceived(self, data)

    def allContentReceived(self) -> None:  # noqa: N802 - Twisted's name
        """The whole request is in: its deadline is met."""
        self._cancel_deadline()
        http.HTTPChannel.allContentReceived(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """Forget the deadline and free the connection's place."""
        self._cancel_deadline()
        released, self.released = self.released, None
        if released is not None:
            released()
        http.HTTPChannel.connectionLost(self, reason)

    def _too_slow(self) -> None:
        self._deadline = None
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _cancel_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()


class PortalSite(Site):
    """The portal's Site: connections limited in all and per address; no request log."""

    def __init__(
        self,
        resource: Resource,
        limits: Limits,
        trusted_proxies: tuple[Any, ...] = (),
        **kwargs: Any,
    ) -> None:
        Site.__init__(self, resource, timeout=limits.idle_timeout, **kwargs)
        self._trusted_proxies = trusted_proxies  # their connections carry many clients
        self.protocol = PortalChannel  # type: ignore[assignment] # HTTP/1.1 only
        self.limits = limits
        self.connections = ConnectionCounter(
            limits.max_connections, limits.max_connections_per_address
        )
        self._throttle = Throttle(self.reactor.seconds)

    @property
    def open_total(self) -> int:
        """Connections open now."""
        return self.connections.open_total

    @property
    def refused(self) -> int:
        """Connections refused for the limits so far."""
        return self.connections.refused

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted's name
        """A connection, or None (closed at once) beyond the limits."""
        host = str(getattr(addr, "host", "unknown"))
        shared = bool(self._trusted_proxies) and _within(host, self._trusted_proxies)
        reason, release = self.connections.admit(host, shared=shared)
        if reason is not None:
            if self._throttle.allow((reason, host)):
                log.warn(
                    "portal.connection.refused reason={reason} client={client} open={open}"
                    " refused={refused} (once a minute per reason and client)",
                    reason=reason,
                    client=host,
                    open=self.open_total,
                    refused=self.refused,
                )
            return None
        channel: Any = Site.buildProtocol(self, addr)
        channel.request_timeout = self.limits.request_timeout
        channel.clock = self.reactor
        channel.released = release
        return channel

    def log(self, request: http.Request) -> None:
        """Requests are not logged: URLs and addresses are in the audit lines that matter."""


class PortalResource(Resource):
    """All of the portal's pages under one resource, dispatched by path and method."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def __init__(
        self,
        portal: Portal,
        *,
        secure: bool,
        trusted_proxies: tuple[Any, ...] = (),
        clock: Any = None,
        failure_delay: float = 0.0,
    ) -> None:
        Resource.__init__(self)
        self._portal = portal
        self._clock = clock  # IReactorTime, for failure_delay
        self._failure_delay = failure_delay if clock is not None else 0.0
        self._secure = secure
        self._trusted_proxies = trusted_proxies
        prefix = SECURE_PREFIX if secure else b""
        self._session_cookie = prefix + SESSION_COOKIE
        self._csrf_cookie = prefix + CSRF_COOKIE
        self._routes: dict[tuple[bytes, bytes], Callable[[Request], Page]] = {
            (b"GET", b"/"): self._home,
            (b"POST", b"/sign-in"): self._sign_in,
            (b"POST", b"/sign-out"): self._sign_out,
            (b"GET", b"/static/portal.css"): self._stylesheet,
        }
        # Pages for a signed-in user only: without a session they send the browser to "/".
        self._session_routes: dict[tuple[bytes, bytes], Callable[[Request, Session], Page]] = {
            (b"GET", b"/setup"): self._setup_page,
            (b"POST", b"/setup"): self._setup_confirm,
            (b"GET", b"/reset"): self._reset_page,
            (b"POST", b"/reset"): self._reset_prove,
        }

    # --- dispatch ------------------------------------------------------------------------

    def render(self, request: Request) -> bytes | int:
        """Headers first, then the page for this method and path (404, 405 otherwise)."""
        for name, value in HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"Server", b"mfa-bridge")  # not Twisted's name and version
        if self._secure:
            request.setHeader(b"Strict-Transport-Security", b"max-age=31536000")
        path = request.path or b"/"
        method = request.method or b"GET"
        key = (b"GET" if method == b"HEAD" else method, path)
        handler = self._routes.get(key)
        session_handler = self._session_routes.get(key)
        if handler is None and session_handler is None:
            allowed = [m for m, p in [*self._routes, *self._session_routes] if p == path]
            if not allowed:
                request.setResponseCode(404)
                return self._html(request, pages.message("Not found", "There is no such page."))
            request.setResponseCode(405)
            request.setHeader(b"Allow", b", ".join(allowed))
            return self._html(request, pages.message("Not allowed", "Use the page's form."))
        if handler == self._stylesheet:
            return self._stylesheet(request)
        cookie = request.getCookie(self._session_cookie)
        session_id = cookie.decode("ascii", "replace") if cookie else None
        found = self._portal.session(session_id)  # where the store's calls run

        def route(session: Session | None) -> Page:
            request._portal_session = session  # type: ignore[attr-defined]
            if method == b"POST":
                refusal = self._refuse_post(request)
                if refusal is not None:
                    return refusal
            if handler is not None:
                return handler(request)
            assert session_handler is not None
            if session is None:
                return self._redirect(request, b"/")
            return session_handler(request, session)

        return self._later(request, found, route)

    def _refuse_post(self, request: Request) -> bytes | None:
        """A POST that is too big, from another origin, or without the right CSRF token."""
        length = request.getHeader(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            request.setResponseCode(413)
            return self._html(request, pages.message("Too large", "That request is too large."))
        if not self._same_origin(request):
            return self._forbidden(request)
        session = self._session(request)
        if session is not None:
            expected = session.csrf
        else:
            expected = self._form_token(request, request.getCookie(self._csrf_cookie) or b"")
        sent = _arg(request, "csrf")
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            return self._forbidden(request)
        return None

    @staticmethod
    def _same_origin(request: Request) -> bool:
        """No sign that the form was sent from another site (Origin, Sec-Fetch-Site)."""
        if request.getHeader(b"sec-fetch-site") in (b"cross-site", b"same-site"):
            return False
        origin = request.getHeader(b"origin")
        if origin is None:
            return True  # not a browser, or an old one: the CSRF token still has to match
        try:
            return bool(urlsplit(origin).netloc == request.getHeader(b"host"))
        except ValueError:
            return False

    def _forbidden(self, request: Request) -> bytes:
        request.setResponseCode(403)
        page = pages.message(
            "Please try again",
            "This form has expired or did not come from this page. Go back and send it again.",
        )
        return self._html(request, page)

    # --- helpers -------------------------------------------------------------------------

    def _html(self, request: Request, body: bytes) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return body

    def _redirect(self, request: Request, to: bytes) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"Location", to)
        return b""

    @staticmethod
    def _session(request: Request) -> Session | None:
        """The request's live session (looked up once, before the page: see `render`)."""
        found: Session | None = getattr(request, "_portal_session", None)
        return found

    def _client(self, request: Request) -> str:
        """The client's address; behind a trusted proxy, the one it saw (X-Forwarded-For).

        Only the last hop is believed, and only from a configured proxy: anyone else could
        write any address into the header to escape the per-address limit.
        """
        peer = str(getattr(request.getClientAddress(), "host", "unknown"))
        if not self._trusted_proxies or not _within(peer, self._trusted_proxies):
            return peer
        forwarded = request.getHeader(b"x-forwarded-for")
        if not forwarded:
            return peer
        last = forwarded.decode("ascii", "replace").rsplit(",", 1)[-1].strip()
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            return peer

    def _set_cookie(
        self, request: Request, name: bytes, value: str, *, expire: bool = False
    ) -> None:
        request.addCookie(
            name,
            value.encode() if value else b"",
            path=b"/",
            httpOnly=True,
            secure=self._secure,
            sameSite="strict",
            max_age=b"0" if expire else None,
        )

    def _sign_in_page(self, request: Request, message: str = "", username: str = "") -> bytes:
        nonce = request.getCookie(self._csrf_cookie) or b""
        if not nonce:
            fresh = token()
            self._set_cookie(request, self._csrf_cookie, fresh)
            nonce = fresh.encode()
        csrf = self._form_token(request, nonce)
        return self._html(request, pages.sign_in(csrf, message=message, username=username))

    def _form_token(self, request: Request, nonce: bytes) -> str:
        """The sign-in form's CSRF token: a MAC of the cookie's nonce and the client's address.

        An attacker can fetch the form and learn the token for a nonce of theirs, but only
        for their own address: planted in a victim's browser, the pair does not hold.
        """
        if not nonce:
            return ""
        return self._portal.form_token(nonce, self._client(request))

    def _later(self, request: Request, d: Deferred[Any], done: Callable[[Any], Any]) -> int:
        """Answer when `d` fires (unless the client has gone).

        `done` gives the page: bytes, a Deferred of them, or NOT_DONE_YET when it has
        taken the request over itself.
        """
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _r: finished.append(True))

        def write(result: Any) -> Deferred[None] | None:
            if finished:
                return None
            body = done(result)
            if isinstance(body, Deferred):
                return body.addCallback(send)
            if body is not NOT_DONE_YET:
                send(body)
            return None

        def send(body: bytes) -> None:
            if not finished:
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> None:
            log.failure("portal.error", failure)
            if finished:
                return
            request.setResponseCode(500)
            request.write(self._html(request, pages.message("Error", "Something went wrong.")))
            request.finish()

        d.addCallback(write).addErrback(failed)
        return NOT_DONE_YET

    # --- pages ---------------------------------------------------------------------------

    def _home(self, request: Request) -> bytes | Deferred[bytes]:
        session = self._session(request)
        if session is None:
            return self._sign_in_page(request)
        return self._status(request, session)

    def _status(self, request: Request, session: Session, message: str = "") -> Deferred[bytes]:
        def page(view: dict[str, Any]) -> bytes:
            body = pages.status(
                session.username,
                view["state"],
                view["deadline"],
                view["days_left"],
                session.csrf,
                message=message,
            )
            return self._html(request, body)

        return self._portal.status(session).addCallback(page)

    def _sign_in(self, request: Request) -> int:
        username = _arg(request, "username")
        arrived = self._clock.seconds() if self._failure_delay else 0.0
        d = self._portal.sign_in(
            username, _arg(request, "password"), _arg(request, "code"), self._client(request)
        )
        if self._failure_delay:  # spread at random as RADIUS rejects are (REJECT_SPREAD)
            spread = 1 + REJECT_SPREAD * secrets.randbelow(65536) / 65536
            d.addCallback(self._not_before, arrived + self._failure_delay * spread)
        return self._later(request, d, lambda result: self._signed_in(request, result, username))

    def _not_before(self, result: SignIn, when: float) -> SignIn | Deferred[SignIn]:
        """A failed sign-in is answered at `when` (its arrival plus failure_delay), however
        long the directory took: the time tells nothing of why it failed."""
        wait = when - self._clock.seconds()
        if result.result in (SignInResult.OK, SignInResult.LIMITED) or wait <= 0:
            return result  # a limited sign-in is refused before any check: nothing to hide
        return deferLater(self._clock, wait, lambda: result)

    def _signed_in(self, request: Request, result: SignIn, username: str) -> bytes:
        if result.result is SignInResult.OK and result.session is not None:
            self._set_cookie(request, self._session_cookie, result.session.id)
            self._set_cookie(request, self._csrf_cookie, "", expire=True)
            return self._redirect(request, b"/")
        if result.result is SignInResult.LOCKED:
            lock = result.decision.lock_reason if result.decision else None
            return self._html(request, pages.locked(lock.value if lock else None))
        if result.result is SignInResult.LIMITED:
            request.setResponseCode(429)
        return self._sign_in_page(request, SIGN_IN_MESSAGES[result.result], username)

    def _sign_out(self, request: Request) -> bytes | Deferred[bytes]:
        session = self._session(request)
        self._set_cookie(request, self._session_cookie, "", expire=True)
        if session is None:
            return self._redirect(request, b"/")
        return self._portal.sign_out(session).addCallback(lambda _: self._redirect(request, b"/"))

    def _setup_page(self, request: Request, session: Session, message: str = "") -> Deferred[bytes]:
        def page(secret: NewSecret | SetupResult) -> bytes:
            if secret is SetupResult.PROOF_REQUIRED:
                return self._redirect(request, b"/reset")
            if not isinstance(secret, NewSecret):  # locked meanwhile
                return self._html(request, pages.locked(None))
            body = pages.setup(_qr_svg(secret.uri), secret.key, session.csrf, message=message)
            return self._html(request, body)

        return self._portal.new_secret(session).addCallback(page)

    def _setup_confirm(self, request: Request, session: Session) -> Deferred[bytes]:
        def page(result: SetupResult | None) -> Deferred[bytes]:
            if result is None:
                request.setResponseCode(429)
                return self._setup_page(request, session, SIGN_IN_MESSAGES[SignInResult.LIMITED])
            if result is SetupResult.CONFIRMED:
                done = (
                    "MFA is set up. From now on, sign in with your password and a code from"
                    " the app."
                )
                return self._status(request, session, done)
            if result is SetupResult.WRONG_CODE:
                wrong = (
                    "That code does not match. Check the app shows this account, then try again."
                )
                return self._setup_page(request, session, wrong)
            return self._setup_page(request, session)

        confirmed = self._portal.confirm(session, _arg(request, "code"), self._client(request))
        return confirmed.addCallback(page)

    def _reset_page(self, request: Request, session: Session, message: str = "") -> bytes:
        return self._html(request, pages.reset(session.csrf, message=message))

    def _reset_prove(self, request: Request, session: Session) -> Deferred[bytes]:
        def page(decision: Decision | None) -> bytes | Deferred[bytes]:
            if decision is None:
                request.setResponseCode(429)
                return self._reset_page(request, session, SIGN_IN_MESSAGES[SignInResult.LIMITED])
            if decision.accepted:
                return self._redirect(request, b"/setup")
            if decision.lock_reason is not None:
                locked = self._html(request, pages.locked(decision.lock_reason.value))
                return self._portal.sign_out(session).addCallback(lambda _: locked)
            return self._reset_page(request, session, SIGN_IN_MESSAGES[SignInResult.WRONG_CODE])

        proved = self._portal.prove_device(session, _arg(request, "code"), self._client(request))
        return proved.addCallback(page)

    def _stylesheet(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/css; charset=utf-8")
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return pages.STYLESHEET.encode()


def _within(address: str, networks: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def make_site(
    portal: Portal,
    *,
    secure: bool,
    trusted_proxies: tuple[Any, ...] = (),
    limits: Limits | None = None,
    reactor: Any = None,
) -> PortalSite:
    """The portal as a twisted.web Site."""
    limits = limits or Limits()
    resource = PortalResource(
        portal,
        secure=secure,
        trusted_proxies=trusted_proxies,
        clock=reactor,
        failure_delay=limits.failure_delay,
    )
    extra = {} if reactor is None else {"reactor": reactor}
    site = PortalSite(resource, limits, trusted_proxies, **extra)
    site.requestFactory = LimitedRequest
    site.displayTracebacks = False
    return site
