"""Group the store calls of one reactor turn: one transaction, one round trip.

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
On a threaded store (`worker.py`, PostgreSQL) the records read before binds join the
turn too (`get`: SQLite reads inline), and one turn is on its way at a time: what comes
meanwhile waits for the next, which gathers it without a wait of its own (a wait there
took one instance from 0.6 to 0.4 times SQLite's logins/s). A turn's reads and writes
are one statement there: each statement costs a round trip and the database server's
own CPU, on this VM ~200 µs for the smallest. The common turn is sent from the reactor
itself when the store has a link (`link.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from bridge.core.types import UserRecord
from bridge.store.records import ChallengeRow, RebindRow, RecordStore
from bridge.store.worker import StoreWorker

if TYPE_CHECKING:
    from bridge.store.link import StatementLink

Change = Callable[[UserRecord | None], tuple[UserRecord | None, Any]]
Queued = tuple[str, UserRecord | None, Change, Deferred[Any]]
Reads = dict[str, list[Deferred[UserRecord | None]]]  # entry -> the logins waiting for it


GATHER_SECONDS = 0.002


class _Decided:
    """`change`, decided when queued on `seen`: the store's turn calls it on `seen` again
    (then the decision is this one) or, when another writer got there first, on the
    current record. On a threaded store this takes the decisions (Python that would
    contend with the reactor for the interpreter) out of the turn that every login waits
    for, and lets a turn of such decisions be one statement the reactor sends itself."""

    early = True

    def __init__(self, change: Change, seen: UserRecord | None, first: Any) -> None:
        self._change = change
        self._seen = seen
        self._first = first

    def __call__(self, current: UserRecord | None) -> tuple[UserRecord | None, Any]:
        return self._first if current is self._seen else self._change(current)


def _decided(change: Change, seen: UserRecord | None) -> Change:
    """`change`, decided now on `seen` (`_Decided`); as it is when deciding it raised
    (the turn decides again, and answers the failure)."""
    try:
        return _Decided(change, seen, change(seen))
    except Exception:
        return change


class StoreBatcher:
    """`RecordStore.update_seen` (and on a threaded store `get`), asynchronous, one store
    turn per reactor turn."""

    def __init__(
        self,
        store: RecordStore,
        clock: IReactorTime,
        worker: StoreWorker | None = None,
        link: StatementLink | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._worker = worker or StoreWorker(clock, threaded=False)
        self._link = link  # the reactor's own connection, for turns of one statement
        self._committing: Deferred[None] | None = None  # the batch on its way, if any
        self._queue: list[Queued] = []
        self._rebinds: list[RebindRow] = []
        self._challenges: list[ChallengeRow] = []
        self._reads: Reads = {}
        self._flush_call: IDelayedCall | None = None
        self.batches = 0
        self.writes = 0
        self._last_size = 0  # writes in the last batch: several means logins overlap
        # How many logins are being decided (the Authenticator's count); None: unknown.
        self.logins_in_flight: Callable[[], int] | None = None

    def update_seen(
        self, entry_id: str, seen: UserRecord | None, change: Change, *, early: bool = False
    ) -> Deferred[Any]:
        """Queue a compare-and-set write; fires with `change`'s result once committed.

        `early`: `change` reads nothing from the store, so on a threaded store it may be
        decided here, on the reactor, and the store's turn only writes.
        """
        done: Deferred[Any] = Deferred()
        if early and self._worker.threaded:
            change = _decided(change, seen)
        self._queue.append((entry_id, seen, change, done))
        self._schedule()
        return done

    @property
    def threaded(self) -> bool:
        """Whether the store's calls run off the reactor (then reads are batched here)."""
        return self._worker.threaded

    def get(self, entry_id: str) -> Deferred[UserRecord | None]:
        """The entry's record (None if the bridge has never seen it), read in the next
        turn: on a threaded store, with that turn's writes, in one statement."""
        done: Deferred[UserRecord | None] = Deferred()
        self._reads.setdefault(entry_id, []).append(done)
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
        reads, self._reads = self._reads, {}
        if not queue and not rebinds and not challenges and not reads:
            return succeed(None)
        if queue or rebinds or challenges:  # a turn of reads alone commits nothing
            self.batches += 1
            self.writes += len(queue)
            self._last_size = len(queue)
        changes = [(u, s, c) for u, s, c, _d in queue]
        turn = None
        if self._link is not None and not rebinds and not challenges:
            turn = self._link.turn(list(reads), changes)
        if turn is None:
            turn = self._worker.run(
                self._store.turn, list(reads), changes, rebinds, challenges, self._clock.seconds()
            )
        done: Deferred[None] = turn.addCallbacks(
            self._answer, self._fail, callbackArgs=(queue, reads), errbackArgs=(queue, reads)
        )
        if not done.called:
            self._committing = done
            done.addBoth(self._committed)
        return done

    def _committed(self, result: object) -> object:
        self._committing = None
        if self._queue or self._rebinds or self._challenges or self._reads:
            self._schedule()
        return result

    @staticmethod
    def _answer(
        turn: tuple[dict[str, UserRecord], list[Any]], queue: list[Queued], reads: Reads
    ) -> None:
        records, results = turn
        for entry_id, readers in reads.items():
            for reader in readers:
                reader.callback(records.get(entry_id))
        for (*_rest, done), result in zip(queue, results, strict=True):
            if isinstance(result, Exception):
                done.errback(Failure(result))
            else:
                done.callback(result)

    @staticmethod
    def _fail(failure: Failure, queue: list[Queued], reads: Reads) -> None:
        """The store failed: every login of the turn fails closed."""
        for readers in reads.values():
            for reader in readers:
                reader.errback(failure)
        for *_rest, done in queue:
            done.errback(failure)
