"""Group the store writes of one reactor turn into one transaction.

A burst of logins whose binds are answered together would otherwise pay one commit
each (SQLite's locks and WAL append, or PostgreSQL's round trips); here they share one.
A write joins the batch of the current reactor turn, the batch commits at the start of
the next (a `callLater(0)`), and only then does each login learn its decision: nothing
is answered before it is durable. On SQLite, under load (the last batch held several
writes), a batch waits up to GATHER_SECONDS for the logins whose binds are about to come back, and
commits as soon as every login in flight has its write in it (`logins_in_flight`: no one
else could join, and waiting longer would leave the core idle). On the 2-vCPU development
VM, 8,000 users at 16 in flight, that took a cold login from ~480 to ~340 µs of CPU and
left a warm one as it was (docs/store-path.md); a login alone still commits at once.
On a threaded store (`worker.py`, PostgreSQL) one batch is committed at a time: writes
that come meanwhile wait for the next, which gathers them without a wait of its own (a
wait there took one instance from 0.6 to 0.4 times SQLite's logins/s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from bridge.core.types import UserRecord
from bridge.store.records import ChallengeRow, RebindRow, RecordStore
from bridge.store.worker import StoreWorker

Change = Callable[[UserRecord | None], tuple[UserRecord | None, Any]]
Queued = tuple[str, UserRecord | None, Change, Deferred[Any]]


GATHER_SECONDS = 0.002


class WriteBatcher:
    """`RecordStore.update_seen`, asynchronous, committed once per reactor turn."""

    def __init__(
        self, store: RecordStore, clock: IReactorTime, worker: StoreWorker | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._worker = worker or StoreWorker(clock, threaded=False)
        self._committing: Deferred[None] | None = None  # the batch on its way, if any
        self._queue: list[Queued] = []
        self._rebinds: list[RebindRow] = []
        self._challenges: list[ChallengeRow] = []
        self._flush_call: IDelayedCall | None = None
        self.batches = 0
        self.writes = 0
        self._last_size = 0  # writes in the last batch: several means logins overlap
        # How many logins are being decided (the Authenticator's count); None: unknown.
        self.logins_in_flight: Callable[[], int] | None = None

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

    def remember_challenge(self, row: ChallengeRow) -> None:
        """Queue a RADIUS State issued: it commits with the next turn's writes (an answer
        comes back a human's typing later; one that came first would be refused)."""
        self._challenges.append(row)
        self._schedule()

    def take_queued_challenge(self, state: bytes) -> ChallengeRow | None:
        """A State answered before its row was written (a client quicker than one reactor
        turn): taken from the queue, so it is never written and answers once."""
        for position, row in enumerate(self._challenges):
            if row.state == state:
                del self._challenges[position]
                return row
        return None

    def _schedule(self) -> None:
        if self._committing is not None:
            return  # the next batch is scheduled when this one is committed
        if self._flush_call is None:
            # Off the reactor (PostgreSQL), a batch on its way already gathers the next.
            gather = not self._worker.threaded and self._last_size > 1
            gather = gather and not self._everyone_waits()
            self._flush_call = self._clock.callLater(GATHER_SECONDS if gather else 0, self.flush)
        elif self._everyone_waits() and self._flush_call.getTime() > self._clock.seconds():
            self._flush_call.reset(0)

    def _everyone_waits(self) -> bool:
        """Whether every login in flight already has its write queued."""
        count = self.logins_in_flight
        return count is not None and len(self._queue) >= count()

    def flush(self) -> Deferred[None]:
        """Commit everything queued; fires once it is (at shutdown: nothing queued is lost).

        While a batch is on its way (threaded store), the next one waits for it.
        """
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if self._committing is not None:
            waiting: Deferred[None] = Deferred()
            self._committing.addBoth(lambda _: self.flush().chainDeferred(waiting))
            return waiting
        queue, self._queue = self._queue, []
        rebinds, self._rebinds = self._rebinds, []
        challenges, self._challenges = self._challenges, []
        if not queue and not rebinds and not challenges:
            return succeed(None)
        self.batches += 1
        self.writes += len(queue)
        self._last_size = len(queue)
        changes = [(u, s, c) for u, s, c, _d in queue]
        committed = self._worker.run(
            self._store.update_seen_many, changes, rebinds, challenges, self._clock.seconds()
        )
        done: Deferred[None] = committed.addCallbacks(
            self._answer, self._fail, callbackArgs=(queue,), errbackArgs=(queue,)
        )
        if not done.called:
            self._committing = done
            done.addBoth(self._committed)
        return done

    def _committed(self, result: object) -> object:
        self._committing = None
        if self._queue or self._rebinds or self._challenges:
            self._schedule()
        return result

    @staticmethod
    def _answer(results: list[Any], queue: list[Queued]) -> None:
        for (*_rest, done), result in zip(queue, results, strict=True):
            if isinstance(result, Exception):
                done.errback(Failure(result))
            else:
                done.callback(result)

    @staticmethod
    def _fail(failure: Failure, queue: list[Queued]) -> None:
        """The store failed: every login of the batch fails closed."""
        for *_rest, done in queue:
            done.errback(failure)


class ReadBatcher:
    """Records read before the bind, gathered per reactor turn into one query.

    Used for a store off the reactor (`worker.py`): each read there is a round trip and a
    hand-over between threads, so a burst of logins shares one of each.
    """

    def __init__(self, store: RecordStore, clock: IReactorTime, worker: StoreWorker) -> None:
        self._store = store
        self._clock = clock
        self._worker = worker
        self._waiting: dict[str, list[Deferred[UserRecord | None]]] = {}
        self._call: IDelayedCall | None = None

    def get(self, entry_id: str) -> Deferred[UserRecord | None]:
        """The entry's record (None if the bridge has never seen it), read in a batch."""
        done: Deferred[UserRecord | None] = Deferred()
        self._waiting.setdefault(entry_id, []).append(done)
        if self._call is None:
            self._call = self._clock.callLater(0, self._read)
        return done

    def _read(self) -> None:
        self._call = None
        waiting, self._waiting = self._waiting, {}
        found = self._worker.run(self._store.get_many, list(waiting))

        def answer(records: dict[str, UserRecord]) -> None:
            for entry_id, readers in waiting.items():
                for reader in readers:
                    reader.callback(records.get(entry_id))

        def fail(failure: Failure) -> None:
            for readers in waiting.values():
                for reader in readers:
                    reader.errback(failure)

        found.addCallbacks(answer, fail)
