"""The upstream directory: find a user with the service account, bind as them.

ldap3 is blocking, so every call here runs on a bounded Twisted thread pool: the reactor
never waits on the network. Each worker thread keeps two connections per server (one
bound as the service account for searches, one that is re-bound as each user) so a login
costs one search and one bind, with no new TCP or TLS handshake. Threads never touch
transports or the store; they return a `BindResult`.
"""

from __future__ import annotations

import contextlib
import math
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPCertificateError, LDAPException
from ldap3.utils.conv import escape_filter_chars
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from bridge.config import DirectoryConfig

log = Logger(namespace="bridge.directory")

HOLD_DOWN_SECONDS = 30.0


class BindStatus(StrEnum):
    """How the directory answered a login."""

    OK = "ok"
    BAD_PASSWORD = "bad-password"  # noqa: S105 - a status, not a password
    UNKNOWN_USER = "unknown-user"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class BindResult:
    """The directory's answer; `in_exempt_group` is only looked up after a good bind."""

    status: BindStatus
    dn: str | None = None
    in_exempt_group: bool = False
    server: str | None = None


class _UnavailableError(Exception):
    """This server cannot answer now: try the next one."""


@dataclass(frozen=True, slots=True)
class _Server:
    url: str
    server: ldap3.Server


class _Session:
    """One worker thread's connections to one server."""

    def __init__(self, server: _Server, config: DirectoryConfig) -> None:
        self.server = server
        self._config = config
        self.service = self._connect(config.bind_dn, config.bind_password)
        if not self.service.bind():
            self.service.unbind()
            raise _UnavailableError(
                f"service account bind refused: {self.service.result['description']}"
            )
        self._user: ldap3.Connection | None = None

    def _connect(self, user: str | None, password: str | None) -> ldap3.Connection:
        conn = ldap3.Connection(
            self.server.server,
            user=user,
            password=password,
            client_strategy=ldap3.SYNC,
            auto_bind=ldap3.AUTO_BIND_NONE,
            raise_exceptions=False,
            receive_timeout=max(1, math.ceil(self._config.timeout)),
            read_only=True,
            auto_referrals=False,
            check_names=True,
        )
        try:
            conn.open()
            secured = not self._config.start_tls or conn.start_tls()
        except BaseException:
            with contextlib.suppress(Exception):  # the socket is closed whatever went wrong
                conn.unbind()
            raise
        if not secured:
            conn.unbind()
            raise _UnavailableError("StartTLS failed")
        return conn

    def find(self, username: str) -> str | None:
        """The DN of the one entry matching the user filter, None for none or several."""
        query = self._config.user_filter.replace("{username}", escape_filter_chars(username))
        ok = self.service.search(
            self._config.user_base,
            query,
            search_scope=ldap3.SUBTREE,
            attributes=[],
            size_limit=2,
            time_limit=int(self._config.timeout) or 1,
        )
        if not ok and self.service.result.get("result") not in (0, 4, 32):
            raise _UnavailableError(f"search failed: {self.service.result.get('description')}")
        entries = [r for r in self.service.response or [] if r.get("type") == "searchResEntry"]
        if len(entries) != 1:
            if len(entries) > 1:
                log.warn("user filter matched several entries: {count}", count=len(entries))
            return None
        dn: str = entries[0]["dn"]
        return dn

    def bind_user(self, dn: str, password: str) -> bool:
        """Whether the directory accepts `password` for `dn` (one simple bind)."""
        if self._user is None:
            self._user = self._connect(None, None)
        try:
            ok: bool = self._user.rebind(user=dn, password=password, read_server_info=False)
        except LDAPException:
            self._user = None
            raise
        if not ok and self._user.result.get("result") in (51, 52, 80):
            raise _UnavailableError(f"bind: {self._user.result.get('description')}")
        return ok

    def member_of_any(self, dn: str, username: str, groups: tuple[str, ...]) -> bool:
        """Whether `dn` is a member of one of `groups` (searched as the service account)."""
        for group in groups:
            query = self._config.group_filter.replace("{dn}", escape_filter_chars(dn)).replace(
                "{username}", escape_filter_chars(username)
            )
            ok = self.service.search(
                group, query, search_scope=ldap3.BASE, attributes=[], size_limit=1
            )
            if ok and self.service.response:
                return True
        return False

    def close(self) -> None:
        for conn in (self.service, self._user):
            if conn is not None:
                with contextlib.suppress(LDAPException):
                    conn.unbind()


