"""`mfa-bridge store backup` and `store restore` (SPEC 9): one SQLite file, any backend.

A backup is an SQLite store: a config with `store.path: FILE` (and the same key file)
opens it as it is. From SQLite it is SQLite's own online backup, page by page, consistent
while the daemon writes (copying the file would miss what is still in the WAL); from
PostgreSQL it is the users' rows as one snapshot, written into a new SQLite store. Rows
are copied sealed: the secrets never leave their envelope, and the copy needs the same
key file. A restore loads such a file into the configured store, which is also how an
SQLite store moves to PostgreSQL. Short-lived rows (challenges, remembered binds) are not
part of either.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from bridge.store.records import RecordStore, StoreError
from bridge.store.sqlite import SqliteStore


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore did, user by user."""

    added: int
    replaced: int
    kept: int  # already in the store, left as they were (no --replace)


def backup(store: RecordStore, target: Path) -> int:
    """Write a consistent copy of `store` to the new SQLite file `target`; returns the
    number of users in it. Refuses to overwrite a file."""
    if target.exists():
        raise StoreError(f"{target}: already exists; give a new file name for the backup")
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        if isinstance(store, SqliteStore):
            _page_copy(store, partial)
        else:
            _row_copy(store, partial)
        count = _count(partial)
        os.replace(partial, target)
    except (OSError, sqlite3.Error) as exc:
        partial.unlink(missing_ok=True)
        raise StoreError(f"{target}: cannot write the backup: {exc}") from exc
    finally:
        for suffix in ("-wal", "-shm"):
            Path(f"{partial}{suffix}").unlink(missing_ok=True)
    return count


def _page_copy(store: SqliteStore, partial: Path) -> None:
    os.close(os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
    copy = sqlite3.connect(partial)
    try:
        store.copy_to(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        copy.close()


def _row_copy(store: RecordStore, partial: Path) -> None:
    rows = store.raw_users()  # one statement: one snapshot
    copy = SqliteStore(partial, store.sealer, id_attribute=store.id_attribute)
    try:
        copy.put_raw(rows, replace=False)
    finally:
        copy.close()
    db = sqlite3.connect(partial)
    try:
        db.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        db.close()


def _count(path: Path) -> int:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        (count,) = db.execute("SELECT count(*) FROM users").fetchone()
    finally:
        db.close()
    return int(count)


def restore(store: RecordStore, source: Path, *, replace: bool) -> Restored:
    """Load the backup `source` into `store`: users not there are added, users there are
    kept (or, with `replace`, overwritten by the backup's row)."""
    if not source.is_file():
        raise StoreError(f"{source}: no such backup file")
    try:
        backup_store = SqliteStore(source, store.sealer, id_attribute=store.id_attribute)
    except StoreError as exc:
        raise StoreError(f"{source}: cannot be restored: {exc}") from exc
    try:
        if backup_store.has_legacy:
            raise StoreError(
                f"{source}: holds records of an earlier release not yet matched to directory"
                " entries; start the daemon on it once (store.path) to match them, then restore"
            )
        rows = backup_store.raw_users()
    finally:
        backup_store.close()
    added, replaced = store.put_raw(rows, replace=replace)
    return Restored(added, replaced, len(rows) - added - replaced)
