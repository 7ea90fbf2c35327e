"""The records a remote store's instance last read or wrote, so a login need not wait a
round trip before its bind.

On PostgreSQL, every login used to read its record (to choose the password to bind with)
and then write it: two turns of the store, two trips to the database, on the login's
path. The record known from this instance's last read or write of the entry is right
nearly always; where another instance or the CLI changed it since, nothing is decided on
it: a write is a compare-and-set on the row's version, a decision that writes nothing
has the version checked in the same statement, and a bind refused with a password chosen
from here is planned again from the database (`auth.py`). So a stale entry costs a
retry, never a wrong decision.

Secrets stay sealed here as in the table (never kept in the clear), entries expire, and
their number is bounded.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from bridge.core.types import UserRecord
from bridge.store.sealing import Sealer

LIMIT = 32_768  # entries; each ~0.5 kB
SECONDS = 300.0


class RecentRecords:
    """Records by entry, for `SECONDS`, at most `LIMIT` (the oldest dropped first).

    Thread-safe: the store's thread puts, the reactor gets.
    """

    def __init__(
        self,
        sealer: Sealer,
        *,
        limit: int = LIMIT,
        seconds: float = SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sealer = sealer
        self._limit = limit
        self._seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[UserRecord, bytes | None, float]] = OrderedDict()

    def get(self, entry_id: str) -> UserRecord | None:
        """The entry's record as last read or written here; None if not known (or old)."""
        with self._lock:
            item = self._items.get(entry_id)
            if item is None:
                return None
            record, sealed, expires = item
            if expires <= self._clock():
                del self._items[entry_id]
                return None
        if sealed is None:
            return record
        return replace(record, secret=self._sealer.open(entry_id, sealed))

    def put(self, record: UserRecord) -> None:
        """Remember `record` (as the row now is, version included)."""
        kept = replace(record, secret=None)
        sealed = self._seal(record)
        with self._lock:
            self._keep(kept, sealed)

    def put_written(self, after: UserRecord, seen_version: int) -> None:
        """Remember `after`, just written over version `seen_version` with the same secret,
        as the row now is (one version on). The secret kept sealed for `seen_version`
        serves again: a login's write need not seal it anew."""
        kept = replace(after, secret=None, version=seen_version + 1)
        with self._lock:
            item = self._items.get(after.entry_id)
            if item is not None and item[0].version == seen_version:
                self._keep(kept, item[1])
                return
        sealed = self._seal(after)
        with self._lock:
            self._keep(kept, sealed)

    def _seal(self, record: UserRecord) -> bytes | None:
        return None if record.secret is None else self._sealer.seal(record.entry_id, record.secret)

    def _keep(self, kept: UserRecord, sealed: bytes | None) -> None:
        """Store an entry as the newest (the oldest dropped beyond `limit`); under the lock."""
        self._items.pop(kept.entry_id, None)
        self._items[kept.entry_id] = (kept, sealed, self._clock() + self._seconds)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def forget(self, entry_id: str) -> None:
        """The entry was written some other way: its next login reads it."""
        with self._lock:
            self._items.pop(entry_id, None)

    def clear(self) -> None:
        """Forget every entry (the rows were replaced wholesale: a restore)."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
