"""Store calls off the reactor, for a backend whose calls may wait on the network.

SQLite is a local file: its calls take microseconds and run inline, on the reactor, as
they always have. PostgreSQL is a server that may be slow, far or gone: there, every call
that would wait on it runs on one thread of its own (its own connection), so a slow
database delays the logins that need it, never the reactor that answers everything else
(RADIUS retransmissions, Status-Server, the LDAP proxy's relayed searches). The common
login turn is the exception: the reactor sends it itself, without waiting (`link.py`).
One thread keeps the order of writes and makes batching natural: while one commit is on
its way, the next reactor turns' writes gather into the next one. See docs/store-path.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class StoreWorker:
    """Runs store calls: inline (SQLite), or on the store's own thread (PostgreSQL)."""

    def __init__(self, reactor: Any, threaded: bool) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(1, 1, "mfa-bridge-store") if threaded else None
        if self._pool is not None:
            self._pool.start()

    @property
    def threaded(self) -> bool:
        """Whether calls run on a thread of their own (their results come back later)."""
        return self._pool is not None

    def run(self, call: Callable[..., T], *args: Any) -> Deferred[T]:
        """`call(*args)`, its result (or exception) delivered on the reactor thread."""
        if self._pool is None:
            return maybeDeferred(call, *args)
        return deferToThreadPool(self._reactor, self._pool, call, *args)

    def stop(self) -> None:
        """Finish the calls queued, then end the thread (at shutdown, after the last write)."""
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
