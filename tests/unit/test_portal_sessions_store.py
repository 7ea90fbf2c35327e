"""Portal sessions kept in the store: shared by instances, nothing usable stored in clear."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bridge.core.types import Identity
from bridge.portal.sessions import Sessions
from bridge.store import SqliteStore

OWNER = Identity("entry-1", "alice", "uid=alice,dc=example,dc=org")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_is_found_by_another_instance_and_ends_for_both(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
    other = SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
    mine, theirs = Sessions(clock, 300, 3600, store), Sessions(clock, 300, 3600, other)
    session = mine.start(OWNER)
    session.new_secret = b"s" * 20
    session.exempt = True
    mine.save(session)
    clock.now += 100
    found = theirs.get(session.id)
    assert found is not None
    assert (found.owner, found.csrf, found.new_secret, found.exempt) == (
        OWNER,
        session.csrf,
        b"s" * 20,
        True,
    )
    theirs.end(session.id)
    assert mine.get(session.id) is None


def test_the_cookie_and_the_set_up_secret_are_not_in_the_database(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
    sessions = Sessions(clock, 300, 3600, store)
    session = sessions.start(OWNER)
    session.new_secret = b"\x01\x02\x03secret-bytes-here!!"
    sessions.save(session)
    store.close()
    raw = b"".join(
        (tmp_path / name).read_bytes()
        for name in ("state.db", "state.db-wal")
        if (tmp_path / name).exists()
    )
    assert session.id.encode() not in raw
    assert b"secret-bytes-here" not in raw


def test_idle_and_old_sessions_end_and_are_purged(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore.open(tmp_path / "state.db", tmp_path / "state.key")
    sessions = Sessions(clock, 300, 3600, store)
    idle = sessions.start(OWNER)
    clock.now += 300
    assert sessions.get(idle.id) is None
    kept = sessions.start(OWNER)
    for _ in range(13):  # seen every 290 s: never idle, but the lifetime ends it
        clock.now += 290
        if sessions.get(kept.id) is None:
            break
    assert clock.now - kept.started >= 3600
    assert sessions.get(kept.id) is None
    clock.now += 1000
    sessions.start(OWNER)  # a write purges the sessions idle since long ago
    db = sqlite3.connect(tmp_path / "state.db")
    assert db.execute("SELECT count(*) FROM portal_sessions").fetchone() == (1,)
    db.close()
