"""The SQLite store: records keyed by entry, sealed secrets, compare-and-set, migration."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from bridge.core.types import Identity, LockReason, State, UserRecord
from bridge.store import SqliteStore, StoreError
from bridge.store.sealing import KeyFileError, Sealer, load_or_create_key

ALICE = Identity("6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b", "alice", "uid=alice,dc=example,dc=org")
BOB = Identity("1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "bob", "uid=bob,dc=example,dc=org")
KEY = b"k" * 20
OTHER_KEY = b"o" * 20
NOW = 1_700_000_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
    yield opened
    opened.close()


def active(owner: Identity = ALICE, secret: bytes = KEY, **changes: object) -> UserRecord:
    record = UserRecord(
        owner.name,
        State.ACTIVE,
        secret=secret,
        confirmed=True,
        created=1,
        updated=1,
        entry_id=owner.entry_id,
    )
    return record.evolve(**changes)


def put(store: SqliteStore, record: UserRecord) -> None:
    """Store `record` under its own entry."""
    store.update(record.entry_id, lambda _old: (record, None))


# A schema-2 row: username, state, deadline, failures, last_step, secret, lock_reason,
# confirmed, created, updated, version.
LegacyRow = tuple[
    str, str, int | None, int, int | None, bytes | None, str | None, int, int, int, int
]


def legacy(
    username: str,
    state: State = State.ACTIVE,
    *,
    secret: bytes | None = KEY,
    deadline: int | None = None,
    last_step: int | None = None,
    lock_reason: LockReason | None = None,
    created: int = 10,
    updated: int = 20,
) -> LegacyRow:
    """A row as the previous release stored it (the secret still raw: `write_v2` seals it)."""
    return (
        username,
        state.value,
        deadline,
        0,
        last_step,
        secret,
        lock_reason.value if lock_reason else None,
        int(secret is not None and state is State.ACTIVE),
        created,
        updated,
        3,
    )


def write_v2(tmp_path: Path, rows: Sequence[LegacyRow], name: str = "state") -> Path:
    """A schema-2 database written the way the previous release wrote it; returns its path.

    That release keyed rows by the typed (normalized) name and sealed each secret with
    that name as associated data.
    """
    path = tmp_path / f"{name}.db"
    sealer = Sealer(load_or_create_key(tmp_path / f"{name}.key"))
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE users (username TEXT PRIMARY KEY,"
        " state TEXT NOT NULL CHECK (state IN ('grace', 'pending', 'active', 'locked')),"
        " deadline INTEGER, failures INTEGER NOT NULL DEFAULT 0, last_step INTEGER,"
        " secret BLOB, lock_reason TEXT, confirmed INTEGER NOT NULL DEFAULT 0,"
        " created INTEGER NOT NULL, updated INTEGER NOT NULL,"
        " version INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
    )
    for row in rows:
        username, secret = row[0], row[5]
        sealed = sealer.seal(username, secret) if secret is not None else None
        db.execute("INSERT INTO users VALUES (?,?,?,?,?,?,?,?,?,?,?)", (*row[:5], sealed, *row[6:]))
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    return path


def open_v2(tmp_path: Path, rows: Sequence[LegacyRow]) -> SqliteStore:
    """The store opened (and so migrated) over a schema-2 database holding `rows`."""
    return SqliteStore.open(write_v2(tmp_path, rows), tmp_path / "state.key")


def sealed_secret(path: Path, entry_id: str) -> bytes:
    """The sealed secret of an entry's row, read straight from the file."""
    db = sqlite3.connect(path)
    try:
        (sealed,) = db.execute(
            "SELECT secret FROM users WHERE entry_id = ?", (entry_id,)
        ).fetchone()
    finally:
        db.close()
    return bytes(sealed)


# --- records keyed by entry -----------------------------------------------------------------


def test_round_trip_and_version(store: SqliteStore) -> None:
    """A stored record reads back equal under its entry id, the row version counting writes."""
    put(store, active())
    first = store.get(ALICE.entry_id)
    assert first is not None and first.version > 0
    assert first.evolve(version=0) == active()
    store.update(ALICE.entry_id, lambda old: (old.evolve(failures=2) if old else None, None))
    second = store.get(ALICE.entry_id)
    assert second is not None and second.failures == 2 and second.version == first.version + 1


