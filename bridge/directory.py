"""The upstream directory: find a user with the service account, bind as them.

python-ldap (OpenLDAP's C libldap) encodes and decodes; its asynchronous calls are driven
by the reactor: each connection's socket is watched for replies, so a login costs no
thread hand-off and no blocking wait. Searches are pipelined on one service connection;
binds go to a pool of connections kept only for binding (a bind changes a connection's
identity, and RFC 4511 allows one bind at a time on it). Only opening connections (TCP,
TLS handshake, service bind) happens on a thread, so an unreachable server never stalls
the reactor. A user's entry (DN, id and name: SPEC section 8) and exempt-group
membership are remembered for `cache_ttl` seconds (never a password or a bind result),
so a returning user costs one bind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import ldap
import ldap.dn
from ldap.filter import escape_filter_chars
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from bridge.config import DirectoryConfig
from bridge.core.identity import id_text
from bridge.core.types import Identity
from bridge.ldapdn import DnKey, dn_key, key_of, parse_dn
from bridge.logs import debugging

log = Logger(namespace="bridge.directory")

HOLD_DOWN_SECONDS = 30.0
# Names remembered at most (the oldest go first): ~400 octets each (an entry id, a name
# and a DN), so 50,000 stay under 25 MB; beyond that, a login searches again.
CACHE_LIMIT = 50_000

# Bind answers that say "this password is not good", as opposed to "cannot answer now".
_REFUSED = (ldap.INVALID_CREDENTIALS, ldap.INAPPROPRIATE_AUTH, ldap.UNWILLING_TO_PERFORM)


class BindStatus(StrEnum):
    """How the directory answered a login."""

    OK = "ok"
    BAD_PASSWORD = "bad-password"  # noqa: S105 - a status, not a password
    UNKNOWN_USER = "unknown-user"
    NO_ENTRY_ID = "no-entry-id"  # the entry has no directory.id_attribute: fail closed
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class BindResult:
    """The directory's answer; `in_exempt_group` is only looked up after a good bind."""

    status: BindStatus
    identity: Identity | None = None  # the entry the name resolved to, once found
    in_exempt_group: bool = False
    server: str | None = None
    groups: frozenset[DnKey] = frozenset()  # of the configured groups, those it is in

    @property
    def dn(self) -> str | None:
        """The entry's DN, once found."""
        return self.identity.dn if self.identity is not None else None


class UnavailableError(Exception):
    """This server cannot answer now: try the next one."""


# A bind done by the caller: (server URL, DN, password) -> accepted? Raises
# UnavailableError when that server cannot answer.
Binder = Callable[[str, str, str], Awaitable[bool]]

# The password to bind with, chosen once the entry (and so its MFA record) is known.
Plan = Callable[[Identity], "str | Deferred[str]"]  # a Deferred when the store is remote


def user_query(config: DirectoryConfig, username: str) -> str:
    """The user filter for a name typed, escaped (RFC 4515)."""
    return config.user_filter.replace("{username}", escape_filter_chars(username))


def group_query(config: DirectoryConfig, dn: str, name: str) -> str:
    """The group filter for an entry: its DN and its name, escaped (RFC 4515)."""
    return config.group_filter.replace("{dn}", escape_filter_chars(dn)).replace(
        "{username}", escape_filter_chars(name)
    )


def common_suffix(dns: tuple[str, ...]) -> str | None:
    """The longest DN every one of `dns` is at or below (None: none, or not DNs)."""
    parsed = [parse_dn(dn) for dn in dns]
    if not parsed or any(rdns is None for rdns in parsed):
        return None
    shortest = min(len(rdns) for rdns in parsed if rdns is not None)
    first = parsed[0]
    assert first is not None
    common = 0
    while common < shortest and all(
        rdns is not None and key_of([rdns[-1 - common]]) == key_of([first[-1 - common]])
        for rdns in parsed
    ):
        common += 1
    if common == 0:
        return None
    return str(ldap.dn.dn2str(first[len(first) - common :]))


