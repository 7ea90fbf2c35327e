"""The MFA state machine of SPEC section 2, as pure functions of a record and the time.

Nothing here reads a clock, a socket or a file: `now` is integer Unix seconds, and every
function returns the new record for the caller to store. The login is decided in two
steps around the one directory bind: `plan_attempt` chooses which password to bind with,
`conclude` decides once the password is known to be right.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from bridge.core.credentials import split_appended
from bridge.core.totp import TotpParams, guard_tag, match_step
from bridge.core.types import Decision, Identity, LockReason, Outcome, Reason, State, UserRecord

DAY = 86_400
# A reject (RADIUS) or failed sign-in (portal) leaves its delay x (1 + up to this) after the
# request came, at random: the time it took to decide, which differs between an unknown
# user and a wrong password, stays hidden in the spread.
REJECT_SPREAD = 0.1


class Mode(StrEnum):
    """How a RADIUS client delivers the code (the LDAP proxy always appends)."""

    APPEND = "append"
    CHALLENGE = "challenge"
    AUTO = "auto"


@dataclass(frozen=True, slots=True)
class Policy:
    """The `mfa` settings the state machine needs."""

    enrollment_days: int = 14
    max_failures: int = 5
    totp: TotpParams = field(default_factory=TotpParams)


@dataclass(frozen=True, slots=True)
class Access:
    """What the client a login came through allows (SPEC 11), found out by the caller."""

    allowed: bool = True  # in one of the client's allowed_groups, or it has none
    mfa: bool = True  # False: the client's `mfa: off`, the password alone decides
    remembered: bool = False  # this device was accepted with a code lately


EVERYONE = Access()


@dataclass(frozen=True, slots=True)
class Attempt:
    """The password to bind with, and the code that came with it (if any)."""

    password: str = field(repr=False)
    code: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision and the record to store after it (None: no record; `changed`: write it)."""

    decision: Decision
    record: UserRecord | None
    changed: bool