def test_a_row_made_again_never_repeats_the_version_of_the_old_one(store: SqliteStore) -> None:
    """Deleted and inserted anew, a row gets a fresh version: a stale compare-and-set misses."""
    versions = set()
    for _ in range(20):
        put(store, active())
        seen = store.get(ALICE.entry_id)
        assert seen is not None
        versions.add(seen.version)
        store.update(ALICE.entry_id, lambda _old: (None, None))
    assert len(versions) == 20
    put(store, active())
    stale = active().evolve(version=min(versions))
    result = store.update_seen(
        ALICE.entry_id, stale, lambda r: (r.evolve(failures=4) if r else None, "done")
    )
    assert result == "done"  # run again on the current row, not written over it blindly


def test_records_are_found_by_entry_id_not_by_name(store: SqliteStore) -> None:
    """get takes the entry id: the entry's name is no key."""
    put(store, active())
    assert store.get("alice") is None
    assert store.get(BOB.entry_id) is None
    assert [r.entry_id for r in store.list()] == [ALICE.entry_id]


def test_a_record_is_written_only_under_its_own_entry(store: SqliteStore) -> None:
    """update refuses a record whose entry_id is not the key it is written under."""
    with pytest.raises(ValueError, match="its own entry"):
        store.update(BOB.entry_id, lambda _old: (active(ALICE), None))
    assert store.list() == []


def test_records_survive_reopening(tmp_path: Path, store: SqliteStore) -> None:
    """Records written before a close read back equal (secret included) after reopening."""
    put(store, active(last_step=42))
    put(store, active(BOB, OTHER_KEY, state=State.LOCKED, lock_reason=LockReason.ADMIN))
    before = store.list()
    store.close()
    reopened = SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
    assert reopened.list() == before
    alice = reopened.get(ALICE.entry_id)
    assert alice is not None and (alice.secret, alice.last_step) == (KEY, 42)


def test_named_finds_a_record_by_stored_name_ignoring_case_and_spaces(store: SqliteStore) -> None:
    """named() finds a record by its stored name as the directory compares names."""
    jo = Identity("0f0e0d0c-0b0a-4909-8807-060504030201", "Jo Smith", "cn=Jo Smith,dc=ex")
    put(store, active(jo))
    put(store, active())
    for spelling in ("Jo Smith", "jo smith", "JO  SMITH", " jo\u00a0smith "):
        assert [r.entry_id for r in store.named(spelling)] == [jo.entry_id]
    assert store.named("nobody") == []
    assert store.named("") == []


def test_update_seen_writes_in_one_statement(store: SqliteStore) -> None:
    """update_seen applies the change to the record read before, when nobody wrote since."""
    put(store, active())
    seen = store.get(ALICE.entry_id)
    result = store.update_seen(
        ALICE.entry_id, seen, lambda r: (r.evolve(last_step=7) if r else None, "ok")
    )
    assert result == "ok"
    after = store.get(ALICE.entry_id)
    assert seen is not None and after is not None
    assert after.last_step == 7 and after.version == seen.version + 1


def test_update_seen_stores_a_rename(store: SqliteStore) -> None:
    """A compare-and-set write that renames the record stores the new name (named finds it)."""
    put(store, active())
    seen = store.get(ALICE.entry_id)
    store.update_seen(
        ALICE.entry_id, seen, lambda r: (r.evolve(username="alice.smith") if r else None, None)
    )
    after = store.get(ALICE.entry_id)
    assert seen is not None and after is not None
    assert after.username == "alice.smith" and after.version == seen.version + 1
    assert [r.entry_id for r in store.named("Alice.Smith")] == [ALICE.entry_id]
    assert store.named("alice") == []


