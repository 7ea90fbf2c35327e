"""The store's one implementation of users' records, over any SQL database we support.

SQLite (`sqlite.py`) and PostgreSQL (`postgres.py`) differ in how they are opened,
created and upgraded, and in how a transaction takes its lock; what a record is, how a
login's compare-and-set is written and how binds are remembered is the same for both
and lives here. Statements are written with `?` placeholders and portable SQL
(`INSERT ... ON CONFLICT`), translated once for drivers that want `%s`.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import functools
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from bridge.core.identity import name_key
from bridge.core.types import Identity, LockReason, State, UserRecord
from bridge.store.recent import RecentRecords
from bridge.store.sealing import KeyFileError, Sealer

T = TypeVar("T")

COLUMNS = (
    "entry_id, username, name_key, state, deadline, failures, last_step, step_key, secret,"
    " lock_reason, confirmed, created, updated, version"
)
_SET_ALL = ", ".join(f"{c.strip()} = ?" for c in COLUMNS.split(",")[1:])
# Only the constant column list is interpolated into these statements.
_SELECT_ONE = f"SELECT {COLUMNS} FROM users WHERE entry_id = ?"  # noqa: S608
_SELECT_MANY = f"SELECT {COLUMNS} FROM users WHERE entry_id IN"  # noqa: S608
_SELECT_NAMED = f"SELECT {COLUMNS} FROM users WHERE name_key = ? ORDER BY username"  # noqa: S608
_SELECT_ALL = f"SELECT {COLUMNS} FROM users ORDER BY username, entry_id"  # noqa: S608
_VALUES = "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_REPLACE = f"UPDATE users SET {_SET_ALL} WHERE entry_id = ? AND version = ?"  # noqa: S608
_OVERWRITE = f"UPDATE users SET {_SET_ALL} WHERE entry_id = ?"  # noqa: S608
_INSERT = f"INSERT INTO users ({COLUMNS}) {_VALUES} ON CONFLICT (entry_id) DO NOTHING"
_UPDATE_SEEN = (
    "UPDATE users SET username = ?, name_key = ?, state = ?, deadline = ?, failures = ?,"
    " last_step = ?, step_key = ?, lock_reason = ?, confirmed = ?, updated = ?,"
    " version = version + 1 WHERE entry_id = ? AND version = ?"
)
_DELETE_SEEN = "DELETE FROM users WHERE entry_id = ? AND version = ?"
_REMEMBER_REBIND = (
    "INSERT INTO rebinds (mac, entry_id, expires) VALUES {rows}"
    " ON CONFLICT (mac) DO UPDATE SET entry_id = excluded.entry_id, expires = excluded.expires"
)

_SESSION_COLUMNS = (
    "key, csrf, entry_id, name, dn, started, seen, new_secret, proven_for, proven_at, exempt"
)
_SAVE_SESSION = (
    f"INSERT INTO portal_sessions ({_SESSION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"  # noqa: S608
    " ON CONFLICT (key) DO UPDATE SET seen = excluded.seen, new_secret = excluded.new_secret,"
    " proven_for = excluded.proven_for, proven_at = excluded.proven_at, exempt = excluded.exempt"
)
_LOAD_SESSION = f"SELECT {_SESSION_COLUMNS} FROM portal_sessions WHERE key = ?"  # noqa: S608
_CHALLENGE_COLUMNS = "state, username, entry_id, name, dn, client, expires"
_REMEMBER_CHALLENGE = f"INSERT INTO challenges ({_CHALLENGE_COLUMNS}) VALUES (?,?,?,?,?,?,?)"  # noqa: S608
_TAKE_CHALLENGE = f"DELETE FROM challenges WHERE state = ? RETURNING {_CHALLENGE_COLUMNS}"  # noqa: S608

PURGE_SECONDS = 60  # short-lived rows past their time are deleted at most this often
# What "past its time" means for each table of short-lived rows (`_purge`).
_PURGES = {
    "rebinds": "DELETE FROM rebinds WHERE expires <= ?",
    "challenges": "DELETE FROM challenges WHERE expires <= ?",
    "portal_sessions": "DELETE FROM portal_sessions WHERE seen < ?",
}
MAX_RETRIES = 20  # a record rewritten by others this often under one write: give up


class StoreError(Exception):
    """The store cannot be opened or used; the message says what to fix."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached now (a login fails closed; it comes back by itself)."""


