"""Batched store writes: one transaction per reactor turn, each login answered after commit."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.testing import MemoryReactorClock

from bridge.core.types import State, UserRecord
from bridge.store import SqliteStore
from bridge.store.batching import GATHER_SECONDS, StoreBatcher
from bridge.store.records import ChallengeRow


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")


def eid(name: str) -> str:
    """The entry id of `name`'s directory entry (records are keyed by it, not by the name)."""
    return f"entry-{name}"


def active(name: str) -> UserRecord:
    return UserRecord(
        name,
        State.ACTIVE,
        secret=b"k" * 20,
        confirmed=True,
        created=1,
        updated=1,
        entry_id=eid(name),
    )


def step(value: int) -> Any:
    """A change that records TOTP step `value` and returns it."""
    return lambda r: (r.evolve(last_step=value) if r else None, value)


def test_many_changes_commit_together_with_their_results(store: SqliteStore) -> None:
    """update_seen_many writes every change and returns each result in order."""
    for name in ("alice", "bob"):
        store.update(eid(name), lambda _r, n=name: (active(n), None))
    seen = {name: store.get(eid(name)) for name in ("alice", "bob")}
    results = store.update_seen_many(
        [(eid("alice"), seen["alice"], step(5)), (eid("bob"), seen["bob"], step(6))]
    )
    assert results == [5, 6]
    assert [store.get(eid(n)).last_step for n in ("alice", "bob")] == [5, 6]  # type: ignore[union-attr]


def test_under_load_a_batch_waits_a_moment_and_alone_it_commits_at_once(
    store: SqliteStore,
) -> None:
    """After a batch of several writes (logins overlap), the next waits GATHER_SECONDS for
    the binds about to come back; after a batch of one, a write commits next turn."""
    clock = MemoryReactorClock()
    batcher = StoreBatcher(store, clock)
    names = ("alice", "bob", "carol", "dave")
    for name in names:
        store.update(eid(name), lambda _r, n=name: (active(n), None))
    fired: list[int] = []

    def write(name: str, value: int) -> None:
        batcher.update_seen(eid(name), store.get(eid(name)), step(value)).addCallback(fired.append)

    write("alice", 1)
    clock.advance(0)
    assert fired == [1]  # alone: at once
    write("bob", 2)
    write("carol", 3)
    clock.advance(0)
    assert fired == [1, 2, 3]  # this batch held two
    write("dave", 4)
    clock.advance(0)
    assert fired == [1, 2, 3]  # under load: it waits for others
    write("alice", 5)
    clock.advance(GATHER_SECONDS)
    assert fired == [1, 2, 3, 4, 5]  # and both commit together
    assert (batcher.batches, batcher.writes) == (3, 5)
    write("bob", 6)  # the last batch held two: still waiting
    clock.advance(GATHER_SECONDS)
    write("carol", 7)  # after a batch of one: at once again
    clock.advance(0)
    assert fired == [1, 2, 3, 4, 5, 6, 7]


def test_a_batch_waits_no_longer_once_every_login_in_flight_is_in_it(
    store: SqliteStore,
) -> None:
    """Under load, the wait ends when the batch holds a write of every login in flight:
    nothing more could join it."""
    clock = MemoryReactorClock()
    batcher = StoreBatcher(store, clock)
    in_flight = [0]
    batcher.logins_in_flight = lambda: in_flight[0]
    for name in ("alice", "bob", "carol"):
        store.update(eid(name), lambda _r, n=name: (active(n), None))
    fired: list[int] = []

    def write(name: str, value: int) -> None:
        batcher.update_seen(eid(name), store.get(eid(name)), step(value)).addCallback(fired.append)

    in_flight[0] = 2
    write("alice", 1)
    write("bob", 2)
    clock.advance(0)
    assert fired == [1, 2]  # two in the batch: the next one gathers
    in_flight[0] = 3
    write("carol", 3)
    clock.advance(0)
    assert fired == [1, 2]  # two more logins are still at the directory
    write("alice", 4)
    clock.advance(0)
    assert fired == [1, 2]
    write("bob", 5)  # the last one: every login in flight is waiting on this batch
    clock.advance(0)
    assert fired == [1, 2, 3, 4, 5]


def test_same_user_twice_in_a_batch_sees_the_first_write(store: SqliteStore) -> None:
    """The second change of a user in one batch runs again on the record the first wrote."""
    store.update(eid("alice"), lambda _r: (active("alice"), None))
    seen = store.get(eid("alice"))

    def count(record: UserRecord | None) -> tuple[UserRecord | None, int]:
        assert record is not None
        return record.evolve(failures=record.failures + 1), record.failures + 1

    changes = [(eid("alice"), seen, count), (eid("alice"), seen, count)]
    assert store.update_seen_many(changes) == [1, 2]
    after = store.get(eid("alice"))
    assert after is not None and after.failures == 2


