"""The PostgreSQL store: one database shared by any number of bridge instances (SPEC 9).

The rows and every write are the ones of `records.RecordStore`; what is PostgreSQL's own
is here. Each write is a compare-and-set on the row's version, so instances need no lock
between them: a login that lost the race decides again on what the other wrote (a code
accepted by one instance is a replay on all). The schema is created and upgraded by the
first instance to start, under an advisory lock, so instances starting together wait
for each other instead of racing. A lost connection fails the statement (the login is
rejected, never accepted without its state) and is made again on the next use; libpq's
multi-host URLs (`postgresql://h1,h2/db?target_session_attrs=read-write`) give failover.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from twisted.logger import Logger

from bridge.core.types import UserRecord
from bridge.store.recent import RecentRecords
from bridge.store.records import (
    COLUMNS,
    Lost,
    RecordStore,
    SeenChange,
    StoreError,
    StoreUnavailableError,
    unchanged,
    writes_of,
)
from bridge.store.sealing import KeyFileError, Sealer, load_or_create_key

log = Logger(namespace="bridge.store")

SCHEMA_VERSION = 1
_SCHEMA_LOCK = 0x6D66_6162_7269_6467  # advisory lock id: "mfabridg"
CONNECT_TIMEOUT = 3  # seconds; libpq tries the next host of a multi-host URL after it
STATEMENT_TIMEOUT_MS = 5000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    entry_id    TEXT PRIMARY KEY,  -- directory.id_attribute of the entry: one record a person
    username    TEXT NOT NULL,     -- directory.name_attribute when last seen
    name_key    TEXT NOT NULL,     -- username folded: the admin's lookup by stored name
    state       TEXT NOT NULL CHECK (state IN ('grace', 'pending', 'active', 'locked')),
    deadline    BIGINT,
    failures    INTEGER NOT NULL DEFAULT 0,
    last_step   BIGINT,
    step_key    BYTEA,             -- which key last_step was used with (a hash, not the key)
    secret      BYTEA,
    lock_reason TEXT,
    confirmed   INTEGER NOT NULL DEFAULT 0,
    created     BIGINT NOT NULL,
    updated     BIGINT NOT NULL,
    version     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS users_by_name ON users (name_key);
CREATE TABLE IF NOT EXISTS rebinds (
    mac      BYTEA PRIMARY KEY,
    entry_id TEXT NOT NULL,
    expires  BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS portal_sessions (
    key        BYTEA PRIMARY KEY,  -- SHA-256 of the session id: the cookie is never stored
    csrf       TEXT NOT NULL,
    entry_id   TEXT NOT NULL,
    name       TEXT NOT NULL,
    dn         TEXT NOT NULL,
    started    DOUBLE PRECISION NOT NULL,
    seen       DOUBLE PRECISION NOT NULL,
    new_secret BYTEA,              -- a set-up's secret until confirmed, sealed
    proven_for BYTEA,
    proven_at  DOUBLE PRECISION NOT NULL,
    exempt     BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS challenges (
    state    BYTEA PRIMARY KEY,
    username TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    name     TEXT NOT NULL,
    dn       TEXT NOT NULL,
    client   TEXT NOT NULL,
    expires  DOUBLE PRECISION NOT NULL
);
"""


# The common login write of a whole batch in one statement: each row a compare-and-set
# on its version (the columns as in records._UPDATE_SEEN). The rows travel as one JSON
# text, so the statement's text is the same whatever the batch's size (psycopg then
# parses and prepares it once), and the driver adapts one value, not one per cell.
_BATCH_FIELDS = (
    "username",
    "name_key",
    "state",
    "deadline",
    "failures",
    "last_step",
    "step_key",
    "lock_reason",
    "confirmed",
    "updated",
    "entry_id",
    "version",
)
# The columns of the rows in the JSON text, and what each sets (one version on).
_ROW_COLUMNS = (
    "username text, name_key text, state text, deadline bigint, failures int,"
    " last_step bigint, step_key text, lock_reason text, confirmed int, updated bigint,"
    " entry_id text, version bigint"
)
_SET_FROM_ROW = (
    "username = v.username, name_key = v.name_key, state = v.state,"
    " deadline = v.deadline, failures = v.failures, last_step = v.last_step,"
    " step_key = decode(v.step_key, 'hex'), lock_reason = v.lock_reason,"
    " confirmed = v.confirmed, updated = v.updated, version = u.version + 1"
)
_BULK_UPDATE = (
    f"UPDATE users AS u SET {_SET_FROM_ROW}"  # noqa: S608 - constant text
    f" FROM json_to_recordset(?::json) AS v({_ROW_COLUMNS})"
    " WHERE u.entry_id = ANY(?::text[]) AND u.entry_id = v.entry_id"
    " AND u.version = v.version RETURNING u.entry_id"
)  # the ANY: rows found by the key's index (the planner cannot count the JSON's rows)
_SELECT_ANY = f"SELECT {COLUMNS} FROM users WHERE entry_id = ANY(?::text[])"  # noqa: S608
# A store turn's writes and reads in one round trip: the rows the UPDATE wrote as one
# array, beside the records read (one row with NULLs when none is found). Every part of
# the statement sees the same snapshot: a record written in the turn reads as before it.
_BULK_UPDATE_AND_READ = (
    f"WITH w AS ({_BULK_UPDATE}) SELECT (SELECT array_agg(entry_id) FROM w), r.*"  # noqa: S608
    f" FROM (SELECT 1) AS one LEFT JOIN ({_SELECT_ANY}) AS r ON true"
)

