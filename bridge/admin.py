"""User administration (SPEC section 5) over the store: what the CLI's `user` commands do."""

from __future__ import annotations

import csv
import io
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bridge.audit import AuditLog
from bridge.core.credentials import normalize_username
from bridge.core.identity import name_key, name_keys
from bridge.core.policy import (
    Policy,
    admin_enroll,
    admin_import,
    admin_lock,
    admin_lock_unseen,
    admin_reset,
    admin_unlock,
    days_left,
    effective,
)
from bridge.core.totp import (
    LEGACY_SECRET_BYTES,
    MIN_SECRET_BYTES,
    TotpParams,
    decode_secret,
    encode_secret,
    new_secret,
    provisioning_uri,
)
from bridge.core.types import Identity, State, UserRecord
from bridge.directory import NoEntryIdError, UnavailableError
from bridge.store import RecordStore


class AdminError(Exception):
    """A mistake by the admin (unknown user, bad file): one line, exit status 1."""


class Resolver(Protocol):
    """Login names to directory entries (`DirectoryLookup`); raises UnavailableError."""

    def resolve(self, name: str) -> Identity | None:
        """The one entry `name` resolves to; None for none or several."""

    def resolve_many(self, names: list[str]) -> dict[str, Identity | None]:
        """`resolve` for many names at once."""

    def is_exempt(self, identity: Identity) -> bool:
        """Whether the entry is in an exempt group."""


@dataclass(frozen=True, slots=True)
class Changed:
    """What a `user` command that changes a record did: whose, and the record now."""

    username: str  # the entry's name
    record: UserRecord | None  # None: forgotten
    before: State | None = None  # the state it had, for the audit line


@dataclass(frozen=True, slots=True)
class Enrollment:
    """A freshly issued secret and what the user needs to add it to an app."""

    record: UserRecord
    secret: str
    uri: str


def canonical(raw: str) -> str:
    """The typed name in the form the directory is searched with, or AdminError."""
    name = normalize_username(raw)
    if name is None:
        raise AdminError(f"not a usable user name: {raw!r}")
    return name