def test_a_failing_change_loses_only_itself(store: SqliteStore) -> None:
    """A change that raises gets its exception back; the rest of the batch commits."""
    store.update(eid("alice"), lambda _r: (active("alice"), None))
    seen = store.get(eid("alice"))

    def broken(_record: UserRecord | None) -> tuple[UserRecord | None, int]:
        raise ValueError("bug")

    results = store.update_seen_many(
        [(eid("alice"), seen, broken), (eid("bob"), None, step_new("bob"))]
    )
    assert isinstance(results[0], ValueError)
    assert results[1] == "new"
    assert store.get(eid("bob")) is not None


def step_new(name: str) -> Any:
    grace = UserRecord(name, State.GRACE, deadline=100, created=1, updated=1, entry_id=eid(name))
    return lambda _r: (grace, "new")


def test_batcher_commits_once_per_turn_and_answers_after(store: SqliteStore) -> None:
    """Writes queued in one turn commit in one transaction at the next; then they fire."""
    clock = MemoryReactorClock()
    batcher = StoreBatcher(store, clock)
    for name in ("alice", "bob", "carol"):
        store.update(eid(name), lambda _r, n=name: (active(n), None))
    fired: list[int] = []
    for value, name in enumerate(("alice", "bob", "carol"), start=1):
        batcher.update_seen(eid(name), store.get(eid(name)), step(value)).addCallback(fired.append)
    assert fired == []  # not answered before the commit
    assert store.get(eid("alice")).last_step is None  # type: ignore[union-attr]
    clock.advance(0)
    assert fired == [1, 2, 3]
    assert (batcher.batches, batcher.writes) == (1, 3)
    assert store.get(eid("carol")).last_step == 3  # type: ignore[union-attr]