def _union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    """The DNs of both, each once (compared as DNs), in order."""
    seen: set[DnKey | str] = set()
    out = []
    for dn in (*first, *second):
        key = dn_key(dn) or dn
        if key not in seen:
            seen.add(key)
            out.append(dn)
    return tuple(out)


class NoEntryIdError(Exception):
    """The entry found has no value for directory.id_attribute."""


def identity_of(
    dn: str, attrs: dict[str, list[bytes]], config: DirectoryConfig, typed: str
) -> Identity:
    """The Identity of a search result entry; NoEntryIdError without an id.

    The name is the name attribute's value that names the entry in its DN when there is
    one (a second `uid` is an alias), else its first value, else the name typed.
    """
    wanted_id, wanted_name = config.id_attribute.lower(), config.name_attribute.lower()
    raw_ids: list[bytes] = []
    raw_names: list[bytes] = []
    for key, value in attrs.items():  # the server spells attribute names its own way
        folded = key.lower()
        if folded == wanted_id:
            raw_ids = value
        elif folded == wanted_name:
            raw_names = value
    entry_id = id_text(config.id_attribute, raw_ids[0]) if raw_ids else None
    if entry_id is None:
        raise NoEntryIdError(dn)
    names = [v.decode("utf-8", "replace") for v in raw_names]
    name = names[0] if names else _rdn_value(dn) or typed
    if len(names) > 1:  # several: the one in the DN is the entry's own, the others aliases
        with contextlib.suppress(ldap.DECODING_ERROR, TypeError, ValueError):
            for attr, value, _flags in ldap.dn.str2dn(dn)[0]:
                if attr.lower() == wanted_name and value in names:
                    name = value
    return Identity(entry_id, name, dn)


def connect(url: str, config: DirectoryConfig) -> Any:
    """An LDAPv3 connection to `url` bound as the service account (blocking: use a thread).

    TLS options are set per connection, so a user's ldaprc or /etc/ldap/ldap.conf cannot
    weaken certificate checks (chain and host name); referrals are never chased.
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
        conn.simple_bind_s(config.bind_dn, config.bind_password)
    except ldap.LDAPError as exc:
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_s()
        if isinstance(exc, _REFUSED):
            raise UnavailableError(f"service account bind refused: {_describe(exc)}") from exc
        diagnosis = None
        if isinstance(exc, ldap.SERVER_DOWN | ldap.CONNECT_ERROR):
            diagnosis = tls_diagnosis(url, config)
        raise UnavailableError(diagnosis or _describe(exc)) from exc
    return conn


class _Link:
    """One libldap connection driven by the reactor: send now, answer when the socket says.

    Implements IReadDescriptor. Any error that is not an operation's own result (the
    server went away, an operation timed out) breaks the link; `on_broken` is told once.
    """

    def __init__(
        self, conn: Any, reactor: Any, timeout: float, on_broken: Callable[[Exception], None]
    ) -> None:
        self.conn = conn
        # The reactor watches a duplicate of the socket: libldap closes its own descriptor
        # when it sees an error, and the number could be reused before we unregister.
        self._fd: int = os.dup(conn.fileno())
        self._reactor = reactor
        self._timeout = timeout
        self._on_broken = on_broken
        self._pending: dict[int, tuple[Deferred[Any], float]] = {}
        self.closed = False
        reactor.addReader(self)

    def fileno(self) -> int:
        """The socket the reactor watches."""
        return self._fd

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        """For Twisted's log lines."""
        return "ldap"

    def call(self, start: Callable[[Any], int]) -> Deferred[Any]:
        """Start an asynchronous libldap call; the Deferred fires with (type, data)."""
        if self.closed:
            raise UnavailableError("connection closed")
        try:
            msgid = start(self.conn)
        except ldap.LDAPError as exc:
            self._break(exc)
            raise UnavailableError(_describe(exc)) from exc
        done: Deferred[Any] = Deferred()
        self._pending[msgid] = (done, self._reactor.seconds() + self._timeout)
        return done

    def check_deadlines(self, now: float) -> None:
        """Break the link if an operation has waited past the timeout (a hung server)."""
        if any(deadline <= now for _done, deadline in self._pending.values()):
            self._expired()

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        """Collect every complete reply libldap can give now."""
        while not self.closed:
            try:
                kind, data, msgid, _controls = self.conn.result3(ldap.RES_ANY, 1, 0)
            except ldap.LDAPError as exc:
                info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
                if "msgid" not in info:
                    self._break(exc)
                    return
                self._settle(info["msgid"], exc)
                continue
            if kind is None:
                return
            self._settle(msgid, (kind, data))

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        """The reactor saw the socket fail."""
        self._break(UnavailableError("connection lost"))

    def _settle(self, msgid: int, outcome: object) -> None:
        entry = self._pending.pop(msgid, None)
        if entry is None:
            return
        done = entry[0]
        if isinstance(outcome, Exception):
            done.errback(outcome)
        else:
            done.callback(outcome)

    def _expired(self) -> None:
        self._break(UnavailableError(f"no answer within {self._timeout:g} s"))

    def _break(self, exc: Exception) -> None:
        if not self.closed:
            self.close(exc)
            self._on_broken(exc)

    def close(self, exc: Exception | None = None) -> None:
        """Stop watching the socket, fail what is pending, close the connection."""
        if self.closed:
            return
        self.closed = True
        self._reactor.removeReader(self)
        os.close(self._fd)
        pending, self._pending = self._pending, {}
        reason = UnavailableError(_describe(exc) if exc else "connection closed")
        for done, _deadline in pending.values():
            done.errback(reason)
        with contextlib.suppress(ldap.LDAPError):
            self.conn.unbind_ext()


