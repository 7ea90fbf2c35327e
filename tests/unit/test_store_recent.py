"""Records a remote store's instance last saw: sealed, bounded, expiring."""

from __future__ import annotations

from bridge.core.types import State, UserRecord
from bridge.store.recent import RecentRecords
from bridge.store.sealing import Sealer

SECRET = b"twenty bytes of key!"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(n: int, secret: bytes | None = SECRET) -> UserRecord:
    return UserRecord(
        f"user{n}",
        State.ACTIVE if secret else State.GRACE,
        secret=secret,
        created=1,
        updated=1,
        version=7,
        entry_id=f"entry-{n}",
    )


def recent(**kw: object) -> tuple[RecentRecords, Clock]:
    clock = Clock()
    return RecentRecords(Sealer(b"s" * 32), clock=clock, **kw), clock  # type: ignore[arg-type]


def test_a_record_comes_back_whole_but_its_key_is_kept_sealed() -> None:
    cache, _clock = recent()
    cache.put(record(1))
    cache.put(record(2, secret=None))
    assert cache.get("entry-1") == record(1)
    assert cache.get("entry-2") == record(2, secret=None)
    assert cache.get("entry-3") is None
    kept = repr(cache._items).encode() + b"".join(s or b"" for _r, s, _e in cache._items.values())
    assert SECRET not in kept
    assert SECRET.hex().encode() not in kept


def test_records_expire_and_the_oldest_go_first_when_full() -> None:
    cache, clock = recent(limit=3, seconds=60)
    for n in range(3):
        cache.put(record(n))
    clock.now += 30
    cache.put(record(0))  # written again: the newest now
    cache.put(record(3))  # full: entry-1, the oldest, goes
    assert [cache.get(f"entry-{n}") is not None for n in range(4)] == [True, False, True, True]
    clock.now += 31  # entry-2 was put 61 s ago, entry-0 and entry-3 31 s ago
    assert cache.get("entry-2") is None
    assert cache.get("entry-0") == record(0)
    assert len(cache) == 2


def test_forget_and_clear() -> None:
    cache, _clock = recent()
    for n in range(3):
        cache.put(record(n))
    cache.forget("entry-1")
    cache.forget("entry-9")  # not known: nothing to do
    assert [cache.get(f"entry-{n}") is not None for n in range(3)] == [True, False, True]
    cache.clear()
    assert len(cache) == 0


def test_a_write_over_the_kept_version_keeps_its_sealed_key() -> None:
    cache, _clock = recent()
    cache.put(record(1))
    sealed = cache._items["entry-1"][1]
    cache.put_written(record(1).evolve(last_step=99, failures=0), seen_version=7)
    assert cache.get("entry-1") == record(1).evolve(last_step=99, version=8)
    assert cache._items["entry-1"][1] is sealed  # not sealed again


def test_a_write_over_another_version_is_kept_as_written() -> None:
    cache, _clock = recent()
    cache.put(record(1).evolve(version=9))  # another writer's version is kept here
    cache.put_written(record(1).evolve(last_step=5), seen_version=7)
    assert cache.get("entry-1") == record(1).evolve(last_step=5, version=8)
    cache.put_written(record(2), seen_version=7)  # nothing kept: sealed now
    assert cache.get("entry-2") == record(2).evolve(version=8)