def days_left(deadline: int, now: int) -> int:
    """Whole days until `deadline`, rounded up (SPEC section 5); 0 once it has passed."""
    return max(0, -(-(deadline - now) // DAY))


def effective(record: UserRecord, now: int) -> UserRecord:
    """The record as it stands at `now`: an enrollment period that ran out is a lock."""
    expired = record.deadline is not None and now >= record.deadline
    if record.state in (State.GRACE, State.PENDING) and expired:
        return record.evolve(
            state=State.LOCKED, lock_reason=LockReason.ENROLLMENT_EXPIRED, updated=now
        )
    return record


def plan_attempt(
    record: UserRecord | None, field: str, mode: Mode, now: int, policy: Policy
) -> Attempt:
    """Choose the one password to bind with, so a login costs at most one bind.

    Only a user with a secret can have appended a code. A trailing code that is valid now
    is taken as the code; in `append` mode a trailing code is taken even when wrong (so
    that wrong codes count towards the lock), in `auto` mode the whole field is then
    tried as the password (it may end in digits) and a right one draws the challenge.
    """
    if mode is Mode.CHALLENGE or record is None or record.secret is None:
        return Attempt(field)
    split = split_appended(field, policy.totp.digits)
    if split is None:
        return Attempt(field)
    if mode is Mode.APPEND or match_step(record.secret, split.code, now, policy.totp) is not None:
        return Attempt(split.password, split.code)
    return Attempt(field)


def plan_given(record: UserRecord | None, password: str, code: str) -> Attempt:
    """The attempt when the code comes in a field of its own (the portal's form).

    Only a user with a secret can have a code: for anyone else it is ignored, so that
    it never reaches the directory as part of a password.
    """
    if record is None or record.secret is None:
        return Attempt(password)
    return Attempt(password, code)


def conclude(
    record: UserRecord | None,
    owner: Identity,
    attempt: Attempt,
    *,
    exempt: bool,
    can_challenge: bool,
    now: int,
    policy: Policy,
    access: Access = EVERYONE,
) -> Verdict:
    """Decide a login whose password the directory has just accepted.

    `owner` is the entry the login resolved to; its record is `record` (None: none yet).
    The client's `access` comes first: a user outside its allowed groups is refused
    whatever their state; `mfa: off` accepts without touching the record; a remembered
    device of an active user is accepted without a code (one sent is not checked).
    """
    username = owner.name
    before = record.state if record else None
    seen = record
    if record is not None and record.username != username:  # renamed in the directory
        record = record.evolve(username=username)
    if not access.allowed:
        decision = Decision(Outcome.REJECT, Reason.NOT_ALLOWED, username, before, before)
        return Verdict(_authenticated(decision), record, changed=record is not seen)
    if not access.mfa:
        decision = Decision(Outcome.ACCEPT, Reason.MFA_OFF, username, before, before)
        return Verdict(_authenticated(decision), record, changed=record is not seen)
    if exempt:
        decision = Decision(Outcome.ACCEPT, Reason.EXEMPT, username, before, State.EXEMPT)
        return Verdict(_authenticated(decision), record, changed=record is not seen)
    if record is None:
        if policy.enrollment_days <= 0:
            decision = Decision(Outcome.REJECT, Reason.NOT_ENROLLED, username, None, None)
            return Verdict(_authenticated(decision), None, changed=False)
        record = UserRecord(
            username,
            State.GRACE,
            deadline=now + policy.enrollment_days * DAY,
            created=now,
            updated=now,
            entry_id=owner.entry_id,
        )
        return _grace_accept(record, None, now, changed=True)
    current = effective(record, now)
    changed = current is not seen
    if current.state is State.LOCKED:
        return Verdict(_locked(current, before), current, changed)
    if access.remembered and current.state is State.ACTIVE:
        decision = Decision(Outcome.ACCEPT, Reason.REMEMBERED, username, before, State.ACTIVE)
        return Verdict(_authenticated(decision), current, changed)
    if attempt.code is not None and current.secret is not None:
        return check_code(current, attempt.code, now=now, policy=policy, before=before)
    if current.state is State.GRACE or (
        current.state is State.PENDING and current.deadline is not None
    ):
        return _grace_accept(current, before, now, changed=changed)
    reason = Reason.CHALLENGED if can_challenge else Reason.CODE_REQUIRED
    outcome = Outcome.CHALLENGE if can_challenge else Outcome.REJECT
    decision = Decision(outcome, reason, username, before, current.state)
    return Verdict(_authenticated(decision), current, changed)


def conclude_rebind(record: UserRecord, owner: Identity, now: int) -> Verdict:
    """Decide a bind an app makes again with the password+code it was accepted with.

    The password was just bound at the directory again; the code is not checked (it was
    spent by the first bind) and counts as nothing. Only an active user: a lock, or any
    other state since (reset, new key), ends it.
    """
    current = effective(record, now)
    if current.state is State.LOCKED:
        return Verdict(_locked(current, record.state), current, current is not record)
    if current.state is not State.ACTIVE:
        state = current.state
        decision = Decision(Outcome.REJECT, Reason.CODE_REQUIRED, owner.name, state, state)
        return Verdict(_authenticated(decision), current, current is not record)
    decision = Decision(Outcome.ACCEPT, Reason.REBIND, owner.name, State.ACTIVE, State.ACTIVE)
    return Verdict(_authenticated(decision), current, changed=False)


def check_code(
    record: UserRecord, code: str, *, now: int, policy: Policy, before: State | None = None
) -> Verdict:
    """Decide a code from a user whose password is right (appended, or after a challenge).

    A code is accepted once per step: a step at or below the last one used is a replay.
    Wrong and replayed codes count towards `max_failures`; a success clears the count.
    """
    before = before or record.state
    current = effective(record, now)
    if current.state is State.LOCKED:
        return Verdict(_locked(current, before), current, current is not record)
    step = None
    if current.secret is not None:
        step = match_step(current.secret, code, now, policy.totp)
    if step is None or (current.last_step is not None and step <= current.last_step):
        reason = Reason.WRONG_CODE if step is None else Reason.REPLAY
        return _failure(current, before, reason, now, policy)
    activated = current.state is State.PENDING
    after = current.evolve(
        state=State.ACTIVE,
        failures=0,
        last_step=step,
        step_key=_tag(current.secret),
        deadline=None,
        lock_reason=None,
        confirmed=True,
        updated=now,
    )
    reason = Reason.ACTIVATED if activated else Reason.ACCEPTED
    decision = Decision(Outcome.ACCEPT, reason, record.username, before, State.ACTIVE)
    return Verdict(_authenticated(decision), after, changed=True)


def _failure(
    record: UserRecord, before: State | None, reason: Reason, now: int, policy: Policy
) -> Verdict:
    failures = record.failures + 1
    if failures >= policy.max_failures:
        locked = record.evolve(
            state=State.LOCKED, failures=failures, lock_reason=LockReason.FAILURES, updated=now
        )
        decision = Decision(
            Outcome.REJECT,
            reason,
            record.username,
            before,
            State.LOCKED,
            lock_reason=LockReason.FAILURES,
        )
        return Verdict(_authenticated(decision), locked, changed=True)
    after = record.evolve(failures=failures, updated=now)
    decision = Decision(Outcome.REJECT, reason, record.username, before, record.state)
    return Verdict(_authenticated(decision), after, changed=True)


def _grace_accept(record: UserRecord, before: State | None, now: int, *, changed: bool) -> Verdict:
    assert record.deadline is not None
    decision = Decision(
        Outcome.ACCEPT,
        Reason.GRACE,
        record.username,
        before,
        record.state,
        days_left=days_left(record.deadline, now),
    )
    return Verdict(_authenticated(decision), record, changed)


def _locked(record: UserRecord, before: State | None) -> Decision:
    return _authenticated(
        Decision(
            Outcome.REJECT,
            Reason.LOCKED,
            record.username,
            before,
            State.LOCKED,
            lock_reason=record.lock_reason,
        )
    )


def _authenticated(decision: Decision) -> Decision:
    """Mark a decision as made after a correct password (the caller may learn the state)."""
    return replace(decision, password_ok=True)


def rejected(username: str, reason: Reason, record: UserRecord | None = None) -> Decision:
    """A reject before the password was known to be right: the caller learns nothing."""
    state = record.state if record else None
    return Decision(Outcome.REJECT, reason, username, state, state)


# Admin operations (SPEC section 5). Each returns the new record, or None to forget it.


def admin_enroll(
    record: UserRecord | None, owner: Identity, secret: bytes, now: int, policy: Policy
) -> UserRecord:
    """Issue a new secret: `pending` until its first code.

    A user still inside an enrollment period keeps its deadline (password-only logins go
    on until then); a user new to the bridge gets the usual period; anyone else (active,
    locked, expired) must confirm the new secret with a code before logging in again.
    """
    deadline: int | None = None
    if record is None:
        if policy.enrollment_days > 0:
            deadline = now + policy.enrollment_days * DAY
    else:
        current = effective(record, now)
        if current.state in (State.GRACE, State.PENDING) and current.deadline is not None:
            deadline = current.deadline
    return UserRecord(
        owner.name,
        State.PENDING,
        deadline=deadline,
        secret=secret,
        created=record.created if record else now,
        updated=now,
        entry_id=owner.entry_id,
        **guarded(record, secret),
    )


def admin_import(record: UserRecord | None, owner: Identity, secret: bytes, now: int) -> UserRecord:
    """Take a secret the user already has in an app: `active` at once."""
    return UserRecord(
        owner.name,
        State.ACTIVE,
        secret=secret,
        confirmed=True,
        created=record.created if record else now,
        updated=now,
        entry_id=owner.entry_id,
        **guarded(record, secret),
    )


def replay_guard(record: UserRecord | None, secret: bytes) -> int | None:
    """The newest step already used with `secret`, from what `record` remembers.

    Steps used with a key stay used, also across a reset, so importing that key again
    cannot make a code already accepted valid a second time. Another key starts afresh:
    its codes were never used, and its first code must not be refused as a "replay" of
    the old key's.
    """
    if record is None or record.last_step is None:
        return None
    if record.step_key is not None:
        same = hmac.compare_digest(record.step_key, guard_tag(secret))
    else:  # a guard kept before step keys were: it is the current secret's
        same = record.secret is not None and hmac.compare_digest(record.secret, secret)
    return record.last_step if same else None


def guarded(record: UserRecord | None, secret: bytes) -> dict[str, Any]:
    """`last_step` and `step_key` for a record that is given `secret`."""
    step = replay_guard(record, secret)
    return {"last_step": step, "step_key": guard_tag(secret) if step is not None else None}


def admin_lock(record: UserRecord, now: int) -> UserRecord:
    """Lock by hand; the secret is kept for the unlock."""
    return record.evolve(state=State.LOCKED, lock_reason=LockReason.ADMIN, updated=now)


def admin_lock_unseen(owner: Identity, now: int) -> UserRecord:
    """Lock a user the bridge has no record of yet (a compromised account, before any login)."""
    return UserRecord(
        owner.name,
        State.LOCKED,
        lock_reason=LockReason.ADMIN,
        created=now,
        updated=now,
        entry_id=owner.entry_id,
    )


def admin_unlock(
    record: UserRecord, now: int, policy: Policy, days: int | None = None
) -> UserRecord | None:
    """Clear failures and the lock: `active` with a confirmed secret, else a fresh period.

    Without a confirmed secret the user gets `days` (default `enrollment_days`) of grace;
    with no period at all (0 days) the record is forgotten and the user must be enrolled.
    """
    if record.confirmed and record.secret is not None:
        return record.evolve(
            state=State.ACTIVE, failures=0, lock_reason=None, deadline=None, updated=now
        )
    return _fresh_grace(record, now, policy.enrollment_days if days is None else days)


def admin_reset(record: UserRecord, now: int, policy: Policy) -> UserRecord | None:
    """Forget the secret: back to `grace` with a fresh enrollment period."""
    return _fresh_grace(record, now, policy.enrollment_days)


def _fresh_grace(record: UserRecord, now: int, days: int) -> UserRecord | None:
    if days <= 0:
        return None
    return UserRecord(
        record.username,
        State.GRACE,
        deadline=now + days * DAY,
        last_step=record.last_step,  # kept with its key's tag: see replay_guard
        step_key=record.step_key or _tag(record.secret),
        created=record.created,
        updated=now,
        entry_id=record.entry_id,
    )


def _tag(secret: bytes | None) -> bytes | None:
    return guard_tag(secret) if secret is not None else None
