"""The upstream directory: find a user with the service account, bind as them.

python-ldap (OpenLDAP's C libldap) does the protocol work and releases the GIL while it
waits, so the calls run on a bounded Twisted thread pool and the reactor never waits on
the network. Each worker thread keeps two connections per server: one bound as the
service account for searches, one that is re-bound as each user. A user's DN and
exempt-group membership are remembered for `cache_ttl` seconds (never a password or a
bind result), so a returning user costs one bind and nothing else. Threads never touch
transports or the store; they return a `BindResult`.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import ldap
from ldap.filter import escape_filter_chars
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from bridge.config import DirectoryConfig

log = Logger(namespace="bridge.directory")

HOLD_DOWN_SECONDS = 30.0
CACHE_LIMIT = 200_000

# Bind answers that say "this password is not good", as opposed to "cannot answer now".
_REFUSED = (ldap.INVALID_CREDENTIALS, ldap.INAPPROPRIATE_AUTH, ldap.UNWILLING_TO_PERFORM)


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


def connect(url: str, config: DirectoryConfig) -> Any:
    """An LDAPv3 connection to `url`, TLS verified (chain and host name) when used.

    Options are set per connection, so a user's ldaprc or /etc/ldap/ldap.conf cannot
    weaken certificate checks; referrals are never chased.
    """
    conn = ldap.initialize(url)
    conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
    conn.set_option(ldap.OPT_REFERRALS, 0)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, config.timeout)
    conn.set_option(ldap.OPT_TIMEOUT, config.timeout)
    if url.startswith("ldaps://") or config.start_tls:
        conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
        cafile = str(config.ca_file) if config.ca_file else ssl.get_default_verify_paths().cafile
        if cafile:
            conn.set_option(ldap.OPT_X_TLS_CACERTFILE, cafile)
        conn.set_option(ldap.OPT_X_TLS_PROTOCOL_MIN, ldap.OPT_X_TLS_PROTOCOL_TLS1_2)
        conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # apply the options above: must come last
    try:
        if config.start_tls:
            conn.start_tls_s()
    except ldap.LDAPError:
        conn.unbind_s()
        raise
    return conn


class _Session:
    """One worker thread's connections to one server."""

    def __init__(self, url: str, config: DirectoryConfig) -> None:
        self.url = url
        self._config = config
        self.service = connect(url, config)
        try:
            self.service.simple_bind_s(config.bind_dn, config.bind_password)
        except ldap.LDAPError as exc:
            self.service.unbind_s()
            if isinstance(exc, _REFUSED):
                raise _UnavailableError(f"service account bind refused: {_describe(exc)}") from exc
            raise
        self._user: Any = None

    def find(self, username: str) -> str | None:
        """The DN of the one entry matching the user filter, None for none or several."""
        query = self._config.user_filter.replace("{username}", escape_filter_chars(username))
        try:
            found = self.service.search_ext_s(
                self._config.user_base,
                ldap.SCOPE_SUBTREE,
                query,
                ["1.1"],
                sizelimit=2,
                timeout=self._config.timeout,
            )
        except ldap.SIZELIMIT_EXCEEDED:
            log.warn("directory.ambiguous: the user filter matched several entries")
            return None
        except ldap.NO_SUCH_OBJECT:
            return None
        entries = [dn for dn, _ in found if dn]
        if len(entries) != 1:
            if entries:
                log.warn("directory.ambiguous: the user filter matched several entries")
            return None
        dn: str = entries[0]
        return dn

    def bind_user(self, dn: str, password: str) -> bool:
        """Whether the directory accepts `password` for `dn` (one simple bind)."""
        if self._user is None:
            self._user = connect(self.url, self._config)
        try:
            self._user.simple_bind_s(dn, password)
        except _REFUSED:
            return False
        except ldap.LDAPError:
            self._close_user()
            raise
        return True

    def member_of_any(self, dn: str, username: str, groups: tuple[str, ...]) -> bool:
        """Whether `dn` is a member of one of `groups` (searched as the service account)."""
        query = self._config.group_filter.replace("{dn}", escape_filter_chars(dn)).replace(
            "{username}", escape_filter_chars(username)
        )
        for group in groups:
            try:
                found = self.service.search_ext_s(
                    group,
                    ldap.SCOPE_BASE,
                    query,
                    ["1.1"],
                    sizelimit=1,
                    timeout=self._config.timeout,
                )
            except ldap.NO_SUCH_OBJECT:
                continue
            if any(entry_dn for entry_dn, _ in found):
                return True
        return False

    def _close_user(self) -> None:
        if self._user is not None:
            with contextlib.suppress(ldap.LDAPError):
                self._user.unbind_s()
            self._user = None

    def close(self) -> None:
        """Close both connections."""
        self._close_user()
        with contextlib.suppress(ldap.LDAPError):
            self.service.unbind_s()


