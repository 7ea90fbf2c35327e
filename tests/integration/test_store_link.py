"""PostgreSQL's turns of one statement, sent and answered on a real reactor (`link.py`),
against a real server: what the link writes, what it leaves to the store's thread, and
how it fails and comes back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.epollreactor import EPollReactor
from twisted.python.failure import Failure

from bridge.core.types import UserRecord
from bridge.store import StoreUnavailableError, link, reactor_link
from bridge.store.batching import StoreBatcher
from bridge.store.link import StatementLink
from bridge.store.postgres import PostgresStore
from bridge.store.worker import StoreWorker
from tests.integration.test_postgres_store import counted, put, record_of, spend
from tests.postgres import Postgres


class Daemon:
    """A store, its thread, its link and its batcher on a reactor of the test's own."""

    def __init__(self, url: str, key: Path) -> None:
        self.reactor = EPollReactor()
        self.store = PostgresStore.open(url, key)
        self.worker = StoreWorker(self.reactor, threaded=True)
        made = reactor_link(self.store, self.reactor, self.worker)
        assert isinstance(made, StatementLink)
        self.link = made
        self.writes = StoreBatcher(self.store, self.reactor, self.worker, self.link)

    def wait(self, deferred: Deferred[Any], seconds: float = 10.0) -> Any:
        """Turn the reactor until `deferred` fires; its result (or its exception)."""
        results: list[Any] = []
        deferred.addBoth(results.append)
        deadline = time.monotonic() + seconds
        while not results:
            assert time.monotonic() < deadline, "no answer"
            self.reactor.iterate(0.005)
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def open_link(self) -> None:
        """Turn the reactor until the link is connected (it opens on first use)."""
        deadline = time.monotonic() + 10
        while not self.link.ready:
            assert time.monotonic() < deadline, "the link did not open"
            self.reactor.iterate(0.005)

    def login(self, entry_id: str, seen: UserRecord | None, change: Any, early: bool = True) -> Any:
        return self.wait(self.writes.update_seen(entry_id, seen, change, early=early))

    def close(self) -> None:
        self.link.close()
        self.worker.stop()
        self.store.close()


@pytest.fixture
def url(postgres: Postgres) -> str:
    return postgres.url(f"l{uuid.uuid4().hex[:12]}")


@pytest.fixture
def daemon(url: str, tmp_path: Path) -> Iterator[Daemon]:
    made = Daemon(url, tmp_path / "state.key")
    yield made
    made.close()


@pytest.fixture
def other(url: str, tmp_path: Path, daemon: Daemon) -> Iterator[PostgresStore]:
    """Another instance on the same database."""
    store = PostgresStore.open(url, tmp_path / "state.key")
    yield store
    store.close()


def steps(store: PostgresStore, count: int) -> dict[str, int | None]:
    found = store.get_many([f"entry-{i}" for i in range(count)])
    return {entry: record.last_step for entry, record in sorted(found.items())}


def test_decisions_made_when_queued_are_one_statement_on_the_link(
    daemon: Daemon, other: PostgresStore
) -> None:
    """Three logins in one turn: written by one statement from the reactor, nothing on the
    store's thread; the rows move one version on, and the records kept are the rows."""
    for i in range(3):
        put(daemon.store, record_of(i))
    seen = daemon.store.get_many([f"entry-{i}" for i in range(3)])
    daemon.open_link()
    on_thread = counted(daemon.store)

    pending = [
        daemon.writes.update_seen(f"entry-{i}", seen[f"entry-{i}"], spend(7), early=True)
        for i in range(3)
    ]
    assert [daemon.wait(d) for d in pending] == ["accepted"] * 3
    assert (daemon.link.turns, on_thread) == (1, [])
    assert steps(other, 3) == {"entry-0": 7, "entry-1": 7, "entry-2": 7}
    for i in range(3):
        now = other.get(f"entry-{i}")
        assert now is not None and now.version == seen[f"entry-{i}"].version + 1
        assert daemon.store.recent(f"entry-{i}") == now
    # The same code again: a decision that writes nothing, its version checked in the turn.
    assert daemon.login("entry-0", daemon.store.recent("entry-0"), spend(7)) == "replay"
    assert (daemon.link.turns, on_thread) == (2, [])


