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
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from bridge.core.identity import merge, name_key
from bridge.core.policy import admin_lock
from bridge.core.totp import guard_tag
from bridge.core.types import Identity, LockReason, State, UserRecord
from bridge.store.records import (
    Attached,
    RebindRow,
    RecordStore,
    SeenChange,
    StoreError,
)
from bridge.store.sealing import KeyFileError, Sealer, load_or_create_key

log = Logger(namespace="bridge.store")

__all__ = ["Attached", "RebindRow", "SeenChange", "SqliteStore", "StoreError"]

SCHEMA_VERSION = 3
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
# RADIUS challenges issued (SPEC 9), and binds the LDAP proxy may accept again (SPEC 6,
# apps that bind again): for the latter a keyed hash of
# entry, client address, key and password+code; never the password or the code.
_SHORT_LIVED = """
CREATE TABLE IF NOT EXISTS rebinds (
    mac      BLOB PRIMARY KEY,
    entry_id TEXT NOT NULL,
    expires  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS challenges (
    state    BLOB PRIMARY KEY,
    username TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    name     TEXT NOT NULL,
    dn       TEXT NOT NULL,
    client   TEXT NOT NULL,
    expires  REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS portal_sessions (
    key        BLOB PRIMARY KEY,  -- SHA-256 of the session id: the cookie is never stored
    csrf       TEXT NOT NULL,
    entry_id   TEXT NOT NULL,
    name       TEXT NOT NULL,
    dn         TEXT NOT NULL,
    started    REAL NOT NULL,
    seen       REAL NOT NULL,
    new_secret BLOB,              -- a set-up's secret until confirmed, sealed
    proven_for BLOB,
    proven_at  REAL NOT NULL,
    exempt     INTEGER NOT NULL
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

_LEGACY_COLUMNS = (
    "username, state, deadline, failures, last_step, secret, lock_reason, confirmed,"
    " created, updated"
)
_SELECT_LEGACY = f"SELECT {_LEGACY_COLUMNS} FROM legacy_users WHERE username = ?"  # noqa: S608


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


class SqliteStore(RecordStore):
    """Users' MFA records in one SQLite file, one row per directory entry."""

    _begin = "BEGIN IMMEDIATE"
    _driver_error = sqlite3.Error

    def __init__(
        self,
        path: Path,
        sealer: Sealer,
        *,
        id_attribute: str = "entryUUID",
        busy_timeout: float = 5.0,
    ) -> None:
        super().__init__(sealer, str(path))
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Created 0600 whatever the umask (SQLite gives its -wal and -shm files the same
            # mode): the rows name users and hold their sealed secrets.
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{path}: cannot open the store: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            self._script(_SHORT_LIVED)
            self._check_key()
            self._check_id_attribute(id_attribute)
            self._legacy = self._legacy_index()
        except (sqlite3.Error, OSError) as exc:
            self._db.close()
            raise StoreError(f"{path}: cannot open the store: {exc}") from exc
        except BaseException:
            self._db.close()  # a store refused (wrong key, other id_attribute): not left open
            raise

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
        if needed == "unknown" and not self._opens_a_secret():
            raise StoreError(
                f"{self.path}: the key file given does not open its secrets: use the key"
                " file that belongs to this store"
            )
        self._check_fingerprint(needed)

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
        if 0 < version < SCHEMA_VERSION:
            self._keep_copy(version)
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

    def _keep_copy(self, version: int) -> None:
        """Before an upgrade, a copy of the store as it was (an online backup beside it,
        `state.db.schema2.bak`): a release rolled back can open it again."""
        copy = self.path.with_name(f"{self.path.name}.schema{version}.bak")
        if copy.exists():
            return  # an upgrade that did not finish made it already
        partial = copy.with_name(copy.name + ".partial")
        try:
            target = sqlite3.connect(partial)
            try:
                self._db.backup(target)
            finally:
                target.close()
            os.chmod(partial, 0o600)
            partial.replace(copy)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"{self.path}: cannot keep a copy before upgrading the schema ({exc});"
                " nothing was changed"
            ) from exc
        log.info("store.upgrade-copy {copy}: the store as it was before this upgrade", copy=copy)

    def _script(self, sql: str) -> None:
        """Several statements, inside the caller's transaction (executescript commits)."""
        for statement in sql.split(";"):
            if statement.strip():
                self._db.execute(statement)

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

    def copy_to(self, target: sqlite3.Connection) -> None:
        """SQLite's online backup into `target`: consistent while others write."""
        self._db.backup(target)

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
