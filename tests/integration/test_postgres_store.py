"""The PostgreSQL store against a real server: two instances on one database act as one."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.core.types import Identity, State, UserRecord
from bridge.store import StoreError, StoreUnavailableError
from bridge.store.postgres import PostgresStore
from tests.postgres import Postgres

ALICE = Identity("6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b", "alice", "uid=alice,dc=example,dc=org")


@pytest.fixture
def url(postgres: Postgres) -> str:
    """A fresh database for the test."""
    return postgres.url(f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def pair(url: str, tmp_path: Path) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two instances' stores on one database, with the same key file."""
    key = tmp_path / "state.key"
    first = PostgresStore.open(url, key)
    second = PostgresStore.open(url, key)
    yield first, second
    first.close()
    second.close()


def active(last_step: int | None = None) -> UserRecord:
    return UserRecord(
        "alice",
        State.ACTIVE,
        secret=b"k" * 20,
        confirmed=True,
        last_step=last_step,
        created=1,
        updated=1,
        entry_id=ALICE.entry_id,
    )


def put(store: PostgresStore, record: UserRecord) -> None:
    store.update(record.entry_id, lambda _old: (record, None))


def test_a_record_written_by_one_instance_is_read_by_the_other(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = pair
    put(first, active())
    got = second.get(ALICE.entry_id)
    assert got is not None
    assert (got.state, got.secret, got.username) == (State.ACTIVE, b"k" * 20, "alice")
    assert [r.entry_id for r in second.named("ALICE")] == [ALICE.entry_id]


def test_a_code_step_spent_on_one_instance_is_spent_on_both(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    """Both read the record, both try to spend step 7: exactly one write wins, the other
    decides again on the record the winner wrote (and sees the step spent)."""
    first, second = pair
    put(first, active())
    seen_first, seen_second = first.get(ALICE.entry_id), second.get(ALICE.entry_id)

    def spend(current: UserRecord | None) -> tuple[UserRecord | None, str]:
        assert current is not None
        if current.last_step is not None and current.last_step >= 7:
            return current, "replay"
        return current.evolve(last_step=7), "accepted"

    assert first.update_seen(ALICE.entry_id, seen_first, spend) == "accepted"
    assert second.update_seen(ALICE.entry_id, seen_second, spend) == "replay"
    assert second.update_seen_many([(ALICE.entry_id, seen_second, spend)]) == ["replay"]


def test_parallel_writers_on_two_instances_lose_no_update(url: str, tmp_path: Path) -> None:
    """200 failure counts from 4 threads on 2 instances' connections: all 200 land."""
    key = tmp_path / "state.key"
    stores = [PostgresStore.open(url, key) for _ in range(4)]
    put(stores[0], active())

    def fail_once(current: UserRecord | None) -> tuple[UserRecord | None, None]:
        assert current is not None
        return current.evolve(failures=current.failures + 1), None

    def work(store: PostgresStore) -> None:
        for _ in range(50):
            store.update_seen(ALICE.entry_id, store.get(ALICE.entry_id), fail_once)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = stores[0].get(ALICE.entry_id)
    assert record is not None
    assert record.failures == 200
    for store in stores:
        store.close()


def test_a_first_record_made_on_both_at_once_is_made_once(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    """Two instances creating the same user's record: the second decides on the first's."""
    first, second = pair
    grace = UserRecord(
        "alice", State.GRACE, deadline=99, created=1, updated=1, entry_id=ALICE.entry_id
    )
    made: list[str] = []

    def create(current: UserRecord | None) -> tuple[UserRecord | None, str]:
        made.append("new" if current is None else "existing")
        return (grace if current is None else current), made[-1]

    assert first.update_seen(ALICE.entry_id, None, create) == "new"
    assert second.update_seen(ALICE.entry_id, None, create) == "existing"


def test_rebinds_remembered_by_one_are_known_by_the_other(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = pair
    mac = first.mac(b"rebind", b"x")
    assert mac == second.mac(b"rebind", b"x")  # the same key file: the same keyed hash
    first.remember_rebind(mac, ALICE.entry_id, expires=700, now=100)
    assert second.knows_rebind(mac, ALICE.entry_id, 699)
    assert not second.knows_rebind(mac, ALICE.entry_id, 700)
    second.forget_rebinds(ALICE.entry_id)
    assert not first.knows_rebind(mac, ALICE.entry_id, 100)


def test_instances_starting_together_create_the_schema_once(url: str, tmp_path: Path) -> None:
    key = tmp_path / "state.key"
    key.write_bytes(b"")  # made by the first; here every instance is given the same file
    key.unlink()
    PostgresStore.open(url, key).close()  # the key file, as an admin copies it to each
    opened: list[object] = []

    def start() -> None:
        try:
            opened.append(PostgresStore.open(url, key))
        except Exception as exc:  # the test reports whatever went wrong
            opened.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(s, PostgresStore) for s in opened), opened
    for store in opened:
        if isinstance(store, PostgresStore):
            store.close()


def test_a_wrong_or_missing_key_file_is_refused(url: str, tmp_path: Path) -> None:
    store = PostgresStore.open(url, tmp_path / "state.key")
    put(store, active())
    store.close()
    with pytest.raises(StoreError, match="the key file is missing"):
        PostgresStore.open(url, tmp_path / "elsewhere.key")
    other = tmp_path / "other.key"
    PostgresStore.open(url.rsplit("/", 1)[0] + "/postgres", other).close()  # a key of its own
    with pytest.raises(StoreError, match="sealed with the key of fingerprint"):
        PostgresStore.open(url, other)


def test_another_id_attribute_is_refused_once_records_exist(url: str, tmp_path: Path) -> None:
    key = tmp_path / "state.key"
    store = PostgresStore.open(url, key)
    put(store, active())
    store.close()
    with pytest.raises(StoreError, match=r"keyed by directory\.id_attribute 'entryUUID'"):
        PostgresStore.open(url, key, id_attribute="objectGUID")


def test_an_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open the store"):
        PostgresStore.open("postgresql://bridge@127.0.0.1:1/mfa", tmp_path / "state.key")


def test_the_database_restarted_fails_the_write_then_recovers(
    postgres: Postgres, url: str, tmp_path: Path
) -> None:
    """While the server is down a write raises (the login fails closed); after it is back
    the store reconnects by itself on the next use."""
    store = PostgresStore.open(url, tmp_path / "state.key")
    put(store, active())
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailableError):
            put(store, active(last_step=5))
    finally:
        postgres.start()
    put(store, active(last_step=6))
    record = store.get(ALICE.entry_id)
    assert record is not None
    assert record.last_step == 6
    store.close()


def record_of(i: int, last_step: int | None = None) -> UserRecord:
    return UserRecord(
        f"user{i}",
        State.ACTIVE,
        secret=b"k" * 20,
        confirmed=True,
        last_step=last_step,
        created=1,
        updated=1,
        entry_id=f"entry-{i}",
    )


def spend(step: int) -> Any:
    """A login's change spending TOTP step `step`: accepted once, a replay after."""

    def change(current: UserRecord | None) -> tuple[UserRecord | None, str]:
        assert current is not None
        if current.last_step is not None and current.last_step >= step:
            return current, "replay"
        return current.evolve(last_step=step), "accepted"

    return change


def counted(store: PostgresStore) -> list[str]:
    """The statements `store` runs from now on, in order."""
    statements: list[str] = []
    real = store._execute

    def counting(sql: str, params: Any = ()) -> Any:
        statements.append(sql)
        return real(sql, params)

    store._execute = counting  # type: ignore[method-assign]
    return statements


def test_a_batch_is_written_in_one_statement_and_each_row_is_still_a_compare_and_set(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    """Five logins in one batch: three plain writes, one whose record another instance
    changed meanwhile (decided again on that), and a second login of the same user in the
    batch (decided again on the first one's write): no update lost, none applied twice."""
    first, second = pair
    for i in range(4):
        put(first, record_of(i))
    seen = first.get_many([f"entry-{i}" for i in range(4)])
    assert sorted(seen) == [f"entry-{i}" for i in range(4)]
    put(second, record_of(3, last_step=50))  # the other instance spends step 50 for user3

    batch = [(f"entry-{i}", seen[f"entry-{i}"], spend(10)) for i in range(4)]
    batch.append(("entry-0", seen["entry-0"], spend(10)))  # the same code again, same batch
    assert first.update_seen_many(batch) == ["accepted", "accepted", "accepted", "replay", "replay"]
    steps = {e: r.last_step for e, r in second.get_many([f"entry-{i}" for i in range(4)]).items()}
    assert steps == {"entry-0": 10, "entry-1": 10, "entry-2": 10, "entry-3": 50}


def test_a_turn_reads_and_writes_in_one_statement(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    """A store turn on PostgreSQL: the logins' writes and the next logins' reads are one
    round trip; a record read in the turn that writes it reads as it was before, and a
    login deciding on that loses its compare-and-set and is decided again."""
    first, second = pair
    for i in range(3):
        put(first, record_of(i))
    seen = first.get_many(["entry-0", "entry-1"])
    statements = counted(first)

    found, results = first.turn(
        ["entry-1", "entry-2", "entry-9"],
        [("entry-0", seen["entry-0"], spend(7)), ("entry-1", seen["entry-1"], spend(7))],
    )
    assert len(statements) == 1
    assert results == ["accepted", "accepted"]
    assert sorted(found) == ["entry-1", "entry-2"]  # entry-9 has no record
    assert found["entry-2"] == second.get("entry-2")
    assert found["entry-1"].last_step is None  # as before this turn's write
    assert second.get("entry-1").last_step == 7  # type: ignore[union-attr]
    # A login decided on that read: its write loses the compare-and-set, then sees step 7.
    assert first.turn([], [("entry-1", found["entry-1"], spend(7))])[1] == ["replay"]
    # A turn of reads alone, and one write alone with a read: one statement each.
    statements.clear()
    assert sorted(first.turn(["entry-0"], [])[0]) == ["entry-0"]
    assert len(statements) == 1
    latest = first.get("entry-2")
    statements.clear()
    found, results = first.turn(["entry-0"], [("entry-2", latest, spend(8))])
    assert (len(statements), results, sorted(found)) == (1, ["accepted"], ["entry-0"])


def test_a_turn_remembers_its_records_and_checks_a_decision_that_writes_nothing(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    """The records an instance's turns read or wrote are known without a round trip
    (`recent`); one that another instance changed since is never decided on: a write
    loses its compare-and-set, a decision that writes nothing is checked in the turn."""
    first, second = pair
    for i in range(2):
        put(first, record_of(i))
    assert first.recent("entry-0") is None  # written outside a turn: read at next login
    found, _results = first.turn(["entry-0", "entry-1"], [])
    assert first.recent("entry-0") == found["entry-0"]
    assert first.turn([], [("entry-0", found["entry-0"], spend(5))])[1] == ["accepted"]
    assert first.recent("entry-0") == second.get("entry-0")  # one version on, as written

    stale = first.recent("entry-1")
    put(second, record_of(1).evolve(failures=2))  # the other instance counts two failures

    def failures(current: UserRecord | None) -> tuple[UserRecord | None, int | None]:
        return current, current.failures if current is not None else None  # writes nothing

    statements = counted(first)
    assert first.turn([], [("entry-1", stale, failures)])[1] == [2]  # decided again
    assert len(statements) > 1  # the check, then the decision again
    assert first.recent("entry-1") is None  # decided outside the turn: read next time
    assert first.turn(["entry-1"], [])[0]["entry-1"] == second.get("entry-1")

    # A restore writes new versions: a record known from before it never matches.
    known = first.recent("entry-1")
    assert known is not None
    assert second.put_raw(second.raw_users(), replace=True) == (0, 2)
    restored = second.get("entry-1")
    assert restored is not None and restored.version != known.version
    assert restored.evolve(version=known.version) == known