def test_update_seen_retries_on_the_current_record(store: SqliteStore) -> None:
    """A write between the read and the decision is not lost: the change runs again on it."""
    put(store, active())
    seen = store.get(ALICE.entry_id)
    store.update(ALICE.entry_id, lambda r: (r.evolve(last_step=9) if r else None, None))
    calls: list[UserRecord | None] = []

    def change(record: UserRecord | None) -> tuple[UserRecord | None, int | None]:
        calls.append(record)
        assert record is not None
        return record.evolve(failures=record.failures + 1), record.last_step

    assert store.update_seen(ALICE.entry_id, seen, change) == 9
    assert [c.last_step if c else None for c in calls] == [None, 9]
    after = store.get(ALICE.entry_id)
    assert after is not None and after.last_step == 9 and after.failures == 1


def test_update_seen_inserts_a_new_user_once(store: SqliteStore) -> None:
    """A first record is inserted; if another writer inserted it first, the change reruns."""
    grace = UserRecord(
        "bob", State.GRACE, deadline=100, created=1, updated=1, entry_id=BOB.entry_id
    )
    assert store.update_seen(BOB.entry_id, None, lambda _r: (grace, "new")) == "new"
    locked = grace.evolve(state=State.LOCKED, lock_reason=LockReason.ADMIN)

    def change(record: UserRecord | None) -> tuple[UserRecord | None, str]:
        return (locked, "first") if record is None else (record, "kept")

    assert store.update_seen(BOB.entry_id, None, change) == "kept"
    current = store.get(BOB.entry_id)
    assert current is not None and current.state is State.GRACE


def test_update_many_is_all_or_nothing(store: SqliteStore) -> None:
    """When one change of update_many raises, none of the batch is written."""
    put(store, active())
    before = store.get(ALICE.entry_id)

    def broken(_record: UserRecord | None) -> tuple[UserRecord | None, None]:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        store.update_many(
            [
                (ALICE.entry_id, lambda r: (r.evolve(failures=3) if r else None, None)),
                (BOB.entry_id, lambda _r: (active(BOB), None)),
                (BOB.entry_id, broken),
            ]
        )
    alice = store.get(ALICE.entry_id)
    assert alice is not None and alice.failures == 0 and alice == before
    assert store.get(BOB.entry_id) is None


def test_update_many_writes_every_change_and_returns_results(store: SqliteStore) -> None:
    """update_many commits each change in order and returns each change's result."""
    results = store.update_many(
        [
            (ALICE.entry_id, lambda _r: (active(), "alice")),
            (BOB.entry_id, lambda _r: (active(BOB, OTHER_KEY), "bob")),
        ]
    )
    assert results == ["alice", "bob"]
    assert [r.username for r in store.list()] == ["alice", "bob"]


def test_secrets_sealed_and_key_mode(tmp_path: Path, store: SqliteStore) -> None:
    """The database file never holds the raw secret; a key file others can read is refused."""
    put(store, active())
    store.close()
    data = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    assert KEY not in data
    (tmp_path / "state.key").chmod(0o644)
    with pytest.raises(StoreError, match="readable by others"):
        SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")


def test_secrets_are_sealed_for_the_entry_id(tmp_path: Path, store: SqliteStore) -> None:
    """A secret is sealed with the entry id as associated data, not with the user's name."""
    put(store, active())
    store.close()
    sealer = Sealer(load_or_create_key(tmp_path / "state.key"))
    sealed = sealed_secret(tmp_path / "state.db", ALICE.entry_id)
    assert sealer.open(ALICE.entry_id, sealed) == KEY
    with pytest.raises(KeyFileError):
        sealer.open("alice", sealed)


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


# --- directory.id_attribute -----------------------------------------------------------------


def test_a_store_with_users_refuses_another_id_attribute(tmp_path: Path) -> None:
    """Records keyed by entryUUID are not reopened as objectGUID: a StoreError names both."""
    path, key = tmp_path / "state.db", tmp_path / "state.key"
    store = SqliteStore.open(path, key, id_attribute="entryUUID")
    put(store, active())
    store.close()
    with pytest.raises(StoreError, match="entryUUID") as info:
        SqliteStore.open(path, key, id_attribute="objectGUID")
    assert "objectGUID" in str(info.value)
    same = SqliteStore.open(path, key, id_attribute="entryuuid")  # attribute names: any case
    assert same.get(ALICE.entry_id) is not None


