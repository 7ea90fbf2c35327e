"""Attaching a previous release's records at start (bridge/upgrade.py), on a real store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from bridge.core.types import Identity, State
from bridge.directory import BindResult, BindStatus
from bridge.store import SqliteStore
from bridge.store.sealing import Sealer
from bridge.upgrade import RETRY_SECONDS, Upgrade

KEY = bytes(range(32))
SECRET = b"s" * 20
NOW = 1_800_000_000
ALICE = Identity("id-alice", "alice", "uid=alice,ou=people,dc=example,dc=org")
BOB = Identity("id-bob", "bob", "uid=bob,ou=people,dc=example,dc=org")


def old_store(path: Path) -> SqliteStore:
    """A schema-2 store as the previous release wrote it: alice twice, bob, ghost."""
    sealer = Sealer(KEY)
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE users (username TEXT PRIMARY KEY, state TEXT NOT NULL, deadline INTEGER,"
        " failures INTEGER NOT NULL DEFAULT 0, last_step INTEGER, secret BLOB, lock_reason TEXT,"
        " confirmed INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL, updated INTEGER NOT"
        " NULL, version INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
    )
    rows = [
        ("alice", "active", None, 0, 7, sealer.seal("alice", SECRET), None, 1, 1, 2, 1),
        ("alice@example.org", "grace", NOW + 99, 0, None, None, None, 0, 3, 3, 1),
        ("bob", "locked", None, 0, None, None, "admin", 0, 1, 1, 1),
        ("ghost", "grace", NOW + 99, 0, None, None, None, 0, 1, 1, 1),
    ]
    db.executemany("INSERT INTO users VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    return SqliteStore(path, Sealer(KEY))


class Directory:
    """Answers `resolve` from a table; names in `down` are UNAVAILABLE until it is emptied."""

    def __init__(self) -> None:
        self.entries = {"alice": ALICE, "alice@example.org": ALICE, "bob": BOB}
        self.down: set[str] = set()
        self.asked: list[str] = []

    def resolve(self, name: str) -> Deferred[BindResult]:
        self.asked.append(name)
        if name in self.down:
            return succeed(BindResult(BindStatus.UNAVAILABLE))
        identity = self.entries.get(name)
        if identity is None:
            return succeed(BindResult(BindStatus.UNKNOWN_USER))
        return succeed(BindResult(BindStatus.OK, identity))


def test_every_old_record_is_attached_and_merged(tmp_path: Path) -> None:
    """Both of alice's records become one active record with her key; ghost stays waiting."""
    store = old_store(tmp_path / "s.db")
    done: list[bool] = []
    upgrade = Upgrade(store, Directory(), Clock(), lambda: done.append(True))  # type: ignore[arg-type]
    upgrade.start()
    assert done == [True] and upgrade.attached == 3
    alice = store.get(ALICE.entry_id)
    assert alice is not None
    assert (alice.state, alice.secret, alice.last_step) == (State.ACTIVE, SECRET, 7)
    bob = store.get(BOB.entry_id)
    assert bob is not None and bob.state is State.LOCKED
    assert store.legacy_names() == ["ghost"]


def test_names_the_directory_could_not_answer_are_asked_again(tmp_path: Path) -> None:
    """An UNAVAILABLE answer is retried after RETRY_SECONDS; done only once all answered."""
    store = old_store(tmp_path / "s.db")
    directory = Directory()
    directory.down = {"alice@example.org"}
    clock = Clock()
    done: list[bool] = []
    Upgrade(store, directory, clock, lambda: done.append(True)).start()  # type: ignore[arg-type]
    assert done == [] and "alice@example.org" in store.legacy_names()
    clock.advance(RETRY_SECONDS)
    assert done == [] and directory.asked.count("alice@example.org") == 2
    directory.down = set()
    clock.advance(RETRY_SECONDS)
    assert done == [True]
    assert store.legacy_names() == ["ghost"]


def test_start_runs_once(tmp_path: Path) -> None:
    """A second start (the directory answering again) asks nothing more."""
    store = old_store(tmp_path / "s.db")
    directory = Directory()
    upgrade = Upgrade(store, directory, Clock(), lambda: None)  # type: ignore[arg-type]
    upgrade.start()
    asked = list(directory.asked)
    upgrade.start()
    assert directory.asked == asked