class _Server:
    """The connections to one directory URL: one for searches, `pool_size` for binds."""

    def __init__(self, url: str, config: DirectoryConfig, reactor: Any, pool: ThreadPool) -> None:
        self.url = url
        self._config = config
        self._reactor = reactor
        self._pool = pool
        self._search_link: _Link | None = None
        self._idle: list[_Link] = []
        self._busy: set[_Link] = set()
        self._queue: deque[Deferred[_Link]] = deque()
        self._opening: list[Deferred[None]] | None = None

    def ready(self) -> Deferred[None]:
        """Fires once the connections are open (opening them on a thread if need be)."""
        if self._search_link is not None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        if self._opening is None:
            self._opening = [waiter]
            count = self._config.pool_size + 1
            opened = deferToThreadPool(self._reactor, self._pool, self._open_all, count)
            opened.addCallbacks(self._opened, self._open_failed)
        else:
            self._opening.append(waiter)
        return waiter

    def _open_all(self, count: int) -> list[Any]:
        conns: list[Any] = []
        try:
            for _ in range(count):
                conns.append(connect(self.url, self._config))
        except BaseException:
            for conn in conns:
                with contextlib.suppress(ldap.LDAPError):
                    conn.unbind_s()
            raise
        return conns

    def _opened(self, conns: list[Any]) -> None:
        links = [_Link(c, self._reactor, self._config.timeout, self.fail) for c in conns]
        self._search_link, self._idle = links[0], links[1:]
        waiters, self._opening = self._opening or [], None
        for waiter in waiters:
            waiter.callback(None)

    def _open_failed(self, failure: Failure) -> None:
        waiters, self._opening = self._opening or [], None
        for waiter in waiters:
            waiter.errback(failure)

    def check_deadlines(self, now: float) -> None:
        """Let each open connection check its operations' deadlines."""
        for link in [self._search_link, *self._idle, *self._busy]:
            if link is not None and not link.closed:
                link.check_deadlines(now)

    def fail(self, exc: Exception) -> None:
        """Close every connection; everything waiting gets UnavailableError."""
        links = [self._search_link, *self._idle, *self._busy]
        self._search_link, self._idle, self._busy = None, [], set()
        for link in links:
            if link is not None:
                link.close(exc)
        queue, self._queue = self._queue, deque()
        for waiter in queue:
            waiter.errback(UnavailableError(_describe(exc)))

    async def find(self, username: str) -> Identity | None:
        """The one entry matching the user filter; None for none or several.

        Its id and name attributes come with the search: no extra operation per login.
        """
        query = user_query(self._config, username)
        wanted = [self._config.id_attribute, self._config.name_attribute]
        try:
            _kind, entries = await self._search(
                self._config.user_base, ldap.SCOPE_SUBTREE, query, 2, wanted
            )
        except ldap.SIZELIMIT_EXCEEDED:
            log.warn("directory.ambiguous: the user filter matched several entries")
            return None
        except ldap.NO_SUCH_OBJECT:
            return None
        except ldap.LDAPError as exc:
            raise UnavailableError(_describe(exc)) from exc
        found = [(dn, attrs) for dn, attrs in entries if dn]
        if len(found) > 1:
            log.warn("directory.ambiguous: the user filter matched several entries")
        if len(found) != 1:
            return None
        return identity_of(found[0][0], found[0][1], self._config, username)

    async def memberships(
        self, dn: str, username: str, groups: tuple[str, ...]
    ) -> frozenset[DnKey]:
        """Which of `groups` `dn` is a member of, by group_filter (nested groups are the
        filter's). Several groups: one subtree search under their common suffix (usually
        the groups' OU), its answers kept if configured; one group, or a search the server
        will not finish: a base search on each (each tests one entry, no index needed)."""
        query = group_query(self._config, dn, username)
        wanted = {key for group in groups if (key := dn_key(group)) is not None}
        base = common_suffix(groups) if len(groups) > 1 else None
        if base is not None:
            try:
                _kind, entries = await self._search(base, ldap.SCOPE_SUBTREE, query, 0, ["1.1"])
            except (ldap.SIZELIMIT_EXCEEDED, ldap.ADMINLIMIT_EXCEEDED):
                pass  # a member of very many groups: ask about the configured ones instead
            except ldap.NO_SUCH_OBJECT:
                return frozenset()
            except ldap.LDAPError as exc:
                raise UnavailableError(_describe(exc)) from exc
            else:
                found = (dn_key(entry_dn) for entry_dn, _attrs in entries if entry_dn)
                return frozenset(key for key in found if key in wanted)
        members = set()
        for group in groups:
            try:
                _kind, entries = await self._search(group, ldap.SCOPE_BASE, query, 1, ["1.1"])
            except ldap.NO_SUCH_OBJECT:
                continue
            except ldap.LDAPError as exc:
                raise UnavailableError(_describe(exc)) from exc
            if any(entry_dn for entry_dn, _attrs in entries) and (key := dn_key(group)):
                members.add(key)
        return frozenset(members)

    async def bind(self, dn: str, password: str) -> bool:
        """Whether the directory accepts `password` for `dn`: one simple bind."""
        link = await self._acquire()
        started = time.monotonic()
        outcome = "accepted"
        try:
            await link.call(lambda c: c.simple_bind(dn, password))
        except _REFUSED:
            outcome = "refused"
            return False
        except ldap.LDAPError as exc:
            outcome = f"failed: {_describe(exc)}"
            raise UnavailableError(_describe(exc)) from exc
        finally:
            self._release(link)
            if debugging():
                log.debug(
                    "directory.bind server={server} dn={dn} {outcome} in {ms:.1f} ms",
                    server=self.url,
                    dn=dn,
                    outcome=outcome,
                    ms=(time.monotonic() - started) * 1000,
                )
        return True

    def _search(
        self, base: str, scope: int, query: str, limit: int, attrs: list[str]
    ) -> Deferred[Any]:
        """A search on the shared connection, asking for `attrs` only (["1.1"]: none)."""
        if self._search_link is None:
            raise UnavailableError("not connected")
        d: Deferred[Any] = self._search_link.call(
            lambda c: c.search_ext(base, scope, query, attrs, sizelimit=limit)
        )
        if debugging():
            d.addBoth(self._traced, base, query, time.monotonic())
        return d

    def _traced(self, result: Any, base: str, query: str, started: float) -> Any:
        """`--debug`: a search, what it looked for and how long the directory took."""
        if isinstance(result, Failure):
            found = f"failed: {result.getErrorMessage()}"
        else:
            found = f"{sum(1 for dn, _attrs in result[1] if dn)} entries"
        log.debug(
            "directory.search server={server} base={base} filter={filter} {found} in {ms:.1f} ms",
            server=self.url,
            base=base,
            filter=query,
            found=found,
            ms=(time.monotonic() - started) * 1000,
        )
        return result

    def _acquire(self) -> Deferred[_Link]:
        if self._search_link is None:
            raise UnavailableError("not connected")
        if self._idle:
            link = self._idle.pop()
            self._busy.add(link)
            return succeed(link)
        waiter: Deferred[_Link] = Deferred()
        self._queue.append(waiter)
        return waiter

    def _release(self, link: _Link) -> None:
        if link.closed or link not in self._busy:
            return
        if self._queue:
            self._queue.popleft().callback(link)
            return
        self._busy.discard(link)
        self._idle.append(link)


