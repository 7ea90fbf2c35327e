"""User administration (SPEC section 5) over the store: what the CLI's `user` commands do."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge.core.credentials import normalize_username
from bridge.core.policy import (
    Policy,
    admin_enroll,
    admin_import,
    admin_lock,
    admin_reset,
    admin_unlock,
    days_left,
    effective,
)
from bridge.core.totp import decode_secret, encode_secret, new_secret, provisioning_uri
from bridge.core.types import State, UserRecord
from bridge.store import SqliteStore


class AdminError(Exception):
    """A mistake by the admin (unknown user, bad file): one line, exit status 1."""


@dataclass(frozen=True, slots=True)
class Enrollment:
    """A freshly issued secret and what the user needs to add it to an app."""

    record: UserRecord
    secret: str
    uri: str


def canonical(raw: str) -> str:
    """The stored form of a user name, or AdminError."""
    name = normalize_username(raw)
    if name is None:
        raise AdminError(f"not a usable user name: {raw!r}")
    return name


def describe(
    record: UserRecord | None, username: str, now: int, exempt: frozenset[str]
) -> dict[str, Any]:
    """The JSON view of a user: state as it stands now, deadline, days left, failures."""
    if record is None:
        state, deadline, failures, lock_reason = State.EXEMPT, None, 0, None
    else:
        current = effective(record, now)
        state, deadline = current.state, current.deadline
        failures, lock_reason = current.failures, current.lock_reason
        if username in exempt:
            state = State.EXEMPT
    remaining = None
    if deadline is not None and state in (State.GRACE, State.PENDING):
        remaining = days_left(deadline, now)
    return {
        "username": username,
        "state": state.value,
        "deadline": _iso(deadline),
        "days_left": remaining,
        "failures": failures,
        "lock_reason": lock_reason.value if lock_reason else None,
        "enrolled": bool(record and record.confirmed),
    }


def _iso(timestamp: int | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class Admin:
    """The `user` commands, each one transaction against the store."""

    def __init__(
        self, store: SqliteStore, policy: Policy, issuer: str, exempt: frozenset[str]
    ) -> None:
        self.store = store
        self.policy = policy
        self.issuer = issuer
        self.exempt = frozenset(name for name in map(normalize_username, exempt) if name)

    def status(self, raw: str, now: int) -> dict[str, Any]:
        """One user's view; AdminError for a user the bridge does not know."""
        username = canonical(raw)
        record = self.store.get(username)
        if record is None and username not in self.exempt:
            raise AdminError(f"unknown user: {username}")
        return describe(record, username, now, self.exempt)

    def list(self, now: int) -> list[dict[str, Any]]:
        """Every known user's view."""
        return [describe(r, r.username, now, self.exempt) for r in self.store.list()]

    def enroll(self, raw: str, now: int) -> Enrollment:
        """Issue a new secret: the user is `pending` until the first code."""
        username = canonical(raw)
        secret = new_secret()
        record = self.store.update(
            username, lambda old: _same(admin_enroll(old, username, secret, now, self.policy))
        )
        uri = provisioning_uri(secret, username, self.issuer, self.policy.totp)
        return Enrollment(record, encode_secret(secret), uri)

    def lock(self, raw: str, now: int) -> UserRecord | None:
        """Lock by hand."""
        return self._change(raw, lambda r: admin_lock(r, now))

    def unlock(self, raw: str, now: int, days: int | None = None) -> UserRecord | None:
        """Clear the lock and failures (SPEC: active with a confirmed secret, else grace)."""
        if days is not None and days < 0:
            raise AdminError("--days must be 0 or more")
        return self._change(raw, lambda r: admin_unlock(r, now, self.policy, days))

    def reset(self, raw: str, now: int) -> UserRecord | None:
        """Forget the secret: back to grace with a fresh period."""
        return self._change(raw, lambda r: admin_reset(r, now, self.policy))

    def _change(
        self, raw: str, change: Callable[[UserRecord], UserRecord | None]
    ) -> UserRecord | None:
        username = canonical(raw)

        def apply(old: UserRecord | None) -> tuple[UserRecord | None, UserRecord | None]:
            if old is None:
                raise AdminError(f"unknown user: {username}")
            new = change(old)
            return new, new

        return self.store.update(username, apply)

    def import_csv(self, path: Path, now: int) -> int:
        """Import `username,secret` rows: all or nothing, imported users are `active`."""
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise AdminError(
                f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}"
            ) from exc
        records = list(parse_import(text, str(path), now))
        self.store.put_many(records)
        return len(records)


def _same(record: UserRecord) -> tuple[UserRecord, UserRecord]:
    return record, record


def parse_import(text: str, source: str, now: int) -> list[UserRecord]:
    """Rows of a `username,secret` CSV as active records; AdminError names the bad line."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header] != ["username", "secret"]:
        raise AdminError(f"{source}: line 1: the header must be exactly 'username,secret'")
    try:
        return _import_rows(reader, source, now)
    except csv.Error as exc:  # e.g. a field over the csv module's size limit
        raise AdminError(f"{source}: line {reader.line_num}: {exc}") from exc


def _import_rows(reader: Any, source: str, now: int) -> list[UserRecord]:
    seen: set[str] = set()
    records: list[UserRecord] = []
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise AdminError(f"{source}: line {line}: expected 2 fields, got {len(row)}")
        username = normalize_username(row[0])
        if username is None:
            raise AdminError(f"{source}: line {line}: not a usable user name")
        if username in seen:
            raise AdminError(f"{source}: line {line}: {username} appears twice")
        seen.add(username)
        try:
            secret = decode_secret(row[1])
        except ValueError as exc:
            raise AdminError(f"{source}: line {line}: secret: {exc}") from exc
        records.append(admin_import(None, username, secret, now))
    return records