# The same turn as one prepared statement the reactor sends itself (`link.py`): its
# parameters and its answer are each one JSON text ($1 the rows to write, $2 the entries
# read), so nothing needs a driver's adaptation on the reactor. Its answer is
# [the entries written, the records read], bytea columns as "\\x..." hex.
LINK_STATEMENT = b"mfa_bridge_turn"
_LINK_READ = f"SELECT {COLUMNS} FROM users WHERE entry_id = ANY(ARRAY("  # noqa: S608
_LINK_READ += "SELECT json_array_elements_text($2::json)))"
_LINK_TURN = (
    f"WITH v AS (SELECT * FROM json_to_recordset($1::json) AS v({_ROW_COLUMNS})),"  # noqa: S608
    f" w AS (UPDATE users AS u SET {_SET_FROM_ROW} FROM v"
    " WHERE u.entry_id = ANY(ARRAY(SELECT entry_id FROM v)) AND u.entry_id = v.entry_id"
    " AND u.version = v.version RETURNING u.entry_id)"
    " SELECT json_build_array((SELECT json_agg(entry_id) FROM w),"
    f" (SELECT json_agg(r) FROM ({_LINK_READ}) AS r))"
)
_COLUMN_NAMES = tuple(column.strip() for column in COLUMNS.split(","))
_HEX_COLUMNS = frozenset({"step_key", "secret"})


@dataclass(frozen=True)
class LinkTurn:
    """A store turn made of one statement (`PostgresStore.link_turn`): its parameters,
    and what its answer is settled against."""

    params: tuple[bytes, bytes]
    changes: Sequence[SeenChange[Any]]
    decided: list[tuple[UserRecord | None, Any] | Exception]
    written: list[str]  # the entries of the writes, in the order of `decided`


