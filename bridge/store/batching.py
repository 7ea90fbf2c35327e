"""Group the store writes of one reactor turn into one transaction.

A burst of logins whose binds are answered together would otherwise pay one SQLite
commit each (its locks, its WAL append); here they share one. A write joins the batch
of the current reactor turn, the batch commits at the start of the next (a
`callLater(0)`), and only then does each login learn its decision: nothing is answered
before it is durable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from bridge.core.types import UserRecord
from bridge.store.records import RebindRow, RecordStore

Change = Callable[[UserRecord | None], tuple[UserRecord | None, Any]]


class WriteBatcher:
    """`RecordStore.update_seen`, asynchronous, committed once per reactor turn."""

    def __init__(self, store: RecordStore, clock: IReactorTime) -> None:
        self._store = store
        self._clock = clock
        self._queue: list[tuple[str, UserRecord | None, Change, Deferred[Any]]] = []
        self._rebinds: list[RebindRow] = []
        self._flush_call: IDelayedCall | None = None
        self.batches = 0
        self.writes = 0

    def update_seen(self, entry_id: str, seen: UserRecord | None, change: Change) -> Deferred[Any]:
        """Queue a compare-and-set write; fires with `change`'s result once committed."""
        done: Deferred[Any] = Deferred()
        self._queue.append((entry_id, seen, change, done))
        self._schedule()
        return done

    def remember_rebind(self, mac: bytes, entry_id: str, expires: int, now: int) -> None:
        """Queue an accepted bind to remember: it commits with the next turn's writes.

        Until then the Authenticator knows it in memory; only an instance sharing the
        store could miss it, for one reactor turn.
        """
        self._rebinds.append(RebindRow(mac, entry_id, expires, now))
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Commit everything queued (also called at shutdown, so nothing queued is lost)."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        queue, self._queue = self._queue, []
        rebinds, self._rebinds = self._rebinds, []
        if not queue and not rebinds:
            return
        self.batches += 1
        self.writes += len(queue)
        try:
            results: list[Any] = self._store.update_seen_many(
                [(u, s, c) for u, s, c, _d in queue], rebinds
            )
        except Exception:  # the store failed: every login of the batch fails closed
            failure = Failure()
            for *_rest, done in queue:
                done.errback(failure)
            return
        for (*_rest, done), result in zip(queue, results, strict=True):
            if isinstance(result, Exception):
                done.errback(Failure(result))
            else:
                done.callback(result)
