"""Where users' MFA state lives: SQLite by default."""

from bridge.store.sqlite import SqliteStore, StoreError

__all__ = ["SqliteStore", "StoreError"]
