"""Where users' MFA state lives: SQLite by default."""

from bridge.store.sqlite import Attached, SqliteStore, StoreError

__all__ = ["Attached", "SqliteStore", "StoreError"]