def describe(
    record: UserRecord | None, username: str, now: int, *, exempt: bool = False
) -> dict[str, Any]:
    """The JSON view of a user: state as it stands now, deadline, days left, failures."""
    if record is None:
        state, deadline, failures, lock_reason = State.EXEMPT, None, 0, None
    else:
        current = effective(record, now)
        state, deadline = current.state, current.deadline
        failures, lock_reason = current.failures, current.lock_reason
        if exempt:
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
    """The `user` commands, each one transaction against the store.

    A name is resolved through the directory to its entry, whose record is the one shown
    or changed (SPEC section 8). `status` and `lock` also work by the stored name while
    the directory cannot be asked: a compromised account must not wait for it. What the
    admin should know besides the result (such a fallback, records merged) is collected
    in `notes`.
    """

    def __init__(
        self,
        store: RecordStore,
        policy: Policy,
        issuer: str,
        exempt: frozenset[str],
        directory: Resolver,
        *,
        audit: AuditLog | None = None,
        actor: str = "cli",
    ) -> None:
        self.store = store
        self.audit = audit or AuditLog(None)  # admin changes are audited (SPEC 12)
        self.actor = actor  # who ran the command: the audit line's client
        self.policy = policy
        self.issuer = issuer
        self.exempt = name_keys(exempt)
        self.directory = directory
        self.notes: list[str] = []

    def _entry(self, raw: str, now: int) -> Identity | None:
        """The entry `raw` names (None: the directory has none), its old records attached.

        While records of an earlier release wait, all of them are attached first: one may
        be this person's under another name, and must count before anything changes.
        """
        name = canonical(raw)
        self.attach_legacy(now)
        try:
            identity = self.directory.resolve(name)
        except UnavailableError as exc:
            raise _UnreachableError(str(exc)) from exc
        except NoEntryIdError as exc:
            raise AdminError(str(exc)) from exc
        if identity is not None:
            self._attach({name: identity}, now)
        return identity

    def _known(self, raw: str, now: int) -> Identity:
        """The entry `raw` names; AdminError when the directory has none or is down."""
        try:
            identity = self._entry(raw, now)
        except _UnreachableError as exc:
            raise AdminError(f"directory unreachable: {exc}") from exc
        if identity is None:
            raise AdminError(f"unknown user: {canonical(raw)} (no such entry in the directory)")
        return identity

    def _stored(self, raw: str, why: str) -> UserRecord | None:
        """The one record stored under the name `raw`, for when the directory cannot say."""
        records = self.store.named(raw)
        if len(records) > 1:
            raise AdminError(
                f"{len(records)} records are stored under the name {canonical(raw)} ({why})"
            )
        if records:
            self.notes.append(f"{why}: matched the stored name {records[0].username}")
            return records[0]
        return None

    def _is_exempt(self, identity: Identity) -> bool:
        if name_key(identity.name) in self.exempt:
            return True
        try:
            return self.directory.is_exempt(identity)
        except UnavailableError as exc:
            raise AdminError(f"directory unreachable: {exc}") from exc

    def status(self, raw: str, now: int) -> dict[str, Any]:
        """One user's view; AdminError for a user the bridge does not know."""
        try:
            identity = self._entry(raw, now)
        except _UnreachableError as exc:
            return self._stored_view(raw, f"directory unreachable: {exc}", now)
        if identity is None:
            return self._stored_view(raw, "not in the directory", now)
        record = self.store.get(identity.entry_id)
        exempt = self._is_exempt(identity)
        if record is None and not exempt:
            raise AdminError(
                f"unknown user: {identity.name} has no MFA record yet (one is made at the"
                " first login, or by enroll)"
            )
        return describe(record, identity.name, now, exempt=exempt)

    def _stored_view(self, raw: str, why: str, now: int) -> dict[str, Any]:
        """`status` by the stored name, when the directory cannot say which entry it is."""
        record = self._stored(raw, why)
        exempt = name_key(raw) in self.exempt
        if record is None and not exempt:
            raise AdminError(f"unknown user: {canonical(raw)} ({why})")
        return describe(record, record.username if record else canonical(raw), now, exempt=exempt)

    def list(self, now: int) -> list[dict[str, Any]]:
        """Every known user's view (records from before SPEC 8 attached first, if possible)."""
        self.attach_legacy(now)
        views = [describe(r, r.username, now) for r in self.store.list()]
        for name in self.store.legacy_names():
            views.append({**describe(None, name, now), "state": None, "unattached": True})
        return views

    def enroll(self, raw: str, now: int) -> Enrollment:
        """Issue a new secret: the user is `pending` until the first code."""
        owner = self._known(raw, now)
        secret = new_secret()
        before: list[State | None] = [None]

        def enroll(old: UserRecord | None) -> tuple[UserRecord, UserRecord]:
            before[0] = old.state if old is not None else None
            return _same(admin_enroll(old, owner, secret, now, self.policy))

        record = self.store.update(owner.entry_id, enroll)
        self.store.forget_rebinds(owner.entry_id)
        self._audited("enroll", Changed(owner.name, record, before[0]))
        uri = provisioning_uri(secret, owner.name, self.issuer, self.policy.totp)
        return Enrollment(record, encode_secret(secret), uri)

    def lock(self, raw: str, now: int) -> Changed:
        """Lock by hand; by the stored name when the directory cannot say whose it is.

        An entry the bridge has no record of yet gets a locked one. Without the directory,
        every record stored under the name is locked (and records of an earlier release
        not yet attached, where they wait: the lock wins when they are attached).
        """
        try:
            identity = self._entry(raw, now)
        except _UnreachableError as exc:
            why = f"directory unreachable: {exc}"
        else:
            if identity is not None:
                owner = identity
                self.store.forget_rebinds(owner.entry_id)
                locked = self.store.update(
                    owner.entry_id,
                    lambda old: _same_changed(
                        admin_lock(old, now) if old else admin_lock_unseen(owner, now), old
                    ),
                )
                return self._audited("lock", locked)
            why = "not in the directory"
        changed = [
            self._change(Identity(r.entry_id, r.username, ""), lambda r: admin_lock(r, now))
            for r in self.store.named(raw)
        ]
        changed += [Changed(r.username, r) for r in self.store.lock_legacy(canonical(raw), now)]
        if not changed:
            raise AdminError(f"unknown user: {canonical(raw)} ({why})")
        for each in changed:
            self._audited("lock", each, by_stored_name=True)
        names = ", ".join(c.username for c in changed)
        self.notes.append(f"{why}: locked by the stored name ({len(changed)} records: {names})")
        return changed[0]

    def unlock(self, raw: str, now: int, days: int | None = None) -> Changed:
        """Clear the lock and failures (SPEC: active with a confirmed secret, else grace)."""
        if days is not None and days < 0:
            raise AdminError("--days must be 0 or more")
        owner = self._known(raw, now)
        return self._audited(
            "unlock", self._change(owner, lambda r: admin_unlock(r, now, self.policy, days))
        )

    def reset(self, raw: str, now: int) -> Changed:
        """Forget the secret: back to grace with a fresh period."""
        owner = self._known(raw, now)
        return self._audited(
            "reset", self._change(owner, lambda r: admin_reset(r, now, self.policy))
        )

    def delete(self, raw: str, now: int) -> Changed:
        """Forget the user's MFA record altogether: secret, state, replay guard, devices.

        Their next login starts as a new user's (an enrollment period); `reset` keeps the
        replay guard and is what a lost phone calls for.
        """
        owner = self._known(raw, now)
        return self._audited("delete", self._change(owner, lambda _record: None))

    def _change(
        self, owner: Identity, change: Callable[[UserRecord], UserRecord | None]
    ) -> Changed:
        def apply(old: UserRecord | None) -> tuple[UserRecord | None, Changed]:
            if old is None:
                raise AdminError(f"unknown user: {owner.name} has no MFA record yet")
            new = change(old)
            return new, Changed(old.username, new, old.state)

        changed = self.store.update(owner.entry_id, apply)
        self.store.forget_rebinds(owner.entry_id)  # a bind an app repeats starts again
        return changed

    def import_csv(self, path: Path, now: int, *, replace: bool = False) -> int:
        """Import `username,secret` rows: all or nothing, imported users are `active`.

        A user who has a secret already keeps it unless `replace`: an import that would
        overwrite one is refused whole, naming who.
        """
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise AdminError(
                f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}"
            ) from exc
        rows = parse_import(text, str(path), self.policy.totp)
        self.attach_legacy(now)
        try:
            found = self.directory.resolve_many([row.username for row in rows])
        except UnavailableError as exc:
            raise AdminError(f"directory unreachable: {exc}") from exc
        except NoEntryIdError as exc:
            raise AdminError(str(exc)) from exc
        owners: dict[str, ImportRow] = {}
        changes = []
        for row in rows:
            owner = found.get(row.username)
            if owner is None:
                raise AdminError(
                    f"{path}: line {row.line}: {row.username} is not in the directory"
                    " (or names several entries)"
                )
            first = owners.setdefault(owner.entry_id, row)
            if first is not row:
                raise AdminError(
                    f"{path}: line {row.line}: {row.username} is the same person as"
                    f" {first.username} on line {first.line}"
                )
            changes.append((owner.entry_id, _importer(owner, row.secret, now)))
        self._attach({row.username: found[row.username] for row in rows}, now)
        if not replace:
            self._refuse_overwrites(path, rows, found)
        for row in rows:
            if row.warning is not None:
                self.notes.append(f"{path}: line {row.line}: {row.username}: {row.warning}")
        self.store.update_many(changes)
        for entry_id, _change in changes:
            self.store.forget_rebinds(entry_id)
        for row in rows:
            owner = found[row.username]
            assert owner is not None  # checked above
            self.audit.admin("import", owner.name, self.actor, after=State.ACTIVE, source=str(path))
        return len(changes)

    def _refuse_overwrites(
        self, path: Path, rows: Sequence[ImportRow], found: Mapping[str, Identity | None]
    ) -> None:
        """AdminError naming the rows whose user has a secret already (without --replace)."""
        owners = {row.username: found[row.username] for row in rows}
        records = self.store.get_many([o.entry_id for o in owners.values() if o is not None])
        taken = [
            f"{row.username} (line {row.line})"
            for row in rows
            if (owner := owners[row.username]) is not None
            and (record := records.get(owner.entry_id)) is not None
            and record.secret is not None
        ]
        if taken:
            shown = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
            raise AdminError(
                f"{path}: {len(taken)} users have a secret already: {shown};"
                " nothing imported (--replace overwrites their secrets)"
            )

    def _audited(self, action: str, changed: Changed, **details: object) -> Changed:
        """Write the audit line of an admin change; returns the change."""
        after = changed.record.state if changed.record is not None else None
        self.audit.admin(action, changed.username, self.actor, changed.before, after, **details)
        return changed

    def attach_legacy(self, now: int) -> None:
        """Attach records from before SPEC 8 to their entries, if the directory answers."""
        names = self.store.legacy_names()
        if not names:
            return
        try:
            found = self.directory.resolve_many(names)
        except (UnavailableError, NoEntryIdError) as exc:
            self.notes.append(
                f"{len(names)} records of an earlier release wait for the directory: {exc}"
            )
            return
        self._attach(found, now)

    def _attach(self, found: Mapping[str, Identity | None], now: int) -> None:
        """Attach old records under these names; merges of several are noted, one by one."""
        if not self.store.has_legacy:
            return
        count = 0
        for name, identity in found.items():
            if identity is not None:
                attached = self.store.attach(identity, (name, identity.name), now)
                if attached is not None:
                    count += 1
                    if len(attached.merged) > 1:
                        self.notes.append(attached.summary())
        if count > 1:
            self.notes.append(f"{count} records of an earlier release attached to their entries")