class _Expiring:
    """A bounded map whose entries expire after `ttl` seconds."""

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
        self._items.pop(key, None)  # put back at the end: the order is the order of expiry
        if len(self._items) >= CACHE_LIMIT:
            del self._items[next(iter(self._items))]
        self._items[key] = (value, self._clock() + self._ttl)

    def drop(self, key: str) -> None:
        self._items.pop(key, None)


class Directory:
    """Logins against the configured servers, in order, with failover."""

    def __init__(
        self,
        config: DirectoryConfig,
        exempt_groups: tuple[str, ...],
        reactor: Any,  # IReactorFDSet, IReactorTime and IReactorFromThreads
        *,
        groups: tuple[str, ...] = (),  # besides the exempt ones: allowed, replies (SPEC 11)
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._exempt_groups = exempt_groups
        self._groups = _union(exempt_groups, groups)
        self._monotonic = monotonic
        self._down_until: dict[str, float] = {}
        self._entries = _Expiring(config.cache_ttl, monotonic)  # typed name -> Identity
        self._members = _Expiring(config.cache_ttl, monotonic)  # DN -> memberships
        self._no_id_logged = float("-inf")
        self.pool = ThreadPool(minthreads=0, maxthreads=2, name="directory-connect")
        self._servers = {url: _Server(url, config, reactor, self.pool) for url in config.urls}
        self._reactor = reactor
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = reactor
        self.on_latency: Callable[[float], None] | None = None  # seconds per password check
        self.on_failover: Callable[[str], None] | None = None  # a server given up

    @property
    def exempt_groups(self) -> tuple[str, ...]:
        """Groups whose members need no code."""
        return self._exempt_groups

    @property
    def has_groups(self) -> bool:
        """Whether any group is configured (exempt, allowed or in a reply rule)."""
        return bool(self._groups)

    def set_groups(self, exempt: tuple[str, ...], others: tuple[str, ...] = ()) -> None:
        """New exempt groups and other groups of interest (SIGHUP): remembered
        memberships are dropped if they changed."""
        groups = _union(exempt, others)
        if (exempt, groups) != (self._exempt_groups, self._groups):
            self._exempt_groups, self._groups = exempt, groups
            self._members = _Expiring(self._config.cache_ttl, self._monotonic)

    def start(self) -> None:
        """Start the thread that opens connections, and the operation deadline checks."""
        self.pool.start()
        self._sweeper.start(max(0.1, self._config.timeout / 4), now=False)

    def stop(self) -> None:
        """Close every connection and stop the thread."""
        if self._sweeper.running:
            self._sweeper.stop()
        for server in self._servers.values():
            server.fail(UnavailableError("shutting down"))
        self.pool.stop()

    def _sweep(self) -> None:
        """One timer for all operations, rather than one per operation."""
        now = self._reactor.seconds()
        for server in self._servers.values():
            server.check_deadlines(now)

    def authenticate(
        self, username: str, plan: Plan, bind: Binder | None = None
    ) -> Deferred[BindResult]:
        """Find `username`'s entry, then bind as it with the password `plan` chooses.

        `plan` sees the entry before the bind, so the caller can read the entry's record
        and choose which password to try (a login costs one bind). `bind` replaces the
        bind on the pool: the LDAP proxy binds on the connection it then keeps for the
        session, so its login costs one bind, not two.
        """
        if self.on_latency is None:
            return _start(self._authenticate_once(username, plan, bind))
        return _start(self._authenticate(username, plan, bind))

    def resolve(self, username: str) -> Deferred[BindResult]:
        """Find `username`'s entry without binding (attaching records from before 8)."""
        return _start(self._resolve(username))

    def memberships_of(self, identity: Identity) -> Deferred[BindResult]:
        """The configured groups `identity` is in (remembered for `cache_ttl`), for a
        login decided in a later round than its bind: a challenge's answer."""
        return _start(self._failover(lambda server: self._groups_of(server, identity)))

    async def _groups_of(self, server: _Server, identity: Identity) -> BindResult:
        groups = await self._memberships(server, identity)
        return BindResult(BindStatus.OK, identity, server=server.url, groups=groups)

    def probe(self) -> Deferred[BindResult]:
        """Open connections to the first server that answers (start-up, health checks)."""
        return _start(self._probe())

    async def _probe(self) -> BindResult:
        for server in self._ordered():
            try:
                await server.ready()
            except UnavailableError as exc:
                self._failed(server, exc)
                continue
            return BindResult(BindStatus.OK, server=server.url)
        return BindResult(BindStatus.UNAVAILABLE)

    async def _resolve(self, username: str) -> BindResult:
        return await self._failover(lambda server: self._lookup(server, username))

    async def _lookup(self, server: _Server, username: str) -> BindResult:
        identity = await self._find(server, username)
        if identity is None:
            return BindResult(BindStatus.UNKNOWN_USER, server=server.url)
        return BindResult(BindStatus.OK, identity, server=server.url)

    async def _authenticate(self, username: str, plan: Plan, bind: Binder | None) -> BindResult:
        """`_authenticate_once`, timed for the metrics."""
        started = self._monotonic()
        try:
            return await self._authenticate_once(username, plan, bind)
        finally:
            if self.on_latency is not None:
                self.on_latency(self._monotonic() - started)

    async def _authenticate_once(
        self, username: str, plan: Plan, bind: Binder | None
    ) -> BindResult:
        return await self._failover(lambda server: self._login(server, username, plan, bind))

    async def _failover(self, attempt: Callable[[_Server], Awaitable[BindResult]]) -> BindResult:
        """`attempt` on each server in order, until one can answer."""
        for server in self._ordered():
            try:
                await server.ready()
                result = await attempt(server)
            except NoEntryIdError as exc:
                return self._no_entry_id(str(exc), server)
            except UnavailableError as exc:
                self._failed(server, exc)
                continue
            self._down_until.pop(server.url, None)
            return result
        return BindResult(BindStatus.UNAVAILABLE)

    async def _find(self, server: _Server, username: str) -> Identity | None:
        """The entry for `username`: remembered, or searched for and then remembered."""
        identity: Identity | None = self._entries.get(username)
        if identity is None:
            identity = await server.find(username)
            if identity is not None:
                # The entry's own name object as the key when it is the one typed: shared.
                self._entries.put(
                    identity.name if identity.name == username else username, identity
                )
        return identity

    async def _login(
        self, server: _Server, username: str, plan: Plan, bind: Binder | None
    ) -> BindResult:
        """Search (unless the entry is remembered), then one bind as the user."""
        cached: Identity | None = self._entries.get(username)
        identity = cached or await self._find(server, username)
        if identity is None:
            return BindResult(BindStatus.UNKNOWN_USER, server=server.url)
        ok = await _bind_as(server, bind, identity, plan)
        if not ok and cached is not None:
            # A remembered entry may be stale (moved, renamed): bind again only if it moved.
            fresh = await server.find(username)
            if fresh is None:
                self._entries.drop(username)
                return BindResult(BindStatus.UNKNOWN_USER, server=server.url)
            if fresh != identity:
                self._entries.put(username, fresh)
            if fresh.dn != identity.dn:
                identity, ok = fresh, await _bind_as(server, bind, fresh, plan)
            else:
                identity = fresh
        if not ok:
            return BindResult(BindStatus.BAD_PASSWORD, identity, server=server.url)
        groups = await self._memberships(server, identity)
        exempt = any(dn_key(group) in groups for group in self._exempt_groups)
        return BindResult(
            BindStatus.OK, identity, in_exempt_group=exempt, server=server.url, groups=groups
        )

    async def _memberships(self, server: _Server, identity: Identity) -> frozenset[DnKey]:
        """The configured groups the entry is in: looked up once per `cache_ttl`, for the
        exemption, the clients' allowed groups and the reply rules alike."""
        if not self._groups:
            return frozenset()
        groups: frozenset[DnKey] | None = self._members.get(identity.dn)
        if groups is None:
            groups = await server.memberships(identity.dn, identity.name, self._groups)
            self._members.put(identity.dn, groups)
        return groups

    def _no_entry_id(self, dn: str, server: _Server) -> BindResult:
        """An entry without the id attribute: refused, and the admin told how to fix it."""
        now = self._monotonic()
        if self._no_id_logged + 60.0 <= now:  # once a minute, not once per login
            self._no_id_logged = now
            log.error(
                "directory.no-entry-id dn={dn} attribute={attribute}: the entry has no"
                " value for directory.id_attribute, so its logins are refused; set"
                " id_attribute to the attribute that identifies entries for good"
                " (OpenLDAP: entryUUID, Active Directory: objectGUID)",
                dn=dn,
                attribute=self._config.id_attribute,
            )
        return BindResult(BindStatus.NO_ENTRY_ID, server=server.url)

    def _ordered(self) -> list[_Server]:
        """Servers in configured order, those recently failed last (still tried)."""
        now = self._monotonic()
        servers = list(self._servers.values())
        up = [s for s in servers if self._down_until.get(s.url, 0.0) <= now]
        return up + [s for s in servers if s not in up]

    def _failed(self, server: _Server, exc: Exception) -> None:
        server.fail(exc)
        if self.on_failover is not None:
            self.on_failover(server.url)
        now = self._monotonic()
        already_down = self._down_until.get(server.url, 0.0) > now
        self._down_until[server.url] = now + HOLD_DOWN_SECONDS
        if already_down:  # one line per outage, not one per login caught in it
            return
        log.warn(
            "directory.unavailable server={server} error={error}",
            server=server.url,
            error=_describe(exc),
        )


async def _bind_as(server: _Server, bind: Binder | None, identity: Identity, plan: Plan) -> bool:
    """The one bind of a login, with the password `plan` chooses for this entry.

    On the server's pool, or by the caller's binder. An empty password is refused here
    without a bind: at many directories it is an anonymous bind, which "succeeds".
    """
    planned = plan(identity)
    password = planned if isinstance(planned, str) else await planned
    if not password:
        return False
    if bind is None:
        return await server.bind(identity.dn, password)
    return await bind(server.url, identity.dn, password)


def _start(coroutine: Coroutine[Deferred[Any], Any, BindResult]) -> Deferred[BindResult]:
    return Deferred.fromCoroutine(coroutine)


def _rdn_value(dn: str) -> str | None:
    """The value naming the entry in its DN: a stable name when name_attribute is absent."""
    with contextlib.suppress(ldap.DECODING_ERROR, TypeError, ValueError, IndexError):
        value: str = ldap.dn.str2dn(dn)[0][0][1]
        return value
    return None


class DirectoryLookup:
    """Blocking lookups for the admin CLI: login names to entries, and exempt groups.

    Searches are pipelined on one service connection (a window of them in flight), so a
    bulk import resolves thousands of names a second. Servers are tried in order; when
    none answers, UnavailableError says why.
    """

    WINDOW = 64  # well under slapd's conn_max_pending_auth (1000); more gains nothing

    def __init__(self, config: DirectoryConfig, exempt_groups: tuple[str, ...] = ()) -> None:
        self._config = config
        self._exempt_groups = exempt_groups
        self._conn: Any = None

    def close(self) -> None:
        """Unbind the connection, if one was opened."""
        if self._conn is not None:
            with contextlib.suppress(ldap.LDAPError):
                self._conn.unbind_s()
            self._conn = None

    def resolve(self, name: str) -> Identity | None:
        """The one entry `name` resolves to; None for none or several."""
        return self.resolve_many([name])[name]

    def resolve_many(self, names: list[str]) -> dict[str, Identity | None]:
        """Each name's entry (None for none or several), searching in a pipeline."""
        found: dict[str, Identity | None] = self._with_server(
            lambda conn: self._resolve_all(conn, names)
        )
        return found

    def is_exempt(self, identity: Identity) -> bool:
        """Whether the entry is a member of one of the exempt groups."""
        if not self._exempt_groups:
            return False
        query = group_query(self._config, identity.dn, identity.name)

        def member(conn: Any) -> bool:
            for group in self._exempt_groups:
                try:
                    if conn.search_ext_s(group, ldap.SCOPE_BASE, query, ["1.1"], sizelimit=1):
                        return True
                except ldap.NO_SUCH_OBJECT:
                    continue
            return False

        exempt: bool = self._with_server(member)
        return exempt

    def _with_server(self, job: Callable[[Any], Any]) -> Any:
        problems = []
        urls = self._config.urls if self._conn is None else (None,)
        for url in urls:
            try:
                if self._conn is None:
                    assert url is not None
                    self._conn = connect(url, self._config)
                return job(self._conn)
            except NoEntryIdError as exc:
                raise NoEntryIdError(
                    f"entry {exc} has no {self._config.id_attribute}: set"
                    " directory.id_attribute to the attribute that identifies entries"
                ) from exc
            except (UnavailableError, ldap.LDAPError) as exc:
                self.close()
                problems.append(f"{url or 'directory'}: {_describe(exc)}")
        raise UnavailableError("; ".join(problems) or "no directory server configured")

    def _resolve_all(self, conn: Any, names: list[str]) -> dict[str, Identity | None]:
        config = self._config
        wanted = [config.id_attribute, config.name_attribute]
        found: dict[str, Identity | None] = {}
        pending: deque[tuple[str, int]] = deque()
        todo = deque(dict.fromkeys(names))
        while todo or pending:
            while todo and len(pending) < self.WINDOW:
                name = todo.popleft()
                query = user_query(config, name)
                msgid = conn.search_ext(
                    config.user_base, ldap.SCOPE_SUBTREE, query, wanted, sizelimit=2
                )
                pending.append((name, msgid))
            name, msgid = pending.popleft()
            try:
                _kind, entries, _id, _controls = conn.result3(msgid, 1, config.timeout)
            except (ldap.SIZELIMIT_EXCEEDED, ldap.NO_SUCH_OBJECT):
                entries = []
            hits = [(dn, attrs) for dn, attrs in entries if dn]
            found[name] = identity_of(*hits[0], config, name) if len(hits) == 1 else None
        return found


_STARTTLS_REQUEST = bytes.fromhex("301d02017f7718801631") + b".3.6.1.4.1.1466.20037"


def tls_diagnosis(url: str, config: DirectoryConfig) -> str | None:
    """Why a TLS handshake with `url` fails, in OpenSSL's words; None if it succeeds.

    libldap reports a refused certificate as "Can't contact LDAP server"; this repeats the
    handshake with Python's ssl (same trust anchor, host name checked) to say why.
    Blocking: call it on a thread.
    """
    parts = urlsplit(url)
    host, secure = parts.hostname or "", parts.scheme == "ldaps"
    if not (secure or config.start_tls):
        return None
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    try:
        address = (host, parts.port or (636 if secure else 389))
        with socket.create_connection(address, timeout=config.timeout) as sock:
            if not secure:
                sock.sendall(_STARTTLS_REQUEST)
                sock.recv(4096)
            with context.wrap_socket(sock, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as exc:
        return f"certificate verify failed: {exc.verify_message}"
    except (OSError, ssl.SSLError) as exc:
        return f"TLS: {exc}"


def _describe(exc: BaseException) -> str:
    """One readable line from an ldap error (its `desc` and `info`), or the exception."""
    args = exc.args[0] if exc.args else None
    if isinstance(args, dict):
        parts = [str(args.get("desc", "")), str(args.get("info", ""))]
        text = ": ".join(p for p in parts if p)
    else:
        text = str(exc)
    return (text or type(exc).__name__).splitlines()[0][:200]
