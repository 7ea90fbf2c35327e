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

SESSION_LIMIT = 10_000


def token() -> str:
    """A random, URL-safe token of 256 bits."""
    return secrets.token_urlsafe(32)


@dataclass(slots=True)
class Session:
    """One signed-in user."""

    id: str
    username: str
    csrf: str
    started: float
    seen: float
    new_secret: bytes | None = field(default=None, repr=False)  # shown until confirmed
    old_device_proven: bool = False  # a reset may issue a new secret


class Sessions:
    """Sessions by id; expired ones are forgotten when looked up or when room is needed."""

    def __init__(self, clock: Callable[[], float], idle: float, lifetime: float) -> None:
        self._clock = clock
        self._idle = idle
        self._lifetime = lifetime
        self._by_id: OrderedDict[str, Session] = OrderedDict()  # least recently seen first

    def start(self, username: str) -> Session:
        """A new session for a user who just signed in."""
        now = self._clock()
        while len(self._by_id) >= SESSION_LIMIT:
            self._by_id.popitem(last=False)
        session = Session(token(), username, token(), now, now)
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
    """At most `limit` attempts per key in any `window` seconds (a sliding window)."""

    def __init__(self, clock: Callable[[], float], limit: int, window: float) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window
        self._attempts: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        """Count an attempt for `key`; False (and not counted) when over the limit."""
        now = self._clock()
        times = self._attempts.setdefault(key, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        if len(times) >= self._limit:
            return False
        times.append(now)
        if len(self._attempts) > SESSION_LIMIT * 10:
            self._forget_idle(now)
        return True

    def _forget_idle(self, now: float) -> None:
        idle = [k for k, t in self._attempts.items() if not t or t[-1] <= now - self._window]
        for key in idle:
            del self._attempts[key]