class PostgresStore(RecordStore):
    """Users' MFA records in a PostgreSQL database, shared by the instances that use it."""

    _begin = "BEGIN"
    _placeholder_style = "format"
    _driver_error = psycopg.Error
    remote = True
    _batch_in_transaction = False

    def __init__(
        self,
        url: str,
        sealer: Sealer,
        *,
        password: str | None = None,
        id_attribute: str = "entryUUID",
    ) -> None:
        super().__init__(sealer, _redacted(url))
        self._recent = RecentRecords(sealer)  # a login's read would cost a round trip
        self._url = url
        self._password = password
        self._lock = threading.Lock()
        self._local = threading.local()  # each thread its own connection (and transaction)
        self._connections: list[Any] = []
        try:
            self._connect()
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: cannot open the store: {error_reason(exc)}") from exc
        try:
            self._create_schema()
            self._check_fingerprint(_fingerprint_needed(self._db))
            self._check_id_attribute(id_attribute)
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"{self.where}: cannot open the store: {error_reason(exc)}") from exc
        except StoreError:
            self.close()
            raise

    @classmethod
    def open(
        cls,
        url: str,
        key_file: Path,
        *,
        password_file: Path | None = None,
        id_attribute: str = "entryUUID",
    ) -> PostgresStore:
        """Connect, create or upgrade the schema, and check the key file against it.

        The key file is never created beside a database that holds sealed secrets (a new
        key would open none of them): every instance must be given the same one.
        """
        try:
            password = password_file.read_text().strip() if password_file else None
        except OSError as exc:
            raise StoreError(f"store.password_file: cannot read {password_file}: {exc}") from exc
        try:
            key = load_or_create_key(key_file) if key_file.exists() else None
        except (KeyFileError, OSError) as exc:
            raise StoreError(str(exc)) from exc
        if key is None:
            probe = cls._probe(url, password)
            if probe is not None:
                raise StoreError(
                    f"{key_file}: the key file is missing, and {_redacted(url)} holds secrets"
                    f" sealed with a key (fingerprint {probe}): copy that key file here from"
                    " another instance or a backup (a new key would open none of them)"
                )
            try:
                key = load_or_create_key(key_file)
            except (KeyFileError, OSError) as exc:
                raise StoreError(str(exc)) from exc
        return cls(url, Sealer(key), password=password, id_attribute=id_attribute)

    @classmethod
    def _probe(cls, url: str, password: str | None) -> str | None:
        """The fingerprint the database's secrets need, read without a key; None if none."""
        try:
            with psycopg.connect(url, **_connect_options(password)) as db:
                return _fingerprint_needed(db)
        except psycopg.Error as exc:
            reason = error_reason(exc)
            raise StoreError(f"{_redacted(url)}: cannot open the store: {reason}") from exc

    @property
    def _db(self) -> Any:
        """This thread's connection: the reactor's, or the store worker's (`worker.py`)."""
        db = getattr(self._local, "db", None)
        return db if db is not None else self._connect()

    def _connect(self) -> Any:
        db = psycopg.connect(self._url, **_connect_options(self._password))
        self._local.db = db
        with self._lock:
            self._connections.append(db)
        return db

    def _execute(self, sql: str, params: Any = ()) -> Any:
        """A statement; a connection found broken is made again first (the database came
        back). A failure inside a transaction is not retried: the caller's login fails.

        Raises StoreUnavailableError while the database cannot be reached.
        """
        try:
            db = getattr(self._local, "db", None)
            if db is None or db.broken or db.closed:
                db = self._reconnect(db)
            return db.execute(self._sql(sql), params)
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(f"{self.where}: {error_reason(exc)}") from exc

    def _reconnect(self, old: Any) -> Any:
        self._local.db = None
        if old is not None:
            with contextlib.suppress(psycopg.Error):
                old.close()
            with self._lock:
                if old in self._connections:
                    self._connections.remove(old)
        db = self._connect()
        if old is not None:
            log.info("store.reconnected store={store}", store=self.where)
        return db

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            connections, self._connections = self._connections, []
        for db in connections:
            with contextlib.suppress(psycopg.Error):
                db.close()

    def _write_and_read(
        self,
        writes: Sequence[tuple[str, UserRecord | None, UserRecord | None]],
        reads: Sequence[str],
    ) -> tuple[dict[str, UserRecord], list[bool]]:
        """The turn's common writes (same key: guard, failures, state) as one UPDATE, with
        the turn's reads in the same statement; a record's version decides per row, as in
        `_set_seen`. The rest one by one."""
        bulk: dict[str, int] = {}  # entry -> position, each entry once
        for position, (entry_id, seen, after) in enumerate(writes):
            if self._same_key(seen, after) and entry_id not in bulk:
                bulk[entry_id] = position
        if not bulk or (len(bulk) < 2 and not reads):
            return super()._write_and_read(writes, reads)
        rows = self._rows([writes[position] for position in bulk.values()])
        batch = (json.dumps(rows), [row["entry_id"] for row in rows])
        found: dict[str, UserRecord] = {}
        if reads:
            answer = self._execute(_BULK_UPDATE_AND_READ, [*batch, list(reads)]).fetchall()
            done = set(answer[0][0] or ())
            for row in answer:
                if row[1] is not None:
                    record = self._record(row[1:])
                    found[record.entry_id] = record
        else:
            done = {row[0] for row in self._execute(_BULK_UPDATE, batch)}
        return found, [
            entry_id in done
            if bulk.get(entry_id) == position
            else self._set_seen(entry_id, seen, after)
            for position, (entry_id, seen, after) in enumerate(writes)
        ]

    def _rows(
        self, writes: Sequence[tuple[str, UserRecord | None, UserRecord | None]]
    ) -> list[dict[str, Any]]:
        """Same-key writes as the rows of the JSON text the bulk statements take."""
        rows = []
        for _entry_id, seen, after in writes:
            assert seen is not None  # _same_key
            assert after is not None
            row = dict(zip(_BATCH_FIELDS, self._changes(after, seen), strict=True))
            row["step_key"] = after.step_key.hex() if after.step_key is not None else None
            rows.append(row)
        return rows

    def link_turn(
        self, reads: Sequence[str], changes: Sequence[SeenChange[Any]]
    ) -> LinkTurn | None:
        """The turn as the one statement of `LINK_STATEMENT`, when it can be: every change
        decided already (`early`, nothing left to read), and every write the common one
        (same key) of a distinct entry. None: the turn goes to the store's thread."""
        if not all(getattr(change, "early", False) for _entry, _seen, change in changes):
            return None
        decided = self._decide(changes)
        writes = writes_of(changes, decided)
        if len({entry_id for entry_id, _s, _a in writes}) < len(writes) or not all(
            self._same_key(seen, after) for _entry, seen, after in writes
        ):
            return None
        rows = self._rows(writes)
        wanted = [*reads, *unchanged(changes, decided, reads)]
        params = (json.dumps(rows).encode(), json.dumps(wanted).encode())
        return LinkTurn(params, changes, decided, [entry_id for entry_id, _s, _a in writes])

    def settle_link_turn(
        self, turn: LinkTurn, answer: bytes
    ) -> tuple[dict[str, UserRecord], list[Any | Exception | Lost]]:
        """The records the statement read, and each change's result (LOST: decide again,
        with `decide_again` on the store's thread)."""
        written_ids, rows = json.loads(answer)
        found: dict[str, UserRecord] = {}
        for row in rows or ():
            record = self._record(
                tuple(
                    bytes.fromhex(row[name][2:])
                    if name in _HEX_COLUMNS and row[name] is not None
                    else row[name]
                    for name in _COLUMN_NAMES
                )
            )
            found[record.entry_id] = record
        done = set(written_ids or ())
        flags = [entry_id in done for entry_id in turn.written]
        return found, self._settle(turn.changes, turn.decided, found, flags)

    def open_link(self) -> Any:
        """A connection of its own for `link.py`, with the turn's statement prepared
        (blocking: called on the store's thread). Raises StoreUnavailableError."""
        try:
            db = psycopg.connect(self._url, **_connect_options(self._password))
            prepared = db.pgconn.prepare(LINK_STATEMENT, _LINK_TURN.encode())
            if prepared.status != psycopg.pq.ExecStatus.COMMAND_OK:
                db.close()
                message = prepared.error_message.decode(errors="replace")
                raise StoreError(f"{self.where}: cannot prepare the turn: {message}")
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"{self.where}: {error_reason(exc)}") from exc
        with self._lock:
            self._connections.append(db)
        return db

    def close_link(self, db: Any) -> None:
        """Close a connection `open_link` made (the link failed, or the daemon stops)."""
        with self._lock:
            if db in self._connections:
                self._connections.remove(db)
        with contextlib.suppress(psycopg.Error):
            db.close()

    def get_many(self, entry_ids: Sequence[str]) -> dict[str, UserRecord]:
        """The records of these entries that exist, by entry (one statement, one text)."""
        found: dict[str, UserRecord] = {}
        for row in self._execute(_SELECT_ANY, (list(entry_ids),)).fetchall():
            record = self._record(row)
            found[record.entry_id] = record
        return found

    def _create_schema(self) -> None:
        """Create or upgrade the schema; instances starting together take turns."""
        with self._transaction():
            self._execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._execute(statement)
            version = self._meta("schema_version")
            if version is not None and int(version) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.where}: schema version {version} is newer than this release"
                    f" understands ({SCHEMA_VERSION}); upgrade mfa-bridge"
                )
            self._set_meta("schema_version", str(SCHEMA_VERSION))


def _fingerprint_needed(db: Any) -> str | None:
    """The fingerprint of the key a database's sealed secrets need, read without the key;
    None when it holds none ("unknown" when it does not say)."""
    found = db.execute("SELECT to_regclass('users')").fetchone()
    if found is None or found[0] is None:
        return None
    if db.execute("SELECT 1 FROM users WHERE secret IS NOT NULL LIMIT 1").fetchone() is None:
        return None
    row = db.execute("SELECT value FROM meta WHERE key = 'key_fingerprint'").fetchone()
    return str(row[0]) if row is not None else "unknown"


def _connect_options(password: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": "mfa-bridge",
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
    }
    if password is not None:
        options["password"] = password
    return options


def _redacted(url: str) -> str:
    """The URL without a password in it, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "store.url"
    hosts = info.get("host") or "localhost"
    port = f":{info['port']}" if info.get("port") else ""
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{hosts}{port}/{info.get('dbname') or ''}"


def error_reason(exc: Exception) -> str:
    """A driver error as one short line, for messages and logs."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__
