"""Where users' MFA state lives: SQLite by default, PostgreSQL when instances share it.

`RecordStore` is what the rest of the bridge uses; `open_store` picks the backend the
`store` section names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.config import StoreConfig
from bridge.store.records import Attached, RecordStore, StoreError, StoreUnavailableError
from bridge.store.sqlite import SqliteStore
from bridge.store.worker import StoreWorker

if TYPE_CHECKING:
    from bridge.store.link import StatementLink

__all__ = [
    "Attached",
    "RecordStore",
    "SqliteStore",
    "StoreError",
    "StoreUnavailableError",
    "open_store",
    "reactor_link",
]


def open_store(config: StoreConfig, id_attribute: str) -> RecordStore:
    """The configured store, opened (StoreError says what to fix when it cannot be)."""
    if config.url is not None:
        # Imported only here: psycopg and its libpq cost ~10 MB of memory that an
        # SQLite bridge does not need.
        from bridge.store.postgres import PostgresStore  # noqa: PLC0415

        return PostgresStore.open(
            config.url,
            config.key_file,
            password_file=config.password_file,
            id_attribute=id_attribute,
        )
    return SqliteStore.open(config.path, config.key_file, id_attribute)


def reactor_link(store: RecordStore, reactor: Any, worker: StoreWorker) -> StatementLink | None:
    """The connection the reactor drives itself for PostgreSQL's turns of one statement
    (`link.py`); None for SQLite, whose turns run inline."""
    if not store.remote:
        return None
    from bridge.store.link import StatementLink  # noqa: PLC0415 - imports psycopg
    from bridge.store.postgres import PostgresStore  # noqa: PLC0415

    return StatementLink(reactor, worker, store) if isinstance(store, PostgresStore) else None
