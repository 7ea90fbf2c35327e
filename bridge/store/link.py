"""A PostgreSQL connection the reactor drives itself, for the store turn that is one
statement (`PostgresStore.link_turn`).

A turn sent from the store's thread crossed to it and back, and each of its waits on the
network gave up the interpreter and then waited for it again behind the reactor: on the
2-vCPU development VM a login spent ~100 µs of CPU there, and most of its wait for the
turn was that hand-over (docs/store-path.md). Here libpq's non-blocking calls are made
on the reactor: the statement is sent, and its answer is read when the socket says so.
Everything else (a turn with a new row or key, a decision still to be made against the
store, connecting, and the turns while the link is down) stays on the store's thread.

A failure fails the turn (its logins are rejected, never accepted without their state)
and closes the link; turns go to the store's thread meanwhile, and the link is opened
again there after `RETRY_SECONDS`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from psycopg import pq
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.core.types import UserRecord
from bridge.store.postgres import LINK_STATEMENT, PostgresStore, error_reason
from bridge.store.records import LOST, SeenChange, StoreError, StoreUnavailableError
from bridge.store.worker import StoreWorker

log = Logger(namespace="bridge.store")

RETRY_SECONDS = 5.0
TIMEOUT_SECONDS = 6.0  # the server's statement_timeout (5 s) and a margin: a lost network


class StatementLink:
    """One connection, one prepared statement, one execution at a time, on the reactor."""

    def __init__(self, reactor: Any, worker: StoreWorker, store: PostgresStore) -> None:
        self._reactor = reactor
        self._worker = worker
        self._store = store
        self._where = store.where
        self._db: Any = None  # the psycopg connection (its libpq one is driven here)
        self._pgconn: Any = None
        self._fd = -1
        self._opening = False
        self._retry_at = 0.0
        self._waiting: Deferred[bytes] | None = None
        self._results: list[Any] = []
        self._timeout: IDelayedCall | None = None
        self.turns = 0  # statements sent (for tests)

    @property
    def ready(self) -> bool:
        """Whether a statement can be sent now; when not connected, the link is opened
        (on the store's thread) for the turns after this one."""
        if self._pgconn is not None:
            return self._waiting is None
        if not self._opening and self._reactor.seconds() >= self._retry_at:
            self._opening = True
            self._worker.run(self._store.open_link).addCallbacks(self._opened, self._not_opened)
        return False

    def turn(
        self, reads: list[str], changes: list[SeenChange[Any]]
    ) -> Deferred[tuple[dict[str, UserRecord], list[Any]]] | None:
        """A store turn (`RecordStore.turn` without rebinds or States) as the one statement
        sent from here, if it can be: None when it cannot, or the link is not ready. The
        decisions that lost a race are made again on the store's thread."""
        if not self.ready:
            return None
        store = self._store
        turn = store.link_turn(reads, changes)
        if turn is None:
            return None

        def settle(answer: bytes) -> Any:
            found, results = store.settle_link_turn(turn, answer)
            if not any(result is LOST for result in results):
                return found, results
            again = self._worker.run(store.decide_again, changes, results)
            return again.addCallback(lambda made: (found, made))

        return self._send(turn.params).addCallback(settle)

    def _send(self, params: Sequence[bytes | None]) -> Deferred[bytes]:
        """Send the statement with `params` (the link is ready); fires with its one value."""
        pgconn = self._pgconn
        waiting: Deferred[bytes] = Deferred()
        self._waiting, self._results = waiting, []
        self.turns += 1
        try:
            pgconn.send_query_prepared(LINK_STATEMENT, params)
            if pgconn.flush():  # more to send than the socket took: finish when writable
                self._reactor.addWriter(self)
        except Exception as exc:
            self._fail(StoreUnavailableError(f"{self._where}: {error_reason(exc)}"))
            return waiting
        self._timeout = self._reactor.callLater(TIMEOUT_SECONDS, self._timed_out)
        return waiting

    def close(self) -> None:
        """Drop the connection (a statement on its way fails)."""
        self._drop(StoreUnavailableError(f"{self._where}: the store is closing"))
        self._retry_at = float("inf")

    # IReadDescriptor / IWriteDescriptor, for the reactor

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's interface
        return "mfa-bridge store link"

    def doWrite(self) -> None:  # noqa: N802 - Twisted's interface
        try:
            if not self._pgconn.flush():
                self._reactor.removeWriter(self)
        except Exception as exc:
            self._fail(StoreUnavailableError(f"{self._where}: {error_reason(exc)}"))

    def doRead(self) -> None:  # noqa: N802 - Twisted's interface
        pgconn = self._pgconn
        try:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    self._answered()
                    return
                self._results.append(result)
        except Exception as exc:
            self._fail(StoreUnavailableError(f"{self._where}: {error_reason(exc)}"))

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's interface
        self._fail(StoreUnavailableError(f"{self._where}: connection lost"))

    # the rest

    def _opened(self, db: Any) -> None:
        self._opening = False
        if self._retry_at == float("inf"):  # closed meanwhile
            self._store.close_link(db)
            return
        db.pgconn.nonblocking = 1
        # The reactor watches a copy of libpq's socket: libpq closes its own when it finds
        # the connection lost, and the reactor must still be able to stop watching it.
        self._db, self._pgconn, self._fd = db, db.pgconn, os.dup(db.pgconn.socket)
        self._reactor.addReader(self)

    def _not_opened(self, failure: Failure) -> None:
        self._opening = False
        self._retry_at = self._reactor.seconds() + RETRY_SECONDS
        log.info(
            "store.link_down store={store} reason={reason}",
            store=self._where,
            reason=failure.getErrorMessage(),
        )

    def _answered(self) -> None:
        """The statement's results are in: one row, one value, or an error."""
        waiting, self._waiting = self._waiting, None
        self._cancel_timeout()
        if waiting is None:
            return  # nothing was asked (a notice, or the server saying goodbye)
        results, self._results = self._results, []
        errors = [r for r in results if r.status != pq.ExecStatus.TUPLES_OK]
        if errors or len(results) != 1 or results[0].ntuples != 1:
            message = errors[0].error_message.decode(errors="replace") if errors else "no answer"
            self._waiting = waiting  # _fail answers it
            self._fail(StoreError(f"{self._where}: {' '.join(message.split())[:300]}"))
            return
        value = results[0].get_value(0, 0)
        waiting.callback(bytes(value) if value is not None else b"null")

    def _timed_out(self) -> None:
        self._timeout = None
        self._fail(StoreUnavailableError(f"{self._where}: no answer in {TIMEOUT_SECONDS:g} s"))

    def _fail(self, error: Exception) -> None:
        """The turn on its way fails; the link closes, to be opened again later."""
        log.info("store.link_down store={store} reason={reason}", store=self._where, reason=error)
        self._retry_at = self._reactor.seconds() + RETRY_SECONDS
        self._drop(error)

    def _drop(self, error: Exception) -> None:
        self._cancel_timeout()
        if self._fd >= 0:  # watched since `_opened`
            self._reactor.removeReader(self)
            self._reactor.removeWriter(self)
            os.close(self._fd)
        db, self._db, self._pgconn, self._fd = self._db, None, None, -1
        if db is not None:
            self._store.close_link(db)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(Failure(error))

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