def test_an_empty_store_switches_id_attribute_silently(tmp_path: Path) -> None:
    """With no users yet, a new id_attribute is simply taken (and then held to)."""
    path, key = tmp_path / "state.db", tmp_path / "state.key"
    SqliteStore.open(path, key, id_attribute="entryUUID").close()
    switched = SqliteStore.open(path, key, id_attribute="objectGUID")
    put(switched, active())
    switched.close()
    with pytest.raises(StoreError, match="objectGUID"):
        SqliteStore.open(path, key, id_attribute="entryUUID")


# --- records from schema 2 (keyed by the typed name) ----------------------------------------


def test_schema_2_rows_wait_as_legacy_records(tmp_path: Path) -> None:
    """After the migration, schema-2 rows are listed as legacy and no entry's record yet."""
    store = open_v2(tmp_path, [legacy("alice"), legacy("bob", State.GRACE, secret=None)])
    assert store.has_legacy
    assert store.legacy_names() == ["alice", "bob"]
    assert store.get("alice") is None
    assert store.get(ALICE.entry_id) is None
    assert store.list() == []
    assert store.named("alice") == []


def test_attach_moves_a_legacy_record_to_its_entry(tmp_path: Path) -> None:
    """attach moves alice's old row to her entry: secret, state and guard kept, the row gone."""
    row = legacy("alice", last_step=77, created=10, updated=20)
    store = open_v2(tmp_path, [row, legacy("bob", State.GRACE, secret=None)])
    attached = store.attach(ALICE, ["alice"], NOW)
    assert attached is not None
    record = store.get(ALICE.entry_id)
    assert record is not None
    assert record.evolve(version=0) == attached.record.evolve(version=0)
    assert (record.entry_id, record.username, record.state) == (
        ALICE.entry_id,
        "alice",
        State.ACTIVE,
    )
    assert (record.secret, record.confirmed, record.last_step) == (KEY, True, 77)
    assert record.created == 10
    assert [r.username for r in attached.merged] == ["alice"]
    assert store.legacy_names() == ["bob"]
    store.close()
    reopened = SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
    again = reopened.get(ALICE.entry_id)
    assert again is not None and again.secret == KEY
    assert reopened.legacy_names() == ["bob"]
    sealer = Sealer(load_or_create_key(tmp_path / "state.key"))
    sealed = sealed_secret(tmp_path / "state.db", ALICE.entry_id)
    assert sealer.open(ALICE.entry_id, sealed) == KEY
    with pytest.raises(KeyFileError):
        sealer.open("alice", sealed)


def test_attach_of_the_last_legacy_record_clears_has_legacy(tmp_path: Path) -> None:
    """Once every legacy record is attached, the store no longer reports legacy records."""
    store = open_v2(tmp_path, [legacy("alice")])
    assert store.attach(ALICE, ["alice"], NOW) is not None
    assert not store.has_legacy
    assert store.legacy_names() == []


def test_attach_merges_two_legacy_names_of_one_entry(tmp_path: Path) -> None:
    """Rows under 'alice' (active) and 'alice@example.org' (grace) become one active record."""
    store = open_v2(
        tmp_path,
        [
            legacy("alice", last_step=50),
            legacy("alice@example.org", State.GRACE, secret=None, deadline=NOW + 86_400),
        ],
    )
    attached = store.attach(ALICE, ["alice@example.org", "alice"], NOW)
    assert attached is not None
    assert sorted(r.username for r in attached.merged) == ["alice", "alice@example.org"]
    assert "alice@example.org" in attached.summary() and "kept active" in attached.summary()
    (record,) = store.list()
    assert record.entry_id == ALICE.entry_id and record.username == "alice"
    assert (record.state, record.secret, record.last_step) == (State.ACTIVE, KEY, 50)
    assert store.legacy_names() == []