def test_batcher_fails_every_login_when_the_store_fails(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store error fails each queued write and read (the logins fail closed), none is
    left hanging."""
    clock = MemoryReactorClock()
    batcher = StoreBatcher(store, clock)

    def locked(*_batch: object) -> list[object]:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "turn", locked)
    errors: list[str] = []
    for name in ("alice", "bob"):
        d = batcher.update_seen(eid(name), None, step_new(name))
        d.addErrback(lambda f: errors.append(f.getErrorMessage()))
    batcher.get(eid("carol")).addErrback(lambda f: errors.append("read: " + f.getErrorMessage()))
    clock.advance(0)
    assert sorted(errors) == ["database is locked"] * 2 + ["read: database is locked"]


def test_a_remembered_bind_commits_with_the_turns_logins(store: SqliteStore) -> None:
    """A rebind row queued in a turn is written in that turn's one transaction, not alone."""
    clock = MemoryReactorClock()
    batcher = StoreBatcher(store, clock)
    batcher.update_seen(eid("alice"), None, step_new("alice"))
    batcher.remember_rebind(b"m" * 32, eid("alice"), expires=700, now=100)
    assert not store.knows_rebind(b"m" * 32, eid("alice"), 100)  # nothing before the commit
    clock.advance(0)
    assert (batcher.batches, batcher.writes) == (1, 1)
    assert store.knows_rebind(b"m" * 32, eid("alice"), 699)
    assert not store.knows_rebind(b"m" * 32, eid("alice"), 700)  # expired
    batcher.remember_rebind(b"n" * 32, eid("alice"), expires=800, now=200)  # alone in a turn
    clock.advance(0)
    assert batcher.batches == 2
    assert store.knows_rebind(b"n" * 32, eid("alice"), 200)


def test_flush_at_shutdown_commits_what_is_queued(store: SqliteStore) -> None:
    """flush() commits at once (the daemon stopping), and the pending timer is cancelled."""
    clock = MemoryReactorClock()
    batcher = StoreBatcher(store, clock)
    batcher.update_seen(eid("dave"), None, step_new("dave"))
    batcher.flush()
    assert store.get(eid("dave")) is not None
    assert clock.getDelayedCalls() == []


def test_expired_rebind_rows_are_deleted_at_most_once_a_minute(store: SqliteStore) -> None:
    """The table of remembered binds does not grow without bound, nor pay a purge per login."""

    def rows() -> int:
        return int(store.query("SELECT count(*) FROM rebinds")[0][0])

    store.remember_rebind(b"a" * 32, eid("alice"), expires=150, now=100)
    store.remember_rebind(b"b" * 32, eid("bob"), expires=1000, now=155)  # a is expired, kept
    assert rows() == 2
    store.remember_rebind(b"c" * 32, eid("carol"), expires=1000, now=160)  # a minute since
    assert rows() == 2
    assert not store.knows_rebind(b"a" * 32, eid("alice"), 160)


def test_reads_and_writes_of_one_turn_are_one_store_call(store: SqliteStore) -> None:
    """The batcher's reads (a threaded store's) join the turn's writes: one `turn` call
    reads each entry once, answers every reader, and commits the writes."""
    clock = MemoryReactorClock()
    batcher = StoreBatcher(store, clock)
    store.update(eid("alice"), lambda _r: step_new("alice")(None))
    store.update(eid("carol"), lambda _r: (active("carol"), None))
    turns: list[tuple[list[str], int]] = []
    real = store.turn

    def counting(reads: list[str], changes: list[Any], *rest: Any) -> Any:
        turns.append((sorted(reads), len(changes)))
        return real(reads, changes, *rest)

    store.turn = counting  # type: ignore[method-assign]
    got: dict[int, object] = {}
    for i, name in enumerate(("alice", "bob", "alice")):
        batcher.get(eid(name)).addCallback(lambda r, i=i: got.__setitem__(i, r))
    written: list[int] = []
    batcher.update_seen(eid("carol"), store.get(eid("carol")), step(9)).addCallback(written.append)
    assert got == {}
    clock.advance(0)
    assert turns == [([eid("alice"), eid("bob")], 1)]
    assert {i: getattr(r, "username", None) for i, r in got.items()} == {
        0: "alice",
        1: None,
        2: "alice",
    }
    assert written == [9]
    assert store.get(eid("carol")).last_step == 9  # type: ignore[union-attr]


def test_a_state_answered_before_its_row_is_written_is_taken_from_the_queue(
    store: SqliteStore,
) -> None:
    """A NAS quicker than one reactor turn: the State answers once, and is never written."""
    clock = MemoryReactorClock()
    batcher = StoreBatcher(store, clock)
    row = ChallengeRow(b"s" * 16, "alice", eid("alice"), "alice", "uid=alice", "10.0.0.1", 99.0)
    batcher.remember_challenge(row)
    assert batcher.take_queued_challenge(b"x" * 16) is None
    assert batcher.take_queued_challenge(b"s" * 16) == row
    assert batcher.take_queued_challenge(b"s" * 16) is None
    clock.advance(0)
    assert store.take_challenge(b"s" * 16, 0.0) is None


class _InlineThreaded:
    """A worker that says it is threaded (a remote store's) but runs calls at once."""

    threaded = True

    @staticmethod
    def run(call: Any, *args: Any) -> Any:
        return maybeDeferred(call, *args)


def test_on_a_threaded_store_a_decision_that_reads_nothing_is_made_when_queued(
    store: SqliteStore,
) -> None:
    """`early`: decided on the reactor when queued, the turn only writes it; when another
    writer changed the record meanwhile, the turn decides again on what it finds. A
    change that may read the store is decided in the turn, as always."""
    clock = MemoryReactorClock()
    batcher = StoreBatcher(store, clock, _InlineThreaded())  # type: ignore[arg-type]
    for name in ("alice", "bob", "carol"):
        store.update(eid(name), lambda _r, n=name: (active(n), None))
    calls: list[tuple[str, int | None]] = []

    def spend(name: str, value: int) -> Any:
        def change(current: UserRecord | None) -> tuple[UserRecord | None, str]:
            assert current is not None
            calls.append((name, current.last_step))
            if current.last_step is not None and current.last_step >= value:
                return current, "replay"
            return current.evolve(last_step=value), "accepted"

        return change

    seen = {name: store.get(eid(name)) for name in ("alice", "bob", "carol")}
    results: list[str] = []
    for name in ("alice", "bob"):
        batcher.update_seen(eid(name), seen[name], spend(name, 5), early=True).addCallback(
            results.append
        )
    batcher.update_seen(eid("carol"), seen["carol"], spend("carol", 5)).addCallback(results.append)
    assert calls == [("alice", None), ("bob", None)]  # decided when queued; carol not yet
    store.update(eid("bob"), lambda r: (r.evolve(last_step=5) if r else None, None))  # elsewhere
    clock.advance(0)
    assert calls == [("alice", None), ("bob", None), ("carol", None), ("bob", 5)]
    assert results == ["accepted", "replay", "accepted"]
    assert [store.get(eid(n)).last_step for n in ("alice", "bob", "carol")] == [5, 5, 5]  # type: ignore[union-attr]
