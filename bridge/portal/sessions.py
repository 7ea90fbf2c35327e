"""Portal sessions and attempt limits, kept in memory with an injected clock.

A session is created only after a correct sign-in; it holds the user name, its CSRF
token, and during a set-up the new secret (never written anywhere until confirmed). It
ends after `idle` seconds without a request, after `lifetime` seconds in any case, and at
sign-out. A restart of the daemon signs everybody out, which costs a user one sign-in.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.core.types import Identity

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


class Sessions:
    """Sessions by id; expired ones are forgotten when looked up or when room is needed."""

    def __init__(self, clock: Callable[[], float], idle: float, lifetime: float) -> None:
        self._clock = clock
        self._idle = idle
        self._lifetime = lifetime
        self._by_id: OrderedDict[str, Session] = OrderedDict()  # least recently seen first

    def start(self, owner: Identity) -> Session:
        """A new session for a user who just signed in."""
        now = self._clock()
        while len(self._by_id) >= SESSION_LIMIT:
            self._by_id.popitem(last=False)
        session = Session(token(), owner, token(), now, now)
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (its idle timer restarted), or None."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen >= self._idle or now - session.started >= self._lifetime:
            self.end(session_id)
            return None
        session.seen = now
        self._by_id.move_to_end(session_id)
        return session

    def end(self, session_id: str) -> None:
        """Sign out (the secret of an unfinished set-up goes with the session)."""
        self._by_id.pop(session_id, None)

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