def test_attach_a_locked_legacy_record_beats_an_existing_active_one(tmp_path: Path) -> None:
    """A locked old row wins over the entry's active record, which keeps its confirmed key."""
    store = open_v2(tmp_path, [legacy("alice", State.LOCKED, lock_reason=LockReason.FAILURES)])
    put(store, active(secret=OTHER_KEY, created=100, updated=100))
    attached = store.attach(ALICE, ["alice"], NOW)
    assert attached is not None and len(attached.merged) == 2
    record = store.get(ALICE.entry_id)
    assert record is not None
    assert (record.state, record.lock_reason) == (State.LOCKED, LockReason.FAILURES)
    assert (record.secret, record.confirmed) == (OTHER_KEY, True)  # unlock: active again
    assert record.created == 10  # the oldest of the two
    assert store.legacy_names() == []


def test_attach_matches_legacy_names_by_name_key(tmp_path: Path) -> None:
    """The old row 'jo smith' is found by 'Jo  Smith' (case and runs of spaces ignored)."""
    jo = Identity("0f0e0d0c-0b0a-4909-8807-060504030201", "Jo Smith", "cn=Jo Smith,dc=ex")
    store = open_v2(tmp_path, [legacy("jo smith")])
    attached = store.attach(jo, ["Jo  Smith"], NOW)
    assert attached is not None
    record = store.get(jo.entry_id)
    assert record is not None and record.secret == KEY and record.username == "Jo Smith"
    assert store.legacy_names() == []


def test_attach_without_a_match_changes_nothing(tmp_path: Path) -> None:
    """attach with names no legacy row has returns None and leaves every row where it was."""
    store = open_v2(tmp_path, [legacy("alice")])
    assert store.attach(BOB, ["bob", "bob@example.org"], NOW) is None
    assert store.get(BOB.entry_id) is None
    assert store.list() == []
    assert store.legacy_names() == ["alice"]
    assert store.has_legacy


def test_migrates_a_version_1_database(tmp_path: Path) -> None:
    """A schema-1 database (no row versions) opens; its rows wait and attach like schema 2's."""
    path = tmp_path / "old.db"
    sealer = Sealer(load_or_create_key(tmp_path / "old.key"))
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE users (username TEXT PRIMARY KEY, state TEXT NOT NULL, deadline INTEGER,"
        " failures INTEGER NOT NULL DEFAULT 0, last_step INTEGER, secret BLOB,"
        " lock_reason TEXT, confirmed INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL,"
        " updated INTEGER NOT NULL) WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO users VALUES ('alice', 'active', NULL, 0, 5, ?, NULL, 1, 1, 1)",
        (sealer.seal("alice", KEY),),
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    reopened = SqliteStore.open(path, tmp_path / "old.key")
    assert reopened.legacy_names() == ["alice"]
    assert reopened.attach(ALICE, ["Alice"], NOW) is not None
    record = reopened.get(ALICE.entry_id)
    assert record is not None and (record.secret, record.last_step) == (KEY, 5)
    reopened.update(ALICE.entry_id, lambda r: (r.evolve(failures=1) if r else None, None))
    updated = reopened.get(ALICE.entry_id)
    assert updated is not None and updated.version == record.version + 1


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store-v2"


def test_a_store_file_of_the_previous_release_attaches(tmp_path: Path) -> None:
    """The previous release's own state.db opens; its records attach and merge, secrets open."""
    path, key = tmp_path / "state.db", tmp_path / "state.key"
    path.write_bytes((FIXTURE / "state.db").read_bytes())
    key.write_bytes((FIXTURE / "state.key").read_bytes())
    key.chmod(0o600)
    store = SqliteStore.open(path, key)
    assert store.has_legacy
    names = ["ghost", "olga", "olga@example.org", "pia", "pia@example.org", "quinn"]
    assert store.legacy_names() == names
    olga = Identity("olga-entry", "olga", "uid=olga,dc=example,dc=org")
    pia = Identity("pia-entry", "pia", "uid=pia,dc=example,dc=org")
    assert store.attach(olga, ["olga@example.org", "olga"], NOW) is not None
    assert store.attach(pia, ["pia", "pia@example.org"], NOW) is not None
    kept_olga, kept_pia = store.get("olga-entry"), store.get("pia-entry")
    assert kept_olga is not None and kept_pia is not None
    assert (kept_olga.state, kept_olga.last_step) == (State.ACTIVE, 59666666)
    assert kept_olga.secret is not None and len(kept_olga.secret) == 20
    assert (kept_pia.state, kept_pia.lock_reason) == (State.LOCKED, LockReason.ADMIN)
    assert kept_pia.secret is not None
    assert store.legacy_names() == ["ghost", "quinn"]


def test_an_upgrade_keeps_a_copy_of_the_store_as_it_was(tmp_path: Path) -> None:
    """Before the schema moves on, the previous release's store is copied beside it
    (0600, whole: the same rows, the old schema version), once."""
    path, key = tmp_path / "state.db", tmp_path / "state.key"
    path.write_bytes((FIXTURE / "state.db").read_bytes())
    key.write_bytes((FIXTURE / "state.key").read_bytes())
    key.chmod(0o600)
    SqliteStore.open(path, key).close()
    copy = tmp_path / "state.db.schema2.bak"
    assert copy.stat().st_mode & 0o777 == 0o600
    old = sqlite3.connect(copy)
    try:
        assert old.execute("PRAGMA user_version").fetchone() == (2,)
        assert old.execute("SELECT count(*) FROM users").fetchone() == (6,)
    finally:
        old.close()
    before = copy.stat().st_mtime_ns
    SqliteStore.open(path, key).close()  # already upgraded: no new copy
    assert copy.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir() if ".bak" in p.name) == [copy.name]


