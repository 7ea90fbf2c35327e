"""Who a record belongs to: directory identifiers as text, names as lookup keys, merges.

Records are keyed by the directory entry, never by the name typed (SPEC section 8). The
functions here are pure: the directory adapter hands over raw attribute values, the store
hands over records, and what to keep is decided here.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable

from bridge.core.credentials import normalize_username
from bridge.core.policy import effective, replay_guard
from bridge.core.totp import guard_tag
from bridge.core.types import Identity, LockReason, State, UserRecord

# Attributes holding a Microsoft GUID (16 bytes, the first three groups little-endian).
_GUID_ATTRIBUTES = frozenset({"objectguid", "msds-consistencyguid"})

# Which record survives when several turn out to be one person: the strictest (`merge`).
_STRICTNESS = {State.GRACE: 0, State.PENDING: 2, State.ACTIVE: 3}


def id_text(attribute: str, raw: bytes) -> str | None:
    """A stable text form of an entry identifier as the directory sent it; None if empty.

    Active Directory's objectGUID is binary: it becomes the GUID as AD's own tools show
    it (`uuid.UUID(bytes_le=...)`). Text identifiers (entryUUID, nsUniqueId, ipaUniqueID)
    are kept as sent; any other binary value is base64 with a `b64:` prefix.
    """
    if not raw:
        return None
    if attribute.lower() in _GUID_ATTRIBUTES and len(raw) == 16:
        return str(uuid.UUID(bytes_le=raw))
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = ""
    if text and text.isprintable():
        return text
    return "b64:" + base64.b64encode(raw).decode("ascii")


def name_key(name: str) -> str | None:
    """A name as the directory would compare it: case folded, runs of spaces as one.

    RFC 4518 treats inner runs of spaces (and no-break spaces) as one; this is the key an
    admin's lookup by a stored name uses when the directory cannot be asked.
    """
    folded = normalize_username(name)  # NFKC already: a no-break space is a space
    return " ".join(folded.split()) if folded is not None else None


def name_keys(names: Iterable[str]) -> frozenset[str]:
    """Names as keys (`mfa.exempt_users`), to compare an entry's name with."""
    return frozenset(key for key in map(name_key, names) if key)


def merge(records: Iterable[UserRecord], owner: Identity, now: int) -> UserRecord:
    """One record from several that turn out to belong to one entry: the strictest wins.

    States are judged as they stand at `now`: locked (by an admin or failures) > active >
    pending > an enrollment period run out > grace. A period that ran out under one name
    does not outrank an enrollment made under another: that person did enroll. Among
    equals, the record under the entry's own name, then the newest. Nothing enrolled is
    dropped: the merged record keeps the best secret any of them holds (a confirmed one
    first) with its replay guard, so unlocking a merged lock gives back the enrollment.
    """
    pool = list(records)
    if not pool:
        raise ValueError("nothing to merge")
    own = name_key(owner.name)

    def order(record: UserRecord) -> tuple[int, bool, int]:
        return _rank(effective(record, now)), name_key(record.username) == own, record.updated

    winner = max(pool, key=order)
    merged = effective(winner, now)
    holders = [r for r in pool if r.secret is not None]
    if holders:
        keeper = max(holders, key=lambda r: (r.confirmed, order(r)))
        merged = merged.evolve(secret=keeper.secret, confirmed=keeper.confirmed)
    if merged.state in (State.GRACE, State.PENDING):
        deadlines = [
            r.deadline
            for r in pool
            if r.deadline is not None and r.state in (State.GRACE, State.PENDING)
        ]
        merged = merged.evolve(deadline=min(deadlines, default=merged.deadline))
    secret = merged.secret
    steps = [] if secret is None else [replay_guard(r, secret) for r in pool]
    used = [step for step in steps if step is not None]
    return merged.evolve(
        entry_id=owner.entry_id,
        username=owner.name,
        last_step=max(used, default=None),
        step_key=guard_tag(secret) if used and secret is not None else None,
        created=min(r.created for r in pool),
    )


def _rank(current: UserRecord) -> int:
    """How strict a record is, as it stands (see `merge`)."""
    if current.state is State.LOCKED:
        return 1 if current.lock_reason is LockReason.ENROLLMENT_EXPIRED else 4
    return _STRICTNESS.get(current.state, 0)
