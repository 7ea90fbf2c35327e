"""The SQLite store: one row per user, secrets sealed, safe to share with the CLI.

WAL mode lets the admin CLI write while the daemon reads; every read-modify-write runs
inside `BEGIN IMMEDIATE`, so two processes (or a CLI and the daemon) never interleave a
login's decision with another change to the same user: the replay guard is a true
compare-and-set. `synchronous=NORMAL` in WAL mode survives a killed process (only a
power loss can take the last commits), at a fraction of the cost of FULL.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from bridge.core.types import LockReason, State, UserRecord
from bridge.store.sealing import KeyFileError, Sealer, load_or_create_key

T = TypeVar("T")

SCHEMA_VERSION = 2
_COLUMNS = (
    "username, state, deadline, failures, last_step, secret, lock_reason, confirmed,"
    " created, updated, version"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username    TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('grace', 'pending', 'active', 'locked')),
    deadline    INTEGER,
    failures    INTEGER NOT NULL DEFAULT 0,
    last_step   INTEGER,
    secret      BLOB,
    lock_reason TEXT,
    confirmed   INTEGER NOT NULL DEFAULT 0,
    created     INTEGER NOT NULL,
    updated     INTEGER NOT NULL,
    version     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
"""
_MIGRATIONS = {  # from schema version N to N + 1
    1: "ALTER TABLE users ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
}

# Only the constant column list is interpolated into these statements.
_SELECT_ONE = f"SELECT {_COLUMNS} FROM users WHERE username = ?"  # noqa: S608
_SELECT_ALL = f"SELECT {_COLUMNS} FROM users ORDER BY username"  # noqa: S608
_UPSERT = f"INSERT OR REPLACE INTO users ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"  # noqa: S608
_INSERT = f"INSERT INTO users ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"  # noqa: S608
_UPDATE_SEEN = (
    "UPDATE users SET state = ?, deadline = ?, failures = ?, last_step = ?, lock_reason = ?,"
    " confirmed = ?, updated = ?, version = version + 1 WHERE username = ? AND version = ?"
)
_DELETE_SEEN = "DELETE FROM users WHERE username = ? AND version = ?"
# Bulk import: a row that exists keeps its creation time and its replay guard.
_IMPORT = (
    f"INSERT INTO users ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"  # noqa: S608
    " ON CONFLICT (username) DO UPDATE SET state = excluded.state, version = users.version + 1,"
    " deadline = excluded.deadline, failures = excluded.failures, secret = excluded.secret,"
    " lock_reason = excluded.lock_reason, confirmed = excluded.confirmed,"
    " updated = excluded.updated,"
    " last_step = CASE WHEN excluded.last_step IS NULL THEN users.last_step"
    " WHEN users.last_step IS NULL THEN excluded.last_step"
    " ELSE max(users.last_step, excluded.last_step) END"
)

SeenChange = tuple[
    str, UserRecord | None, Callable[[UserRecord | None], tuple[UserRecord | None, T]]
]
Row = tuple[str, str, int | None, int, int | None, bytes | None, str | None, int, int, int, int]


class StoreError(Exception):
    """The store cannot be opened or used; the message says what to fix."""