# --- the key file --------------------------------------------------------------------------


def test_a_missing_key_file_is_not_made_anew_beside_sealed_secrets(tmp_path: Path) -> None:
    """Key file gone, secrets stored: refuse to open, naming the key to restore; none is made."""
    store = SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
    put(store, active())
    fingerprint = store._sealer.fingerprint
    store.close()
    (tmp_path / "state.key").unlink()
    with pytest.raises(StoreError, match=f"state.key: the key file is missing.*{fingerprint}"):
        SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
    assert not (tmp_path / "state.key").exists()


def test_a_key_file_of_another_store_is_refused(tmp_path: Path) -> None:
    """A key file that is not the store's own (another fingerprint) is refused at open."""
    first = SqliteStore.open(tmp_path / "a.db", tmp_path / "a.key")
    put(first, active())
    first.close()
    SqliteStore.open(tmp_path / "b.db", tmp_path / "b.key").close()
    with pytest.raises(StoreError, match="sealed with the key of fingerprint"):
        SqliteStore.open(tmp_path / "a.db", tmp_path / "b.key")


def test_a_store_without_secrets_gets_a_new_key_file(tmp_path: Path) -> None:
    """Before anything is sealed (a new store, or only grace records), a key is simply made."""
    store = SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
    put(store, active(secret=None, state=State.GRACE, deadline=NOW))
    store.close()
    (tmp_path / "state.key").unlink()
    reopened = SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
    assert reopened.get(ALICE.entry_id) is not None


def test_the_database_and_its_wal_are_created_for_the_owner_only(tmp_path: Path) -> None:
    """Whatever the umask, state.db and its -wal are 0600: they name users."""
    old = os.umask(0o022)
    try:
        store = SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
        put(store, active())
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.glob("state.db*")}
        store.close()
    finally:
        os.umask(old)
    assert modes["state.db"] == 0o600 and modes["state.db-wal"] == 0o600


def test_a_store_from_before_fingerprints_checks_the_key_on_a_secret(tmp_path: Path) -> None:
    """The previous release kept no fingerprint: a wrong key file is refused (it opens no
    secret) and not adopted, so the right one still opens the store afterwards."""
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "store-v2"
    (tmp_path / "state.db").write_bytes((fixture / "state.db").read_bytes())
    (tmp_path / "right.key").write_bytes((fixture / "state.key").read_bytes())
    (tmp_path / "right.key").chmod(0o600)
    SqliteStore.open(tmp_path / "other.db", tmp_path / "wrong.key").close()  # a key of its own
    with pytest.raises(StoreError, match="does not open its secrets"):
        SqliteStore.open(tmp_path / "state.db", tmp_path / "wrong.key")
    SqliteStore.open(tmp_path / "state.db", tmp_path / "right.key").close()


def test_a_store_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    """A damaged file where the store should be (and no key file): one clear StoreError."""
    (tmp_path / "state.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot read the store"):
        SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