class RebindRow(NamedTuple):
    """An accepted bind an app may repeat (SPEC 6): its keyed hash, entry and expiry."""

    mac: bytes
    entry_id: str
    expires: int
    now: int


class ChallengeRow(NamedTuple):
    """A RADIUS Access-Challenge issued: whose password was checked, for which client."""

    state: bytes  # the State attribute sent (random)
    username: str  # the name the client sent, as the answer must send it again
    entry_id: str  # the entry whose record the code is checked against
    name: str
    dn: str
    client: str  # the NAS address the answer must come from
    expires: float


class SessionRow(NamedTuple):
    """A portal session as stored: keyed by a hash of its id (the cookie is the secret)."""

    key: bytes
    csrf: str
    entry_id: str
    name: str
    dn: str
    started: float
    seen: float
    new_secret: bytes | None  # sealed in the table
    proven_for: bytes | None
    proven_at: float
    exempt: bool


SeenChange = tuple[
    str, UserRecord | None, Callable[[UserRecord | None], tuple[UserRecord | None, T]]
]
Row = tuple[Any, ...]  # the columns of COLUMNS, in order


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


def first_version() -> int:
    """A new row's version: random, so a row deleted and made again never repeats the
    version a compare-and-set read from the old one (it would write over the new row)."""
    return secrets.randbelow(1 << 31) + 1


def unchanged(
    changes: Sequence[SeenChange[Any]], decided: Sequence[object], reads: Sequence[str]
) -> builtins.list[str]:
    """The entries of a turn's decisions that write nothing (their versions to check)."""
    checks = dict.fromkeys(
        entry_id
        for (entry_id, seen, _change), outcome in zip(changes, decided, strict=True)
        if isinstance(outcome, tuple) and outcome[0] == seen
    )
    return [entry_id for entry_id in checks if entry_id not in reads]


def writes_of(
    changes: Sequence[SeenChange[Any]], decided: Sequence[object]
) -> builtins.list[tuple[str, UserRecord | None, UserRecord | None]]:
    """The (entry, seen, after) of a turn's decisions that change their record."""
    return [
        (entry_id, seen, outcome[0])
        for (entry_id, seen, _change), outcome in zip(changes, decided, strict=True)
        if isinstance(outcome, tuple) and outcome[0] != seen
    ]


class Lost(enum.Enum):
    """A turn's decision that lost its compare-and-set: it is made again."""

    LOST = "lost"


LOST = Lost.LOST


def _version(record: UserRecord | None) -> int | None:
    return record.version if record is not None else None


@functools.lru_cache(maxsize=256)
def pyformat(sql: str) -> str:
    """`?` placeholders as `%s` (no statement here has a literal `?` or `%`)."""
    return sql.replace("?", "%s")