def test_a_decision_another_writer_overtook_is_made_again_on_the_store_thread(
    daemon: Daemon, other: PostgresStore
) -> None:
    """The record kept was changed by another instance: a write loses its compare-and-set
    and a decision that writes nothing loses its version check; both are decided again
    on the row as it is, on the store's thread."""
    for i in range(2):
        put(daemon.store, record_of(i))
    seen = daemon.store.get_many(["entry-0", "entry-1"])
    daemon.open_link()
    put(other, record_of(0, last_step=9))  # the other instance spent step 9
    put(other, record_of(1).evolve(failures=2))
    on_thread = counted(daemon.store)

    def failures(current: UserRecord | None) -> tuple[UserRecord | None, int | None]:
        return current, current.failures if current is not None else None  # writes nothing

    assert daemon.login("entry-0", seen["entry-0"], spend(8)) == "replay"  # 9 > 8: spent
    assert daemon.login("entry-1", seen["entry-1"], failures) == 2
    assert daemon.link.turns == 2
    assert len(on_thread) >= 2  # each decided again by reading the row
    assert steps(other, 1) == {"entry-0": 9}


def test_turns_the_link_cannot_carry_go_to_the_store_thread(
    daemon: Daemon, other: PostgresStore
) -> None:
    """A decision still to be made (it may read the store) and a first record (an insert)
    are not the link's: the store's thread runs them, as on a store without a link."""
    put(daemon.store, record_of(0))
    seen = daemon.store.get("entry-0")
    daemon.open_link()
    assert daemon.login("entry-0", seen, spend(3), early=False) == "accepted"
    fresh = record_of(5)
    assert daemon.login("entry-5", None, lambda _none: (fresh, "made")) == "made"
    assert daemon.link.turns == 0
    assert steps(other, 1) == {"entry-0": 3}
    made = other.get("entry-5")
    assert made is not None and made.secret == fresh.secret


def test_a_statement_without_an_answer_fails_its_logins_and_the_link_comes_back(
    daemon: Daemon, other: PostgresStore, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row held by another transaction keeps the statement waiting past the link's
    timeout: the login fails (never accepted without its write), the link is dropped and
    the next turns go to the thread until the link is open again."""
    monkeypatch.setattr(link, "TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(link, "RETRY_SECONDS", 0.0)
    for i in range(2):
        put(daemon.store, record_of(i))
    seen = daemon.store.get_many(["entry-0", "entry-1"])
    daemon.open_link()
    with psycopg.connect(url) as holder:
        holder.execute("SELECT 1 FROM users WHERE entry_id = 'entry-0' FOR UPDATE")
        with pytest.raises(StoreUnavailableError, match=r"no answer in 0\.3 s"):
            daemon.login("entry-0", seen["entry-0"], spend(4))
        assert not daemon.link.ready  # dropped; opening again
        holder.rollback()
    daemon.open_link()
    assert daemon.login("entry-1", seen["entry-1"], spend(4)) == "accepted"
    assert daemon.link.turns == 2
    assert steps(other, 2)["entry-1"] == 4


def test_the_database_restarted_fails_logins_then_the_link_carries_turns_again(
    daemon: Daemon, postgres: Postgres, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link, "RETRY_SECONDS", 0.0)
    put(daemon.store, record_of(0))
    seen = daemon.store.get("entry-0")
    daemon.open_link()
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailableError):
            daemon.login("entry-0", seen, spend(4))
    finally:
        postgres.start()
    daemon.open_link()
    turns = daemon.link.turns
    assert daemon.login("entry-0", seen, spend(5)) == "accepted"
    assert daemon.link.turns == turns + 1
    after = PostgresStore.open(url, tmp_path / "state.key")
    assert steps(after, 1) == {"entry-0": 5}
    after.close()
