"""`store backup` and `store restore` on SQLite: consistent under writes, sealed, no loss."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.core.types import State, UserRecord
from bridge.store import SqliteStore, StoreError
from bridge.store.backup import backup, restore


def record(i: int, state: State = State.ACTIVE) -> UserRecord:
    return UserRecord(
        f"user{i:04d}",
        state,
        secret=bytes([i % 256]) * 20 if state is State.ACTIVE else None,
        confirmed=state is State.ACTIVE,
        deadline=None if state is State.ACTIVE else 10_000,
        created=1,
        updated=1,
        entry_id=f"entry-{i:04d}",
    )


def put(store: SqliteStore, rec: UserRecord) -> None:
    store.update(rec.entry_id, lambda _old: (rec, None))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
    yield opened
    opened.close()


def test_a_backup_taken_while_another_process_writes_has_every_committed_row(
    store: SqliteStore, tmp_path: Path
) -> None:
    """Copying state.db while the daemon runs loses what is in the WAL; the backup does not."""
    for i in range(200):
        put(store, record(i))
    writer = SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")  # "the daemon"
    stop = threading.Event()

    def keep_writing() -> None:
        i = 200
        while not stop.is_set():
            put(writer, record(i))
            i += 1

    thread = threading.Thread(target=keep_writing)
    thread.start()
    try:
        count = backup(store, tmp_path / "backup.db")
    finally:
        stop.set()
        thread.join()
    assert count >= 200
    assert (tmp_path / "backup.db").stat().st_mode & 0o777 == 0o600
    copy = SqliteStore.open(tmp_path / "backup.db", tmp_path / "state.key")
    assert len(copy.list()) == count
    assert copy.get("entry-0007") == store.get("entry-0007")  # the secret opens: same key
    writer.close()


def test_restore_into_an_empty_store_then_keep_or_replace(
    store: SqliteStore, tmp_path: Path
) -> None:
    for i in range(10):
        put(store, record(i))
    backup(store, tmp_path / "backup.db")
    target = SqliteStore.open(tmp_path / "other.db", tmp_path / "state.key")
    put(target, record(3, State.GRACE))  # a user the target already has, differently
    done = restore(target, tmp_path / "backup.db", replace=False)
    assert (done.added, done.replaced, done.kept) == (9, 0, 1)
    kept = target.get("entry-0003")
    assert kept is not None
    assert kept.state is State.GRACE
    again = restore(target, tmp_path / "backup.db", replace=True)
    assert (again.added, again.replaced, again.kept) == (0, 10, 0)
    replaced = target.get("entry-0003")
    assert replaced is not None
    assert (replaced.state, replaced.secret) == (State.ACTIVE, bytes([3]) * 20)
    assert len(target.list()) == 10


def test_a_backup_never_overwrites_a_file(store: SqliteStore, tmp_path: Path) -> None:
    (tmp_path / "backup.db").write_text("precious")
    with pytest.raises(StoreError, match="already exists"):
        backup(store, tmp_path / "backup.db")
    assert (tmp_path / "backup.db").read_text() == "precious"


def test_a_backup_sealed_with_another_key_is_refused(store: SqliteStore, tmp_path: Path) -> None:
    put(store, record(1))
    backup(store, tmp_path / "backup.db")
    foreign = SqliteStore.open(tmp_path / "foreign.db", tmp_path / "foreign.key")
    with pytest.raises(StoreError, match="sealed with the key of fingerprint"):
        restore(foreign, tmp_path / "backup.db", replace=False)
    assert foreign.list() == []


def test_a_missing_or_damaged_backup_is_a_clear_error(store: SqliteStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such backup file"):
        restore(store, tmp_path / "nope.db", replace=False)
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="cannot"):
        restore(store, tmp_path / "junk.db", replace=False)


def test_the_backup_is_one_self_contained_file(store: SqliteStore, tmp_path: Path) -> None:
    put(store, record(1))
    backup(store, tmp_path / "backup.db")
    assert not (tmp_path / "backup.db-wal").exists()
    db = sqlite3.connect(tmp_path / "backup.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    db.close()