class SqliteStore:
    """Users' MFA records in one SQLite file."""

    def __init__(self, path: Path, sealer: Sealer, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._sealer = sealer
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{path}: cannot open the store: {exc}") from exc

    @classmethod
    def open(cls, path: Path, key_file: Path) -> SqliteStore:
        """Open (or create) the database and its key file."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            sealer = Sealer(load_or_create_key(key_file))
        except (KeyFileError, OSError) as exc:
            raise StoreError(str(exc)) from exc
        return cls(path, sealer)

    def close(self) -> None:
        """Close the database (WAL is checkpointed by SQLite)."""
        self._db.close()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this release"
                f" understands ({SCHEMA_VERSION}); upgrade mfa-bridge"
            )
        if version < SCHEMA_VERSION:
            with self._transaction():
                if version == 0:
                    self._db.execute(_SCHEMA)
                else:
                    for step in range(version, SCHEMA_VERSION):
                        self._db.execute(_MIGRATIONS[step])
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get(self, username: str) -> UserRecord | None:
        """The user's record, or None when the bridge has never seen them."""
        row = self._db.execute(_SELECT_ONE, (username,)).fetchone()
        return self._record(row) if row else None

    def query(self, sql: str, params: tuple[object, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        """Rows of a read-only statement (counts for the metrics)."""
        return self._db.execute(sql, params).fetchall()

    def list(self) -> list[UserRecord]:
        """Every record, by user name."""
        rows = self._db.execute(_SELECT_ALL).fetchall()
        return [self._record(row) for row in rows]

    def update(
        self, username: str, change: Callable[[UserRecord | None], tuple[UserRecord | None, T]]
    ) -> T:
        """Read, decide and write one user's record atomically; returns change's result.

        `change` gets the current record and returns the new one (None removes it) and a
        result; nothing is written when the record is unchanged.
        """
        with self._transaction():
            return self._read_modify_write(username, change)

    def _read_modify_write(
        self, username: str, change: Callable[[UserRecord | None], tuple[UserRecord | None, T]]
    ) -> T:
        """`change` on the current record, written if it changed (inside a transaction)."""
        before = self.get(username)
        after, result = change(before)
        if after != before:
            self._write(username, after, before)
        return result

    def update_seen(
        self,
        username: str,
        seen: UserRecord | None,
        change: Callable[[UserRecord | None], tuple[UserRecord | None, T]],
    ) -> T:
        """`update` for a caller that has just read `seen`: one statement, no transaction.

        The write is a compare-and-set on the row version read with `seen`; when another
        writer (a login of the same user, the CLI) got there first, `change` is run again
        on the current record inside `update`. The hot path of a login: the record read
        before the bind is decided on after it, without reading it again.
        """
        after, result = change(seen)
        if after == seen or self._set_seen(username, seen, after):
            return result
        return self.update(username, change)

    def update_seen_many(self, changes: Sequence[SeenChange[T]]) -> builtins.list[T | Exception]:
        """Several `update_seen` in one transaction: one commit for a burst of logins.

        Each change is a compare-and-set as in `update_seen`; one that lost the race runs
        again on the current record, inside the same transaction. A change that raises
        gets its exception in the result list and writes nothing; the others still commit.
        """
        results: builtins.list[T | Exception] = []
        with self._transaction():
            for username, seen, change in changes:
                try:
                    after, result = change(seen)
                    if after != seen and not self._set_seen(username, seen, after):
                        result = self._read_modify_write(username, change)
                except sqlite3.Error:
                    raise  # the store itself failed: nothing of the batch is committed
                except Exception as exc:  # a bug in one decision must not lose the others
                    results.append(exc)
                    continue
                results.append(result)
        return results

    def _set_seen(self, username: str, seen: UserRecord | None, after: UserRecord | None) -> bool:
        """Write `after` over `seen` if the row is still at `seen`'s version."""
        try:
            if seen is None:
                assert after is not None
                self._db.execute(_INSERT, self._row(after, 1))
                return True
            if after is None:
                written = self._db.execute(_DELETE_SEEN, (username, seen.version)).rowcount
            elif after.secret == seen.secret and after.created == seen.created:
                written = self._db.execute(_UPDATE_SEEN, self._changes(after, seen)).rowcount
            else:
                written = 0  # a new secret: take the full path
        except sqlite3.IntegrityError:  # inserted meanwhile
            written = 0
        return bool(written == 1)

    def put_many(self, records: Iterable[UserRecord]) -> int:
        """Insert or update many records in one transaction (bulk import)."""
        rows = [self._row(record) for record in records]
        with self._transaction():
            self._db.executemany(_IMPORT, rows)
        return len(rows)

    def _write(self, username: str, record: UserRecord | None, before: UserRecord | None) -> None:
        if record is None:
            self._db.execute("DELETE FROM users WHERE username = ?", (username,))
            return
        self._db.execute(_UPSERT, self._row(record, before.version + 1 if before else 1))

    @staticmethod
    def _changes(after: UserRecord, seen: UserRecord) -> tuple[object, ...]:
        return (
            after.state.value,
            after.deadline,
            after.failures,
            after.last_step,
            after.lock_reason.value if after.lock_reason else None,
            int(after.confirmed),
            after.updated,
            seen.username,
            seen.version,
        )

    def _row(self, record: UserRecord, version: int = 1) -> Row:
        if record.state is State.EXEMPT:
            raise ValueError("exempt is derived from the config, never stored")
        sealed = (
            self._sealer.seal(record.username, record.secret) if record.secret is not None else None
        )
        return (
            record.username,
            record.state.value,
            record.deadline,
            record.failures,
            record.last_step,
            sealed,
            record.lock_reason.value if record.lock_reason else None,
            int(record.confirmed),
            record.created,
            record.updated,
            version,
        )

    def _record(self, row: Row) -> UserRecord:
        (
            username,
            state,
            deadline,
            failures,
            last_step,
            sealed,
            lock,
            confirmed,
            created,
            updated,
            version,
        ) = row
        try:
            secret = self._sealer.open(username, sealed) if sealed is not None else None
        except KeyFileError as exc:
            raise StoreError(f"{self.path}: user {username!r}: {exc}") from exc
        return UserRecord(
            username=username,
            state=State(state),
            deadline=deadline,
            failures=failures,
            last_step=last_step,
            secret=secret,
            lock_reason=LockReason(lock) if lock else None,
            confirmed=bool(confirmed),
            created=created,
            updated=updated,
            version=version,
        )
