"""The SQLite store: sealed secrets, compare-and-set writes, schema migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bridge.core.types import LockReason, State, UserRecord
from bridge.store import SqliteStore, StoreError


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")


def active(name: str = "alice") -> UserRecord:
    return UserRecord(name, State.ACTIVE, secret=b"k" * 20, confirmed=True, created=1, updated=1)


def test_round_trip_and_version(store: SqliteStore) -> None:
    """A stored record reads back equal, with the row version counting writes."""
    store.update("alice", lambda _old: (active(), None))
    first = store.get("alice")
    assert first is not None and first.version == 1
    assert first.evolve(version=0) == active()
    store.update("alice", lambda old: (old.evolve(failures=2) if old else None, None))
    second = store.get("alice")
    assert second is not None and second.failures == 2 and second.version == 2


def test_update_seen_writes_in_one_statement(store: SqliteStore) -> None:
    """update_seen applies the change to the record read before, when nobody wrote since."""
    store.update("alice", lambda _old: (active(), None))
    seen = store.get("alice")
    result = store.update_seen(
        "alice", seen, lambda r: (r.evolve(last_step=7) if r else None, "ok")
    )
    assert result == "ok"
    after = store.get("alice")
    assert after is not None and after.last_step == 7 and after.version == 2


def test_update_seen_retries_on_the_current_record(store: SqliteStore) -> None:
    """A write between the read and the decision is not lost: the change runs again on it."""
    store.update("alice", lambda _old: (active(), None))
    seen = store.get("alice")
    store.update("alice", lambda r: (r.evolve(last_step=9) if r else None, None))  # meanwhile
    calls: list[UserRecord | None] = []

    def change(record: UserRecord | None) -> tuple[UserRecord | None, int | None]:
        calls.append(record)
        assert record is not None
        return record.evolve(failures=record.failures + 1), record.last_step

    assert store.update_seen("alice", seen, change) == 9
    assert [c.last_step if c else None for c in calls] == [None, 9]
    after = store.get("alice")
    assert after is not None and after.last_step == 9 and after.failures == 1


def test_update_seen_inserts_a_new_user_once(store: SqliteStore) -> None:
    """A first record is inserted; if another writer inserted it first, the change reruns."""
    grace = UserRecord("bob", State.GRACE, deadline=100, created=1, updated=1)
    assert store.update_seen("bob", None, lambda _r: (grace, "new")) == "new"
    locked = grace.evolve(state=State.LOCKED, lock_reason=LockReason.ADMIN)
    seen_nothing: list[UserRecord | None] = []

    def change(record: UserRecord | None) -> tuple[UserRecord | None, str]:
        seen_nothing.append(record)
        return (locked, "first") if record is None else (record, "kept")

    assert store.update_seen("bob", None, change) == "kept"
    current = store.get("bob")
    assert current is not None and current.state is State.GRACE


def test_secrets_sealed_and_key_mode(tmp_path: Path, store: SqliteStore) -> None:
    """The database file never holds the raw secret; a key file others can read is refused."""
    store.update("alice", lambda _old: (active(), None))
    store.close()
    data = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    assert b"k" * 20 not in data
    (tmp_path / "state.key").chmod(0o644)
    with pytest.raises(StoreError, match="readable by others"):
        SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")


def test_migrates_a_version_1_database(tmp_path: Path) -> None:
    """A database written by schema version 1 (no row versions) opens and keeps its rows."""
    path = tmp_path / "old.db"
    store = SqliteStore.open(path, tmp_path / "old.key")
    store.update("alice", lambda _old: (active(), None))
    store.close()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE v1 AS SELECT * FROM users")
    db.execute("DROP TABLE users")
    db.execute(
        "CREATE TABLE users (username TEXT PRIMARY KEY, state TEXT NOT NULL, deadline INTEGER,"
        " failures INTEGER NOT NULL DEFAULT 0, last_step INTEGER, secret BLOB,"
        " lock_reason TEXT, confirmed INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL,"
        " updated INTEGER NOT NULL) WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO users SELECT username, state, deadline, failures, last_step, secret,"
        " lock_reason, confirmed, created, updated FROM v1"
    )
    db.execute("DROP TABLE v1")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    reopened = SqliteStore.open(path, tmp_path / "old.key")
    record = reopened.get("alice")
    assert record is not None and record.secret == b"k" * 20 and record.version == 0
    reopened.update("alice", lambda r: (r.evolve(failures=1) if r else None, None))
    updated = reopened.get("alice")
    assert updated is not None and updated.version == 1


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A database from a newer release is refused with a message, not misread."""
    path = tmp_path / "new.db"
    SqliteStore.open(path, tmp_path / "new.key").close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStore.open(path, tmp_path / "new.key")