class _VerifiedTls(ldap3.Tls):  # type: ignore[misc]  # ldap3 is untyped
    """TLS for ldap3 where OpenSSL checks chain and host name (ldap3's check breaks on 3.12+)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._context = context

    def wrap_socket(self, connection: ldap3.Connection, do_handshake: bool = False) -> None:
        """Wrap the connection's socket (ldaps:// on open, or after StartTLS succeeded)."""
        try:
            connection.socket = self._context.wrap_socket(
                connection.socket,
                do_handshake_on_connect=do_handshake,
                server_hostname=connection.server.host,
            )
        except ssl.SSLCertVerificationError as exc:  # ldap3 logs str(): keep OpenSSL's reason
            raise LDAPCertificateError(f"certificate verify failed: {exc.verify_message}") from exc


def _make_server(url: str, config: DirectoryConfig) -> _Server:
    parts = urlsplit(url)
    secure = parts.scheme == "ldaps"
    tls = None
    if secure or config.start_tls:
        context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        tls = _VerifiedTls(context)
    server = ldap3.Server(
        parts.hostname or "",
        port=parts.port or (636 if secure else 389),
        use_ssl=secure,
        tls=tls,
        get_info=ldap3.NONE,
        connect_timeout=config.timeout,
    )
    return _Server(url, server)


class Directory:
    """Logins against the configured servers, in order, with failover."""

    def __init__(
        self,
        config: DirectoryConfig,
        exempt_groups: tuple[str, ...],
        reactor: IReactorFromThreads,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._exempt_groups = exempt_groups
        self._reactor = reactor
        self._monotonic = monotonic
        self._servers = [_make_server(url, config) for url in config.urls]
        self._down_until: dict[str, float] = {}
        self._local = threading.local()
        self._sessions: list[_Session] = []
        self._lock = threading.Lock()
        self.pool = ThreadPool(minthreads=0, maxthreads=config.pool_size, name="directory")

    def start(self) -> None:
        """Start the worker threads."""
        self.pool.start()

    def stop(self) -> None:
        """Stop the workers and close every connection."""
        self.pool.stop()
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def authenticate(self, username: str, password: str) -> Deferred[BindResult]:
        """Find `username` and bind as them with `password`, off the reactor thread."""
        if not password:  # an empty password is an anonymous bind at many directories
            return succeed(BindResult(BindStatus.BAD_PASSWORD))
        return deferToThreadPool(self._reactor, self.pool, self._authenticate, username, password)

    def probe(self) -> Deferred[BindResult]:
        """Reach a server and bind the service account (start-up and health checks)."""
        return deferToThreadPool(self._reactor, self.pool, self._probe)

    def _probe(self) -> BindResult:
        for server in self._ordered():
            try:
                self._session(server)
            except (_UnavailableError, LDAPException) as exc:
                self._failed(server, exc)
                continue
            return BindResult(BindStatus.OK, server=server.url)
        return BindResult(BindStatus.UNAVAILABLE)

    def _authenticate(self, username: str, password: str) -> BindResult:
        for server in self._ordered():
            try:
                session = self._session(server)
                dn = session.find(username)
                if dn is None:
                    return BindResult(BindStatus.UNKNOWN_USER, server=server.url)
                if not session.bind_user(dn, password):
                    return BindResult(BindStatus.BAD_PASSWORD, dn, server=server.url)
                exempt = bool(self._exempt_groups) and session.member_of_any(
                    dn, username, self._exempt_groups
                )
            except (_UnavailableError, LDAPException) as exc:
                self._failed(server, exc)
                continue
            self._down_until.pop(server.url, None)
            return BindResult(BindStatus.OK, dn, in_exempt_group=exempt, server=server.url)
        return BindResult(BindStatus.UNAVAILABLE)

    def _ordered(self) -> list[_Server]:
        """Servers in configured order, those recently failed last (still tried)."""
        now = self._monotonic()
        up = [s for s in self._servers if self._down_until.get(s.url, 0.0) <= now]
        return up + [s for s in self._servers if s not in up]

    def _session(self, server: _Server) -> _Session:
        sessions: dict[str, _Session] = self._local.__dict__.setdefault("sessions", {})
        session = sessions.get(server.url)
        if session is None:
            session = _Session(server, self._config)
            sessions[server.url] = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _failed(self, server: _Server, exc: Exception) -> None:
        sessions: dict[str, _Session] = self._local.__dict__.setdefault("sessions", {})
        session = sessions.pop(server.url, None)
        if session is not None:
            with self._lock:
                if session in self._sessions:
                    self._sessions.remove(session)
            session.close()
        self._down_until[server.url] = self._monotonic() + HOLD_DOWN_SECONDS
        log.warn(
            "directory.unavailable server={server} error={error}",
            server=server.url,
            error=_describe(exc),
        )


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
