"""Portal sessions and attempt limits, with an injected clock.

A session is created only after a correct sign-in; it holds the user name, its CSRF
token, and during a set-up the new secret (sealed, never in a user's record until
confirmed). It ends after `idle` seconds without a request, after `lifetime` seconds in
any case, and at sign-out. With a store (the daemon), sessions live there, keyed by a
hash of the id: they outlive a restart and are valid on every instance sharing the store
(SPEC 9), so a load balancer needs no stickiness. Without one (tests), they stay in
memory. Attempt limits stay per instance.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol as Interface

from bridge.core.types import Identity
from bridge.store.records import SessionRow

SESSION_LIMIT = 10_000
KEY_LIMIT = 100_000  # users or addresses an attempt limiter remembers


def token() -> str:
    """A random, URL-safe token of 256 bits."""
    return secrets.token_urlsafe(32)


@dataclass(slots=True)
class Session:
    """One signed-in user."""

    id: str
    owner: Identity  # the directory entry signed in: its record is the one shown and changed
    csrf: str
    started: float
    seen: float
    new_secret: bytes | None = field(default=None, repr=False)  # shown until confirmed
    proven_for: bytes | None = field(default=None, repr=False)  # digest of the proven secret
    proven_at: float = 0.0  # when the old device was proven (a reset may then go on)
    exempt: bool = False  # signed in as an exempt user (by name or group)

    @property
    def username(self) -> str:
        """The entry's name, as the directory spells it."""
        return self.owner.name


class Keeper(Interface):
    """Where sessions are kept (the store: `RecordStore`)."""

    def save_session(self, row: SessionRow, purge_before: float) -> None:
        """Write the session (and drop those idle since before `purge_before`)."""

    def load_session(self, key: bytes) -> SessionRow | None:
        """The session under `key`, or None."""

    def drop_session(self, key: bytes) -> None:
        """Forget the session."""


def _key(session_id: str) -> bytes:
    """What a session is stored under: the cookie itself never is."""
    return hashlib.sha256(session_id.encode()).digest()


class Sessions:
    """Sessions by id; expired ones are forgotten when looked up or when room is needed."""

    def __init__(
        self,
        clock: Callable[[], float],
        idle: float,
        lifetime: float,
        keeper: Keeper | None = None,
    ) -> None:
        self._clock = clock
        self._idle = idle
        self._lifetime = lifetime
        self._keeper = keeper
        self._by_id: OrderedDict[str, Session] = OrderedDict()  # least recently seen first

    def start(self, owner: Identity, exempt: bool = False) -> Session:
        """A new session for a user who just signed in (`exempt`: needs no code)."""
        now = self._clock()
        session = Session(token(), owner, token(), now, now, exempt=exempt)
        self._put(session)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (its idle timer restarted), or None."""
        if not session_id:
            return None
        session = self._find(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen >= self._idle or now - session.started >= self._lifetime:
            self.end(session_id)
            return None
        session.seen = now
        self._put(session)
        return session

    def save(self, session: Session) -> None:
        """Keep what changed in a session (its set-up secret, its proof)."""
        self._put(session)

    def end(self, session_id: str) -> None:
        """Sign out (the secret of an unfinished set-up goes with the session)."""
        if self._keeper is not None:
            self._keeper.drop_session(_key(session_id))
        self._by_id.pop(session_id, None)

    def _find(self, session_id: str) -> Session | None:
        if self._keeper is None:
            return self._by_id.get(session_id)
        row = self._keeper.load_session(_key(session_id))
        if row is None:
            return None
        owner = Identity(row.entry_id, row.name, row.dn)
        return Session(
            session_id,
            owner,
            row.csrf,
            row.started,
            row.seen,
            new_secret=row.new_secret,
            proven_for=row.proven_for,
            proven_at=row.proven_at,
            exempt=row.exempt,
        )

    def _put(self, session: Session) -> None:
        if self._keeper is not None:
            row = SessionRow(
                _key(session.id),
                session.csrf,
                session.owner.entry_id,
                session.owner.name,
                session.owner.dn,
                session.started,
                session.seen,
                session.new_secret,
                session.proven_for,
                session.proven_at,
                session.exempt,
            )
            self._keeper.save_session(row, self._clock() - self._idle)
            return
        if session.id not in self._by_id:
            while len(self._by_id) >= SESSION_LIMIT:
                self._by_id.popitem(last=False)
        self._by_id[session.id] = session
        self._by_id.move_to_end(session.id)

    def __len__(self) -> int:
        return len(self._by_id)


class AttemptLimiter:
    """At most `limit` attempts per key in any `window` seconds (a sliding window).

    Keys are kept in least-recently-used order and at most KEY_LIMIT of them, so a flood
    of new keys (addresses, names) costs memory that stays bounded and O(1) per call.
    """

    def __init__(self, clock: Callable[[], float], limit: int, window: float) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()

    def _times(self, key: str) -> deque[float]:
        now = self._clock()
        times = self._attempts.get(key)
        if times is None:
            times = self._attempts[key] = deque()
            if len(self._attempts) > KEY_LIMIT:
                self._attempts.popitem(last=False)
        self._attempts.move_to_end(key)
        while times and times[0] <= now - self._window:
            times.popleft()
        return times

    def exceeded(self, key: str) -> bool:
        """Whether `key` has used up its attempts (nothing is counted)."""
        return len(self._times(key)) >= self._limit

    def count(self, key: str) -> None:
        """Count one attempt (a failure, for the per-user limit)."""
        self._times(key).append(self._clock())

    def allow(self, key: str) -> bool:
        """Count an attempt for `key`; False (and not counted) when over the limit."""
        if self.exceeded(key):
            return False
        self.count(key)
        return True