class _Expiring:
    """A small map whose entries expire; shared by the worker threads (dict ops are atomic)."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._clock = clock
        self._items: dict[str, tuple[Any, float]] = {}

    def get(self, key: str) -> Any:
        item = self._items.get(key)
        if item is None or item[1] <= self._clock():
            return None
        return item[0]

    def put(self, key: str, value: Any) -> None:
        if self._ttl <= 0:
            return
        if len(self._items) >= CACHE_LIMIT:
            self._items.clear()
        self._items[key] = (value, self._clock() + self._ttl)

    def drop(self, key: str) -> None:
        self._items.pop(key, None)


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
        self._down_until: dict[str, float] = {}
        self._dns = _Expiring(config.cache_ttl, monotonic)
        self._exempt = _Expiring(config.cache_ttl, monotonic)
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
        for url in self._ordered():
            try:
                self._session(url)
            except (_UnavailableError, ldap.LDAPError) as exc:
                self._failed(url, exc)
                continue
            return BindResult(BindStatus.OK, server=url)
        return BindResult(BindStatus.UNAVAILABLE)

    def _authenticate(self, username: str, password: str) -> BindResult:
        for url in self._ordered():
            try:
                result = self._login(self._session(url), username, password)
            except (_UnavailableError, ldap.LDAPError) as exc:
                self._failed(url, exc)
                continue
            self._down_until.pop(url, None)
            return result
        return BindResult(BindStatus.UNAVAILABLE)

    def _login(self, session: _Session, username: str, password: str) -> BindResult:
        """Search (unless the DN is remembered), then one bind as the user."""
        cached: str | None = self._dns.get(username)
        dn = cached or session.find(username)
        if dn is None:
            return BindResult(BindStatus.UNKNOWN_USER, server=session.url)
        self._dns.put(username, dn)
        ok = session.bind_user(dn, password)
        if not ok and cached is not None:
            # A remembered DN may be stale (the entry moved): bind again only if it did.
            fresh = session.find(username)
            if fresh is None:
                self._dns.drop(username)
                return BindResult(BindStatus.UNKNOWN_USER, server=session.url)
            if fresh != dn:
                self._dns.put(username, fresh)
                dn, ok = fresh, session.bind_user(fresh, password)
        if not ok:
            return BindResult(BindStatus.BAD_PASSWORD, dn, server=session.url)
        return BindResult(
            BindStatus.OK,
            dn,
            in_exempt_group=self._is_exempt(session, dn, username),
            server=session.url,
        )

    def _is_exempt(self, session: _Session, dn: str, username: str) -> bool:
        if not self._exempt_groups:
            return False
        exempt: bool | None = self._exempt.get(dn)
        if exempt is None:
            exempt = session.member_of_any(dn, username, self._exempt_groups)
            self._exempt.put(dn, exempt)
        return exempt

    def _ordered(self) -> list[str]:
        """Server URLs in configured order, those recently failed last (still tried)."""
        now = self._monotonic()
        up = [u for u in self._config.urls if self._down_until.get(u, 0.0) <= now]
        return up + [u for u in self._config.urls if u not in up]

    def _sessions_here(self) -> dict[str, _Session]:
        sessions: dict[str, _Session] = self._local.__dict__.setdefault("sessions", {})
        return sessions

    def _session(self, url: str) -> _Session:
        sessions = self._sessions_here()
        session = sessions.get(url)
        if session is None:
            session = _Session(url, self._config)
            sessions[url] = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _failed(self, url: str, exc: Exception) -> None:
        session = self._sessions_here().pop(url, None)
        if session is not None:
            with self._lock:
                if session in self._sessions:
                    self._sessions.remove(session)
            session.close()
        self._down_until[url] = self._monotonic() + HOLD_DOWN_SECONDS
        error = _describe(exc)
        if isinstance(exc, ldap.SERVER_DOWN | ldap.CONNECT_ERROR):
            error = tls_diagnosis(url, self._config) or error
        log.warn("directory.unavailable server={server} error={error}", server=url, error=error)


_STARTTLS_REQUEST = bytes.fromhex("301d02017f7718801631") + b".3.6.1.4.1.1466.20037"


def tls_diagnosis(url: str, config: DirectoryConfig) -> str | None:
    """Why a TLS handshake with `url` fails, in OpenSSL's words; None if it succeeds.

    libldap reports a refused certificate as "Can't contact LDAP server"; this repeats the
    handshake with Python's ssl (same trust anchor, host name checked) to say why.
    """
    parts = urlsplit(url)
    host, secure = parts.hostname or "", parts.scheme == "ldaps"
    if not (secure or config.start_tls):
        return None
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    try:
        with socket.create_connection(
            (host, parts.port or (636 if secure else 389)), timeout=config.timeout
        ) as sock:
            if not secure:
                sock.sendall(_STARTTLS_REQUEST)
                sock.recv(4096)
            with context.wrap_socket(sock, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as exc:
        return f"certificate verify failed: {exc.verify_message}"
    except (OSError, ssl.SSLError) as exc:
        return f"TLS: {exc}"


def _describe(exc: Exception) -> str:
    """One readable line from an ldap error (its `desc` and `info`), or the exception."""
    args = exc.args[0] if exc.args else None
    if isinstance(args, dict):
        parts = [str(args.get("desc", "")), str(args.get("info", ""))]
        text = ": ".join(p for p in parts if p)
    else:
        text = str(exc)
    return (text or type(exc).__name__).splitlines()[0][:200]
