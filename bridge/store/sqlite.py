"""The SQLite store: one row per user, secrets sealed, safe to share with the CLI.

WAL mode lets the admin CLI write while the daemon reads; every read-modify-write runs
inside `BEGIN IMMEDIATE`, so two processes (or a CLI and the daemon) never interleave a
login's decision with another change to the same user: the replay guard is a true
compare-and-set. `synchronous=NORMAL` in WAL mode survives a killed process (only a
power loss can take the last commits), at a fraction of the cost of FULL.
"""

from __future__ import annotations

import builtins
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from bridge.core.identity import merge, name_key
from bridge.core.policy import admin_lock
from bridge.core.totp import guard_tag
from bridge.core.types import Identity, LockReason, State, UserRecord
from bridge.store.sealing import KeyFileError, Sealer, load_or_create_key

T = TypeVar("T")

SCHEMA_VERSION = 3
_COLUMNS = (
    "entry_id, username, name_key, state, deadline, failures, last_step, step_key, secret,"
    " lock_reason, confirmed, created, updated, version"
)
_USERS = """
CREATE TABLE users (
    entry_id    TEXT PRIMARY KEY,  -- directory.id_attribute of the entry: one record a person
    username    TEXT NOT NULL,     -- directory.name_attribute when last seen
    name_key    TEXT NOT NULL,     -- username folded: the admin's lookup by stored name
    state       TEXT NOT NULL CHECK (state IN ('grace', 'pending', 'active', 'locked')),
    deadline    INTEGER,
    failures    INTEGER NOT NULL DEFAULT 0,
    last_step   INTEGER,
    step_key    BLOB,              -- which key last_step was used with (a hash, not the key)
    secret      BLOB,
    lock_reason TEXT,
    confirmed   INTEGER NOT NULL DEFAULT 0,
    created     INTEGER NOT NULL,
    updated     INTEGER NOT NULL,
    version     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX users_by_name ON users (name_key);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""
# Binds the LDAP proxy may accept again (SPEC 6, apps that bind again): a keyed hash of
# entry, client address, key and password+code; never the password or the code.
_REBINDS = """
CREATE TABLE IF NOT EXISTS rebinds (
    mac      BLOB PRIMARY KEY,
    entry_id TEXT NOT NULL,
    expires  INTEGER NOT NULL
) WITHOUT ROWID;
DROP INDEX IF EXISTS rebinds_by_expiry;
DROP INDEX IF EXISTS rebinds_by_entry;
"""
# No index but the key: every accepted LDAP bind writes a row, and each index would cost
# that commit a page (13 against 34 us a row, measured); the purge (once a minute) and an
# admin's `forget_rebinds` scan the table instead, at most the binds of rebind_seconds.
# Records of schema 2 and before, keyed by the name typed: each waits here until the
# directory says which entry it belongs to (`attach`), then moves to `users`.
_LEGACY = """
CREATE TABLE legacy_users (
    username    TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    deadline    INTEGER,
    failures    INTEGER NOT NULL DEFAULT 0,
    last_step   INTEGER,
    secret      BLOB,
    lock_reason TEXT,
    confirmed   INTEGER NOT NULL DEFAULT 0,
    created     INTEGER NOT NULL,
    updated     INTEGER NOT NULL,
    version     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""
_MIGRATIONS = {  # from schema version N to N + 1
    1: "ALTER TABLE users ADD COLUMN version INTEGER NOT NULL DEFAULT 0;",
    2: "ALTER TABLE users RENAME TO legacy_users;" + _USERS,
}

# Only the constant column list is interpolated into these statements.
_SELECT_ONE = f"SELECT {_COLUMNS} FROM users WHERE entry_id = ?"  # noqa: S608
_SELECT_NAMED = f"SELECT {_COLUMNS} FROM users WHERE name_key = ? ORDER BY username"  # noqa: S608
_SELECT_ALL = f"SELECT {_COLUMNS} FROM users ORDER BY username, entry_id"  # noqa: S608
_UPSERT = f"INSERT OR REPLACE INTO users ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"  # noqa: S608
_INSERT = f"INSERT INTO users ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"  # noqa: S608
_UPDATE_SEEN = (
    "UPDATE users SET username = ?, name_key = ?, state = ?, deadline = ?, failures = ?,"
    " last_step = ?, step_key = ?, lock_reason = ?, confirmed = ?, updated = ?,"
    " version = version + 1 WHERE entry_id = ? AND version = ?"
)
_DELETE_SEEN = "DELETE FROM users WHERE entry_id = ? AND version = ?"
_LEGACY_COLUMNS = (
    "username, state, deadline, failures, last_step, secret, lock_reason, confirmed,"
    " created, updated"
)
_SELECT_LEGACY = f"SELECT {_LEGACY_COLUMNS} FROM legacy_users WHERE username = ?"  # noqa: S608

REBIND_PURGE_SECONDS = 60  # expired rebind rows are deleted at most this often


class RebindRow(NamedTuple):
    """An accepted bind an app may repeat (SPEC 6): its keyed hash, entry and expiry."""

    mac: bytes
    entry_id: str
    expires: int
    now: int


SeenChange = tuple[
    str, UserRecord | None, Callable[[UserRecord | None], tuple[UserRecord | None, T]]
]
Row = tuple[
    str,
    str,
    str,
    str,
    int | None,
    int,
    int | None,
    bytes | None,
    bytes | None,
    str | None,
    int,
    int,
    int,
    int,
]


@dataclass(frozen=True, slots=True)
class Attached:
    """Records from before SPEC section 8 that turned out to be one entry's, and the result."""

    record: UserRecord  # what the entry's record is now
    merged: tuple[UserRecord, ...]  # every record that went into it (old ones included)

    def summary(self) -> str:
        """One line for the log: which records met, and which one was kept."""
        met = ", ".join(f"{r.username!r} ({r.state.value})" for r in self.merged)
        kept = self.record
        return (
            f"records {met} belong to one directory entry ({kept.username}, id"
            f" {kept.entry_id}): kept {kept.state.value}, the strictest"
        )


def _sealed_with(path: Path) -> str | None:
    """The fingerprint of the key an existing store's secrets need; None if it holds none.

    Read without the key ("unknown" for a store from before fingerprints were kept).
    """
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return _fingerprint_needed(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read the store: {exc}") from exc


def _fingerprint_needed(db: sqlite3.Connection) -> str | None:
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    sealed = any(
        db.execute(
            f"SELECT 1 FROM {table} WHERE secret IS NOT NULL LIMIT 1"  # noqa: S608 - fixed names
        ).fetchone()
        for table in ("users", "legacy_users")
        if table in tables
    )
    if not sealed:
        return None
    row = None
    if "meta" in tables:
        row = db.execute("SELECT value FROM meta WHERE key = 'key_fingerprint'").fetchone()
    return str(row[0]) if row is not None else "unknown"


def _first_version() -> int:
    """A new row's version: random, so a row deleted and made again never repeats the
    version a compare-and-set read from the old one (it would write over the new row)."""
    return secrets.randbelow(1 << 31) + 1


class StoreError(Exception):
    """The store cannot be opened or used; the message says what to fix."""


class SqliteStore:
    """Users' MFA records in one SQLite file, one row per directory entry."""

    def __init__(
        self,
        path: Path,
        sealer: Sealer,
        *,
        id_attribute: str = "entryUUID",
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self._sealer = sealer
        self._rebinds_purged_at = 0  # when expired rebind rows were last deleted
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Created 0600 whatever the umask (SQLite gives its -wal and -shm files the same
            # mode): the rows name users and hold their sealed secrets.
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            self._script(_REBINDS)
            self._check_key()
            self._check_id_attribute(id_attribute)
            self._legacy = self._legacy_index()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{path}: cannot open the store: {exc}") from exc

    @classmethod
    def open(cls, path: Path, key_file: Path, id_attribute: str = "entryUUID") -> SqliteStore:
        """Open (or create) the database and its key file.

        A key file is created only for a store that has never sealed anything with one:
        a new key beside sealed secrets would open none of them.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"store.path: cannot make the directory {path.parent}: {exc.strerror}"
            ) from exc
        try:
            if not key_file.exists() and (fingerprint := _sealed_with(path)) is not None:
                raise StoreError(
                    f"{key_file}: the key file is missing, and {path} holds secrets sealed"
                    f" with a key (fingerprint {fingerprint}): restore that key file from a"
                    " backup (a new key would open none of them)"
                )
            sealer = Sealer(load_or_create_key(key_file))
        except (KeyFileError, OSError) as exc:
            raise StoreError(str(exc)) from exc
        return cls(path, sealer, id_attribute=id_attribute)

    def _check_key(self) -> None:
        """Refuse a key file other than the one this store's secrets were sealed with."""
        needed = _fingerprint_needed(self._db)
        mine = self._sealer.fingerprint
        if needed == "unknown" and not self._opens_a_secret():
            raise StoreError(
                f"{self.path}: the key file given does not open its secrets: use the key"
                " file that belongs to this store"
            )
        if needed not in (None, "unknown", mine):
            raise StoreError(
                f"{self.path}: its secrets were sealed with the key of fingerprint {needed},"
                f" the key file given has {mine}: use the key file that belongs to this store"
            )
        if needed != mine:
            with self._transaction():
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('key_fingerprint', ?)",
                    (mine,),
                )

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
                # Read again under the write lock: another process may have just upgraded.
                (version,) = self._db.execute("PRAGMA user_version").fetchone()
                if version == 0:
                    self._script(_USERS + _LEGACY)
                else:
                    for step in range(version, SCHEMA_VERSION):
                        self._script(_MIGRATIONS[step])
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _script(self, sql: str) -> None:
        """Several statements, inside the caller's transaction (executescript commits)."""
        for statement in sql.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def _check_id_attribute(self, attribute: str) -> None:
        """Refuse a store whose records are keyed by another id attribute than configured.

        Changing `directory.id_attribute` would give every user a record that no login
        finds again: a fresh enrollment period for everyone, that is MFA switched off.
        """
        row = self._db.execute("SELECT value FROM meta WHERE key = 'id_attribute'").fetchone()
        if row is None:
            with self._transaction():
                self._db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('id_attribute', ?)",
                    (attribute,),
                )
            row = self._db.execute("SELECT value FROM meta WHERE key = 'id_attribute'").fetchone()
        stored = str(row[0])
        if stored.lower() == attribute.lower():
            return
        (count,) = self._db.execute("SELECT count(*) FROM users").fetchone()
        if count == 0:
            with self._transaction():
                self._db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'id_attribute'", (attribute,)
                )
            return
        raise StoreError(
            f"{self.path}: its {count} records are keyed by directory.id_attribute {stored!r},"
            f" the config says {attribute!r}; set it back to {stored!r} (changing it would"
            " give every user a new enrollment period)"
        )

    def _opens_a_secret(self) -> bool:
        """Whether the key opens a secret of a store kept before fingerprints were."""
        for table, name in (("users", "entry_id"), ("legacy_users", "username")):
            row = self._db.execute(
                f"SELECT {name}, secret FROM {table} WHERE secret IS NOT NULL LIMIT 1"  # noqa: S608
            ).fetchone()
            if row is not None:
                try:
                    self._sealer.open(row[0], row[1])
                except KeyFileError:
                    return False
                return True
        return True

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get(self, entry_id: str) -> UserRecord | None:
        """The entry's record, or None when the bridge has never seen it."""
        row = self._db.execute(_SELECT_ONE, (entry_id,)).fetchone()
        return self._record(row) if row else None

    def named(self, name: str) -> builtins.list[UserRecord]:
        """Records whose stored name is `name` (as the directory compares names).

        For the admin while the directory cannot be asked; logins never use this.
        """
        key = name_key(name)
        if key is None:
            return []
        return [self._record(row) for row in self._db.execute(_SELECT_NAMED, (key,))]

    def query(self, sql: str, params: tuple[object, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        """Rows of a read-only statement (counts for the metrics)."""
        return self._db.execute(sql, params).fetchall()

    def list(self) -> builtins.list[UserRecord]:
        """Every record, by user name."""
        rows = self._db.execute(_SELECT_ALL).fetchall()
        return [self._record(row) for row in rows]

    def update(
        self, entry_id: str, change: Callable[[UserRecord | None], tuple[UserRecord | None, T]]
    ) -> T:
        """Read, decide and write one entry's record atomically; returns change's result.

        `change` gets the current record and returns the new one (None removes it) and a
        result; nothing is written when the record is unchanged.
        """
        with self._transaction():
            return self._read_modify_write(entry_id, change)

    def update_many(
        self,
        changes: Sequence[tuple[str, Callable[[UserRecord | None], tuple[UserRecord | None, T]]]],
    ) -> builtins.list[T]:
        """Several `update` in one transaction: all of them or, if one raises, none."""
        with self._transaction():
            return [self._read_modify_write(entry_id, change) for entry_id, change in changes]

    def _read_modify_write(
        self, entry_id: str, change: Callable[[UserRecord | None], tuple[UserRecord | None, T]]
    ) -> T:
        """`change` on the current record, written if it changed (inside a transaction)."""
        before = self.get(entry_id)
        after, result = change(before)
        if after != before:
            self._write(entry_id, after, before)
        return result

    def update_seen(
        self,
        entry_id: str,
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
        if after == seen or self._set_seen(entry_id, seen, after):
            return result
        return self.update(entry_id, change)

    def update_seen_many(
        self, changes: Sequence[SeenChange[T]], rebinds: Sequence[RebindRow] = ()
    ) -> builtins.list[T | Exception]:
        """Several `update_seen` in one transaction: one commit for a burst of logins.

        Each change is a compare-and-set as in `update_seen`; one that lost the race runs
        again on the current record, inside the same transaction. A change that raises
        gets its exception in the result list and writes nothing; the others still commit.
        `rebinds` (accepted binds to remember, see `remember_rebind`) commit with them.
        """
        results: builtins.list[T | Exception] = []
        with self._transaction():
            for entry_id, seen, change in changes:
                try:
                    after, result = change(seen)
                    if after != seen and not self._set_seen(entry_id, seen, after):
                        result = self._read_modify_write(entry_id, change)
                except sqlite3.Error:
                    raise  # the store itself failed: nothing of the batch is committed
                except Exception as exc:  # a bug in one decision must not lose the others
                    results.append(exc)
                    continue
                results.append(result)
            self._insert_rebinds(rebinds)
        return results

    def _set_seen(self, entry_id: str, seen: UserRecord | None, after: UserRecord | None) -> bool:
        """Write `after` over `seen` if the row is still at `seen`'s version."""
        try:
            if seen is None:
                assert after is not None
                self._db.execute(_INSERT, self._row(after, _first_version()))
                return True
            if after is None:
                written = self._db.execute(_DELETE_SEEN, (entry_id, seen.version)).rowcount
            elif after.secret == seen.secret and after.created == seen.created:
                written = self._db.execute(_UPDATE_SEEN, self._changes(after, seen)).rowcount
            else:
                written = 0  # a new secret: take the full path
        except sqlite3.IntegrityError:  # inserted meanwhile
            written = 0
        return bool(written == 1)

    def _write(self, entry_id: str, record: UserRecord | None, before: UserRecord | None) -> None:
        if record is None:
            self._db.execute("DELETE FROM users WHERE entry_id = ?", (entry_id,))
            return
        if record.entry_id != entry_id:
            raise ValueError("a record is written under its own entry only")
        version = before.version + 1 if before else _first_version()
        self._db.execute(_UPSERT, self._row(record, version))

    # Binds an app may repeat (SPEC 6): remembered as keyed hashes, for a while.

    def mac(self, *parts: bytes) -> bytes:
        """A keyed hash of `parts` (joined unambiguously) under a key derived from the
        store's: the same on every instance that shares the store and its key file."""
        return self._sealer.mac(b"\x00".join(len(p).to_bytes(4, "big") + p for p in parts))

    def remember_rebind(self, mac: bytes, entry_id: str, expires: int, now: int) -> None:
        """Remember an accepted bind until `expires` (and forget those that have expired)."""
        with self._transaction():
            self._insert_rebinds([RebindRow(mac, entry_id, expires, now)])

    def _insert_rebinds(self, rows: Sequence[RebindRow]) -> None:
        """Write `rows` (inside a transaction); expired rows go, at most once a minute."""
        if not rows:
            return
        now = max(row.now for row in rows)
        if now >= self._rebinds_purged_at + REBIND_PURGE_SECONDS:
            self._db.execute("DELETE FROM rebinds WHERE expires <= ?", (now,))
            self._rebinds_purged_at = now
        self._db.executemany(
            "INSERT OR REPLACE INTO rebinds (mac, entry_id, expires) VALUES (?, ?, ?)",
            [(row.mac, row.entry_id, row.expires) for row in rows],
        )

    def forget_rebinds(self, entry_id: str) -> None:
        """Forget every bind remembered for the entry (an admin changed its state or key)."""
        self._db.execute("DELETE FROM rebinds WHERE entry_id = ?", (entry_id,))

    def knows_rebind(self, mac: bytes, entry_id: str, now: int) -> bool:
        """Whether this entry's bind `mac` was accepted and has not expired."""
        row = self._db.execute(
            "SELECT 1 FROM rebinds WHERE mac = ? AND entry_id = ? AND expires > ?",
            (mac, entry_id, now),
        ).fetchone()
        return row is not None

    # Records from before SPEC section 8 (schema 2), keyed by the name typed.

    @property
    def has_legacy(self) -> bool:
        """Whether records keyed by typed names may still wait to be attached."""
        return bool(self._legacy)

    def legacy_names(self) -> builtins.list[str]:
        """The names of the records still waiting for their directory entry."""
        self._legacy = self._legacy_index()
        return sorted(name for names in self._legacy.values() for name in names)

    def _legacy_index(self) -> dict[str, builtins.list[str]]:
        """Old records' names by `name_key`, so any spelling of a name finds them."""
        index: dict[str, builtins.list[str]] = {}
        for (name,) in self._db.execute("SELECT username FROM legacy_users"):
            index.setdefault(name_key(name) or name, []).append(name)
        return index

    def attach(self, owner: Identity, names: Iterable[str], now: int) -> Attached | None:
        """Move old records under any of `names` to `owner`'s record, merging them.

        `names` are what resolved to the entry (the name typed, the entry's name). When
        several records meet, the strictest wins (`merge`); the caller logs the result.
        None when there was nothing to attach.
        """
        keys = {key for key in map(name_key, names) if key}
        candidates = [name for key in keys for name in self._legacy.get(key, ())]
        if not candidates:
            return None
        with self._transaction():
            old = []
            for name in candidates:
                row = self._db.execute(_SELECT_LEGACY, (name,)).fetchone()
                if row is not None:
                    old.append(self._legacy_record(row, owner.entry_id))
            current = self.get(owner.entry_id)
            for record in old:
                self._db.execute("DELETE FROM legacy_users WHERE username = ?", (record.username,))
            pool = [*old, *([current] if current is not None else [])]
            if old:
                self._write(owner.entry_id, merge(pool, owner, now), current)
            merged = self.get(owner.entry_id)
        for key in keys:  # only once committed: a failed attach is tried again
            self._legacy.pop(key, None)
        if not old or merged is None:
            return None
        return Attached(merged, tuple(pool))

    def lock_legacy(self, name: str, now: int) -> builtins.list[UserRecord]:
        """Lock old records still waiting for their entry, found by name (any spelling).

        For the admin's `lock` while the directory cannot say whose the records are: the
        lock travels with each record when it is attached (the strictest wins).
        """
        locked = []
        with self._transaction():
            for old in self._legacy_index().get(name_key(name) or name, []):
                row = self._db.execute(_SELECT_LEGACY, (old,)).fetchone()
                if row is None:
                    continue
                after = admin_lock(self._legacy_record(row, ""), now)
                self._db.execute(
                    "UPDATE legacy_users SET state = ?, lock_reason = ?, updated = ?"
                    " WHERE username = ?",
                    (after.state.value, LockReason.ADMIN.value, now, old),
                )
                locked.append(after)
        return locked

    def _legacy_record(self, row: tuple[Any, ...], entry_id: str) -> UserRecord:
        name, state, deadline, failures, last_step, sealed, lock, confirmed, created, updated = row
        secret = self._unseal(name, sealed, name)
        return UserRecord(
            username=name,
            state=State(state),
            deadline=deadline,
            failures=failures,
            last_step=last_step,
            step_key=guard_tag(secret) if secret is not None and last_step is not None else None,
            secret=secret,
            lock_reason=LockReason(lock) if lock else None,
            confirmed=bool(confirmed),
            created=created,
            updated=updated,
            entry_id=entry_id,
        )

    # Rows.

    @staticmethod
    def _changes(after: UserRecord, seen: UserRecord) -> tuple[object, ...]:
        return (
            after.username,
            name_key(after.username) or after.username,
            after.state.value,
            after.deadline,
            after.failures,
            after.last_step,
            after.step_key,
            after.lock_reason.value if after.lock_reason else None,
            int(after.confirmed),
            after.updated,
            seen.entry_id,
            seen.version,
        )

    def _row(self, record: UserRecord, version: int = 1) -> Row:
        if record.state is State.EXEMPT:
            raise ValueError("exempt is derived from the config, never stored")
        if not record.entry_id:
            raise ValueError("a record belongs to a directory entry")
        sealed = (
            self._sealer.seal(record.entry_id, record.secret) if record.secret is not None else None
        )
        return (
            record.entry_id,
            record.username,
            name_key(record.username) or record.username,
            record.state.value,
            record.deadline,
            record.failures,
            record.last_step,
            record.step_key,
            sealed,
            record.lock_reason.value if record.lock_reason else None,
            int(record.confirmed),
            record.created,
            record.updated,
            version,
        )

    def _unseal(self, bound_to: str, sealed: bytes | None, username: str) -> bytes | None:
        """A row's secret, opened with what it was sealed to; StoreError naming the user."""
        if sealed is None:
            return None
        try:
            return self._sealer.open(bound_to, sealed)
        except KeyFileError as exc:
            raise StoreError(f"{self.path}: user {username!r}: {exc}") from exc

    def _record(self, row: Row) -> UserRecord:
        (
            entry_id,
            username,
            _name_key,
            state,
            deadline,
            failures,
            last_step,
            step_key,
            sealed,
            lock,
            confirmed,
            created,
            updated,
            version,
        ) = row
        secret = self._unseal(entry_id, sealed, username)
        return UserRecord(
            username=username,
            state=State(state),
            deadline=deadline,
            failures=failures,
            last_step=last_step,
            step_key=step_key,
            secret=secret,
            lock_reason=LockReason(lock) if lock else None,
            confirmed=bool(confirmed),
            created=created,
            updated=updated,
            version=version,
            entry_id=entry_id,
        )