class _UnreachableError(Exception):
    """The directory could not be asked (its message says why)."""


def _same(record: UserRecord) -> tuple[UserRecord, UserRecord]:
    return record, record


def _same_changed(record: UserRecord, old: UserRecord | None) -> tuple[UserRecord, Changed]:
    return record, Changed(record.username, record, old.state if old is not None else None)


def _importer(
    owner: Identity, secret: bytes, now: int
) -> Callable[[UserRecord | None], tuple[UserRecord | None, None]]:
    return lambda old: (admin_import(old, owner, secret, now), None)


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One `username,secret` line of an import file."""

    line: int
    username: str
    secret: bytes = field(repr=False)
    warning: str | None = None  # a weak key, taken all the same


def read_secret(text: str, params: TotpParams) -> tuple[bytes, str | None]:
    """A key as admins migrate it: base32 (what apps show), an `otpauth://` URI (its
    period, digits and algorithm must be the bridge's), or `hex:` and the seed in hex.

    Keys of 80 bits (older pam_google_authenticator files) are taken with a warning;
    anything shorter, or not one of these, is a ValueError.
    """
    value = text.strip()
    if value.lower().startswith("otpauth://"):
        value = _uri_secret(value, params)
    if value.lower().startswith("hex:"):
        try:
            secret = bytes.fromhex(value[4:].strip())
        except ValueError:
            raise ValueError("not a hex seed after hex:") from None
    else:
        secret = decode_secret(value, shortest=LEGACY_SECRET_BYTES)
    if len(secret) < LEGACY_SECRET_BYTES:
        raise ValueError(f"key too short: {len(secret) * 8} bits, at least 128 needed")
    if len(secret) < MIN_SECRET_BYTES:
        return secret, (
            f"a {len(secret) * 8}-bit key (as older pam_google_authenticator files hold):"
            " RFC 4226 asks for 128 bits at least, so it is easier to guess; enroll the"
            " user again to replace it"
        )
    return secret, None


def _uri_secret(uri: str, params: TotpParams) -> str:
    """The base32 secret of an otpauth:// URI whose code settings are the bridge's."""
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc.lower() != "totp":
        raise ValueError(f"an otpauth URI of type {parts.netloc or 'none'}: only totp")
    query = {k.lower(): v for k, v in urllib.parse.parse_qsl(parts.query)}
    if "secret" not in query:
        raise ValueError("an otpauth URI without a secret")
    wanted = {"algorithm": "SHA1", "digits": str(params.digits), "period": str(params.step)}
    for name, value in wanted.items():
        given = query.get(name, value)
        if given.upper() != value:
            raise ValueError(f"an otpauth URI with {name}={given}: the bridge uses {value}")
    return query["secret"]


def parse_import(text: str, source: str, params: TotpParams | None = None) -> list[ImportRow]:
    """Rows of a `username,secret` CSV; AdminError names the bad line."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header] != ["username", "secret"]:
        raise AdminError(f"{source}: line 1: the header must be exactly 'username,secret'")
    try:
        return _import_rows(reader, source, params or TotpParams())
    except csv.Error as exc:  # e.g. a field over the csv module's size limit
        raise AdminError(f"{source}: line {reader.line_num}: {exc}") from exc


def _import_rows(reader: Any, source: str, params: TotpParams) -> list[ImportRow]:
    seen: set[str] = set()
    rows: list[ImportRow] = []
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
            secret, warning = read_secret(row[1], params)
        except ValueError as exc:
            raise AdminError(f"{source}: line {line}: secret: {exc}") from exc
        rows.append(ImportRow(line, username, secret, warning))
    return rows