class RecordStore:
    """Users' MFA records, one row per directory entry, secrets sealed; shared by backends.

    A backend gives a DB-API connection in autocommit mode (`_db`), the statement that
    opens a write transaction, the exceptions its driver raises, and `where` (the file
    or URL, for messages).
    """

    _begin = "BEGIN"
    _placeholder_style = "qmark"  # or "format" (psycopg)
    _driver_error: type[Exception] = Exception  # what the driver raises
    _db: Any  # the DB-API connection (set by the backend)
    remote = False  # a database server (its calls may wait): the daemon calls it off the reactor
    # Whether a batch of login writes shares one transaction. SQLite: yes, one commit for
    # all. PostgreSQL: each login's write is one compare-and-set statement on its own, so
    # the batch's writes go in one autocommitted statement, two round trips fewer.
    _batch_in_transaction = True

    def __init__(self, sealer: Sealer, where: str) -> None:
        self._sealer = sealer
        self.where = where
        self._purged_at: dict[str, float] = {}  # table -> when its old rows last went
        # A remote store's records as its turns last read or wrote them (`recent.py`);
        # None: every login reads its record (SQLite, where a read costs no round trip).
        self._recent: RecentRecords | None = None

    # --- statements ----------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder_style == "qmark" else pyformat(sql)

    def _execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        return self._db.execute(self._sql(sql), params)

    def _one(self, sql: str, params: Sequence[object] = ()) -> Any:
        return self._execute(sql, params).fetchone()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._execute(self._begin)
        try:
            yield
        except BaseException:
            with contextlib.suppress(self._driver_error):  # a lost connection has no transaction
                self._db.execute("ROLLBACK")
            raise
        self._execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    # --- records -------------------------------------------------------------------------

    def get(self, entry_id: str) -> UserRecord | None:
        """The entry's record, or None when the bridge has never seen it."""
        row = self._one(_SELECT_ONE, (entry_id,))
        return self._record(row) if row else None

    def recent(self, entry_id: str) -> UserRecord | None:
        """The entry's record as this instance's store turns last read or wrote it, or
        None (not known, or the store keeps none): to plan a bind with, never to decide
        on, since another writer may have changed it (`recent.py`)."""
        return self._recent.get(entry_id) if self._recent is not None else None

    def _forget(self, *entry_ids: str) -> None:
        """These records were written outside a turn: their next logins read them."""
        if self._recent is not None:
            for entry_id in entry_ids:
                self._recent.forget(entry_id)

    def named(self, name: str) -> builtins.list[UserRecord]:
        """Records whose stored name is `name` (as the directory compares names).

        For the admin while the directory cannot be asked; logins never use this.
        """
        key = name_key(name)
        if key is None:
            return []
        return [self._record(row) for row in self._execute(_SELECT_NAMED, (key,)).fetchall()]

    def query(self, sql: str, params: tuple[object, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        """Rows of a read-only statement (counts for the metrics)."""
        return [tuple(row) for row in self._execute(sql, params).fetchall()]

    def list(self) -> builtins.list[UserRecord]:
        """Every record, by user name."""
        return [self._record(row) for row in self._execute(_SELECT_ALL).fetchall()]

    def update(
        self, entry_id: str, change: Callable[[UserRecord | None], tuple[UserRecord | None, T]]
    ) -> T:
        """Read, decide and write one entry's record atomically; returns change's result.

        `change` gets the current record and returns the new one (None removes it) and a
        result; nothing is written when the record is unchanged.
        """
        try:
            with self._transaction():
                return self._read_modify_write(entry_id, change)
        finally:
            self._forget(entry_id)

    def update_many(
        self,
        changes: Sequence[tuple[str, Callable[[UserRecord | None], tuple[UserRecord | None, T]]]],
    ) -> builtins.list[T]:
        """Several `update` in one transaction: all of them or, if one raises, none."""
        try:
            with self._transaction():
                return [self._read_modify_write(entry_id, change) for entry_id, change in changes]
        finally:
            self._forget(*(entry_id for entry_id, _change in changes))

    def _read_modify_write(
        self, entry_id: str, change: Callable[[UserRecord | None], tuple[UserRecord | None, T]]
    ) -> T:
        """`change` on the current record, written if it changed (inside a transaction).

        The write is itself a compare-and-set: a writer that does not hold SQLite's file
        lock (another instance on PostgreSQL) may have written the row since it was read,
        and then `change` runs again on what it wrote.
        """
        for _attempt in range(MAX_RETRIES):
            before = self.get(entry_id)
            after, result = change(before)
            if after == before or self._write(entry_id, after, before):
                return result
        raise StoreError(f"{self.where}: user record {entry_id!r} kept changing under a write")

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
        self._forget(entry_id)
        after, result = change(seen)
        if after == seen or self._set_seen(entry_id, seen, after):
            return result
        return self.update(entry_id, change)

    def update_seen_many(
        self,
        changes: Sequence[SeenChange[T]],
        rebinds: Sequence[RebindRow] = (),
        challenges: Sequence[ChallengeRow] = (),
        now: float = 0.0,
    ) -> builtins.list[T | Exception]:
        """Several `update_seen` in one transaction: one commit for a burst of logins.

        Each change is a compare-and-set as in `update_seen`; one that lost the race runs
        again on the current record, inside the same transaction. A change that raises
        gets its exception in the result list and writes nothing; the others still commit.
        `rebinds` (accepted binds to remember, see `remember_rebind`) and `challenges`
        (States issued) commit with them.
        """
        return self.turn((), changes, rebinds, challenges, now)[1]

    def turn(
        self,
        reads: Sequence[str],
        changes: Sequence[SeenChange[T]],
        rebinds: Sequence[RebindRow] = (),
        challenges: Sequence[ChallengeRow] = (),
        now: float = 0.0,
    ) -> tuple[dict[str, UserRecord], builtins.list[T | Exception]]:
        """One store turn (`batching.py`): the records of `reads` (as `get_many`; only a
        threaded store's turns have any) and the writes of `update_seen_many`, in as few
        statements as the backend can (PostgreSQL: one). A record read in the turn that
        also writes it may be the one from before the write: its login's own write then
        loses the compare-and-set and is decided again, as against any other writer.

        A store that keeps recent records (`recent.py`) may have been given a `seen` that
        another writer has since changed. A write would lose its compare-and-set; a
        decision that writes nothing has its row's version read in the same statement,
        and is decided again when it moved. Then the turn's records are remembered.
        """
        batch = self._transaction() if self._batch_in_transaction else contextlib.nullcontext()
        with batch:
            decided = self._decide(changes)
            writes = writes_of(changes, decided)
            checks = [] if self._recent is None else unchanged(changes, decided, reads)
            found, flags = self._write_and_read(writes, [*reads, *checks])
            results = self.decide_again(changes, self._settle(changes, decided, found, flags))
            self._insert_rebinds(rebinds)
            self._insert_challenges(challenges, now)
        return found, results

    def _decide(
        self, changes: Sequence[SeenChange[T]]
    ) -> builtins.list[tuple[UserRecord | None, T] | Exception]:
        """Each change on the record its login saw (an exception is its login's result)."""
        decided: builtins.list[tuple[UserRecord | None, T] | Exception] = []
        for _entry_id, seen, change in changes:
            try:
                decided.append(change(seen))
            except (self._driver_error, StoreError):
                raise  # the store itself failed: nothing of the batch is committed
            except Exception as exc:  # a bug in one decision must not lose the others
                decided.append(exc)
        return decided

    def _settle(
        self,
        changes: Sequence[SeenChange[T]],
        decided: Sequence[tuple[UserRecord | None, T] | Exception],
        found: dict[str, UserRecord],
        flags: Iterable[bool],
    ) -> builtins.list[T | Exception | Lost]:
        """A turn's results once its statement is answered (`found`: the records it read,
        `flags`: which writes were written); LOST where another writer got there first.
        The records read and written are remembered."""
        self._remember(found.values())
        written = iter(flags)
        results: builtins.list[T | Exception | Lost] = []
        for (entry_id, seen, _change), outcome in zip(changes, decided, strict=True):
            if isinstance(outcome, Exception):
                results.append(outcome)
            elif self._stands(entry_id, seen, outcome[0], found, written):
                results.append(outcome[1])
            else:
                results.append(LOST)
        return results

    def decide_again(
        self, changes: Sequence[SeenChange[T]], results: Sequence[T | Exception | Lost]
    ) -> builtins.list[T | Exception]:
        """A turn's `results` (`_settle`), each LOST one decided again on the record as the
        other writer left it."""
        return [
            self._decide_again(entry_id, change) if result is LOST else result
            for (entry_id, _seen, change), result in zip(changes, results, strict=True)
        ]

    def _stands(
        self,
        entry_id: str,
        seen: UserRecord | None,
        after: UserRecord | None,
        found: dict[str, UserRecord],
        written: Iterator[bool],
    ) -> bool:
        """Whether a turn's decision on `seen` stands: its compare-and-set was written or,
        writing nothing, the row was still at `seen`'s version (`found`: read with it)."""
        if after == seen:
            return self._recent is None or _version(found.get(entry_id)) == _version(seen)
        if not next(written):
            return False
        self._remember_written(seen, after)
        return True

    def _decide_again(
        self, entry_id: str, change: Callable[[UserRecord | None], tuple[UserRecord | None, T]]
    ) -> T | Exception:
        """`change` on the current record (`update` forgets the record kept of it)."""
        try:
            if self._batch_in_transaction:
                return self._read_modify_write(entry_id, change)
            return self.update(entry_id, change)
        except (self._driver_error, StoreError):
            raise
        except Exception as exc:  # a bug in one decision must not lose the others
            return exc

    def _remember(self, records: Iterable[UserRecord]) -> None:
        if self._recent is not None:
            for record in records:
                self._recent.put(record)

    def _remember_written(self, seen: UserRecord | None, after: UserRecord | None) -> None:
        """A turn's compare-and-set succeeded: the row is `after`, one version on."""
        if self._recent is None or after is None:
            return
        if seen is None or not self._same_key(seen, after):  # a new row or a new key
            self._recent.forget(after.entry_id)
        else:
            self._recent.put_written(after, seen.version)

    def _write_and_read(
        self,
        writes: Sequence[tuple[str, UserRecord | None, UserRecord | None]],
        reads: Sequence[str],
    ) -> tuple[dict[str, UserRecord], builtins.list[bool]]:
        """`get_many(reads)`, and `_set_seen` for each (entry, seen, after) in order with
        which ones were written; PostgreSQL makes the common ones and the reads one
        statement."""
        found = self.get_many(reads) if reads else {}
        return found, [self._set_seen(entry_id, seen, after) for entry_id, seen, after in writes]

    def get_many(self, entry_ids: Sequence[str]) -> dict[str, UserRecord]:
        """The records of these entries that exist, by entry (one statement)."""
        found: dict[str, UserRecord] = {}
        for start in range(0, len(entry_ids), 500):
            chunk = entry_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._execute(f"{_SELECT_MANY} ({marks})", chunk).fetchall()
            for row in rows:
                record = self._record(row)
                found[record.entry_id] = record
        return found

    @staticmethod
    def _same_key(seen: UserRecord | None, after: UserRecord | None) -> bool:
        """Whether `after` keeps `seen`'s key and creation: the light update will do."""
        return (
            seen is not None
            and after is not None
            and (after.secret, after.created) == (seen.secret, seen.created)
        )

    def _set_seen(self, entry_id: str, seen: UserRecord | None, after: UserRecord | None) -> bool:
        """Write `after` over `seen` if the row is still at `seen`'s version.

        The common case (same key: a login's guard, failures, state) leaves the sealed
        secret alone; anything else is a full `_write`.
        """
        if seen is None or after is None or not self._same_key(seen, after):
            return self._write(entry_id, after, seen)
        return bool(self._execute(_UPDATE_SEEN, self._changes(after, seen)).rowcount == 1)

    def _write(self, entry_id: str, record: UserRecord | None, before: UserRecord | None) -> bool:
        """Replace `before` (as read) by `record`; False when the row is no longer `before`."""
        if record is not None and record.entry_id != entry_id:
            raise ValueError("a record is written under its own entry only")
        if before is None:
            if record is None:
                return True
            return bool(self._execute(_INSERT, self._row(record, first_version())).rowcount == 1)
        if record is None:
            return bool(self._execute(_DELETE_SEEN, (entry_id, before.version)).rowcount == 1)
        row = self._row(record, before.version + 1)
        return bool(self._execute(_REPLACE, (*row[1:], entry_id, before.version)).rowcount == 1)

    # --- whole-store copies (`backup.py`) ------------------------------------------------

    @property
    def sealer(self) -> Sealer:
        """What seals the secrets (a copy of the store is opened with the same key)."""
        return self._sealer

    @property
    def id_attribute(self) -> str:
        """The directory attribute the records are keyed by."""
        return self._meta("id_attribute") or "entryUUID"

    def raw_users(self) -> builtins.list[Row]:
        """Every user row as stored (secrets still sealed), in one statement: a snapshot."""
        return [tuple(row) for row in self._execute(f"SELECT {COLUMNS} FROM users").fetchall()]  # noqa: S608

    def put_raw(self, rows: Sequence[Row], *, replace: bool) -> tuple[int, int]:
        """Write rows from another store with the same key: (added, replaced); a user
        already here is left alone unless `replace`."""
        added = replaced = 0
        try:
            with self._transaction():
                for given in rows:
                    # A new version, as for any new row: one an instance read before the
                    # restore must not match the restored row (`first_version`).
                    row = (*given[:-1], first_version())
                    if self._execute(_INSERT, row).rowcount == 1:
                        added += 1
                    elif replace:
                        self._execute(_OVERWRITE, (*row[1:], row[0]))
                        replaced += 1
        finally:
            if self._recent is not None:
                self._recent.clear()
        return added, replaced

    # --- binds an app may repeat (SPEC 6): keyed hashes, for a while ----------------------

    def mac(self, *parts: bytes) -> bytes:
        """A keyed hash of `parts` (joined unambiguously) under a key derived from the
        store's: the same on every instance that shares the store and its key file."""
        return self._sealer.mac(b"\x00".join(len(p).to_bytes(4, "big") + p for p in parts))

    def remember_rebind(self, mac: bytes, entry_id: str, expires: int, now: int) -> None:
        """Remember an accepted bind until `expires` (and forget those that have expired)."""
        with self._transaction():
            self._insert_rebinds([RebindRow(mac, entry_id, expires, now)])

    def _insert_rebinds(self, rows: Sequence[RebindRow]) -> None:
        """Write `rows` (in one statement per 500); expired rows go, at most once a minute."""
        if not rows:
            return
        self._purge("rebinds", max(row.now for row in rows))
        latest = list({row.mac: row for row in rows}.values())  # one row per bind
        for start in range(0, len(latest), 500):
            chunk = latest[start : start + 500]
            values = [value for row in chunk for value in (row.mac, row.entry_id, row.expires)]
            marks = ",".join(["(?, ?, ?)"] * len(chunk))
            self._execute(_REMEMBER_REBIND.format(rows=marks), values)

    def _purge(self, table: str, when: float) -> None:
        """Delete `table`'s rows past their time at `when` (inside a transaction), at most
        once every PURGE_SECONDS: not a scan per login."""
        if when >= self._purged_at.get(table, float("-inf")) + PURGE_SECONDS:
            self._execute(_PURGES[table], (when,))
            self._purged_at[table] = when

    def forget_rebinds(self, entry_id: str) -> None:
        """Forget every bind remembered for the entry (an admin changed its state or key)."""
        self._execute("DELETE FROM rebinds WHERE entry_id = ?", (entry_id,))

    def knows_rebind(self, mac: bytes, entry_id: str, now: int) -> bool:
        """Whether this entry's bind `mac` was accepted and has not expired."""
        row = self._one(
            "SELECT 1 FROM rebinds WHERE mac = ? AND entry_id = ? AND expires > ?",
            (mac, entry_id, now),
        )
        return row is not None

    # --- RADIUS challenges (SPEC 9): a State issued by one instance is answered by any ----

    def remember_challenge(self, row: ChallengeRow, now: float) -> None:
        """Remember an issued State until it expires (and forget those that have)."""
        with self._transaction():
            self._insert_challenges([row], now)

    def _insert_challenges(self, rows: Sequence[ChallengeRow], now: float) -> None:
        if not rows:
            return
        self._purge("challenges", now)
        for row in rows:
            self._execute(_REMEMBER_CHALLENGE, row)

    def take_challenge(self, state: bytes, now: float) -> ChallengeRow | None:
        """The challenge issued with `state`, forgotten as it is read: one answer each.

        None when there is none, or it has expired.
        """
        found = self._one(_TAKE_CHALLENGE, (state,))
        if found is None:
            return None
        row = ChallengeRow(bytes(found[0]), *found[1:])
        return row if row.expires > now else None

    # --- portal sessions (SPEC 9): valid on every instance sharing the store -------------

    def save_session(self, row: SessionRow, purge_before: float) -> None:
        """Write a portal session (sessions last seen before `purge_before` are dropped,
        at most once a minute). A set-up's new secret is sealed like a user's."""
        sealed = self._sealer.seal(row.entry_id, row.new_secret) if row.new_secret else None
        with self._transaction():
            self._purge("portal_sessions", purge_before)
            self._execute(_SAVE_SESSION, (*row[:-4], sealed, *row[-3:]))

    def load_session(self, key: bytes) -> SessionRow | None:
        """The session stored under `key` (a hash of its id), or None."""
        found = self._one(_LOAD_SESSION, (key,))
        if found is None:
            return None
        values = list(found)
        values[0] = bytes(values[0])
        sealed = values[-4]
        values[-4] = self._unseal(values[2], sealed, values[3]) if sealed is not None else None
        if values[-3] is not None:
            values[-3] = bytes(values[-3])
        values[-1] = bool(values[-1])
        return SessionRow(*values)

    def drop_session(self, key: bytes) -> None:
        """Forget a session (sign-out, expiry)."""
        self._execute("DELETE FROM portal_sessions WHERE key = ?", (key,))

    # --- records from before SPEC section 8: only SQLite stores can have them -------------

    @property
    def has_legacy(self) -> bool:
        """Whether records keyed by typed names may still wait to be attached."""
        return False

    def legacy_names(self) -> builtins.list[str]:
        """The names of the records still waiting for their directory entry."""
        return []

    def attach(self, owner: Identity, names: Iterable[str], now: int) -> Attached | None:
        """Move old records under any of `names` to `owner`'s record (see SqliteStore)."""
        return None

    def lock_legacy(self, name: str, now: int) -> builtins.list[UserRecord]:
        """Lock old records still waiting for their entry, found by name (see SqliteStore)."""
        return []

    # --- the meta table: what the rows were written with ----------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return str(row[0]) if row is not None else None

    def _set_meta(self, key: str, value: str, *, replace: bool = True) -> None:
        action = "DO UPDATE SET value = excluded.value" if replace else "DO NOTHING"
        self._execute(
            f"INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) {action}",  # noqa: S608
            (key, value),
        )

    def _check_id_attribute(self, attribute: str) -> None:
        """Refuse a store whose records are keyed by another id attribute than configured.

        Changing `directory.id_attribute` would give every user a record that no login
        finds again: a fresh enrollment period for everyone, that is MFA switched off.
        """
        stored = self._meta("id_attribute")
        if stored is None:
            with self._transaction():
                self._set_meta("id_attribute", attribute, replace=False)
            stored = self._meta("id_attribute") or attribute
        if stored.lower() == attribute.lower():
            return
        (count,) = self._one("SELECT count(*) FROM users")
        if count == 0:
            with self._transaction():
                self._set_meta("id_attribute", attribute)
            return
        raise StoreError(
            f"{self.where}: its {count} records are keyed by directory.id_attribute {stored!r},"
            f" the config says {attribute!r}; set it back to {stored!r} (changing it would"
            " give every user a new enrollment period)"
        )

    def _check_fingerprint(self, needed: str | None) -> None:
        """Refuse a key file other than the one the secrets were sealed with; note ours."""
        mine = self._sealer.fingerprint
        if needed not in (None, "unknown", mine):
            raise StoreError(
                f"{self.where}: its secrets were sealed with the key of fingerprint {needed},"
                f" the key file given has {mine}: use the key file that belongs to this store"
            )
        if needed != mine:
            with self._transaction():
                self._set_meta("key_fingerprint", mine)

    # --- rows ----------------------------------------------------------------------------

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
            return self._sealer.open(bound_to, bytes(sealed))
        except KeyFileError as exc:
            raise StoreError(f"{self.where}: user {username!r}: {exc}") from exc

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
        return UserRecord(
            username=username,
            state=State(state),
            deadline=deadline,
            failures=failures,
            last_step=last_step,
            step_key=bytes(step_key) if step_key is not None else None,
            secret=self._unseal(entry_id, sealed, username),
            lock_reason=LockReason(lock) if lock else None,
            confirmed=bool(confirmed),
            created=created,
            updated=updated,
            version=version,
            entry_id=entry_id,
        )
