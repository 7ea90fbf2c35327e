"""Setting up and resetting MFA by the user, as pure functions of a record and the time.

The portal keeps a newly issued secret in the user's session, not in the store, until a
code from it is entered: quitting half-way leaves the record as it was (grace with the
same deadline, or the old secret still working during a reset).
"""

from __future__ import annotations

from enum import StrEnum

from bridge.core.policy import Policy, effective, replay_guard
from bridge.core.totp import guard_tag, match_step
from bridge.core.types import Identity, State, UserRecord


class SetupResult(StrEnum):
    """How entering the first code of a new secret ended."""

    CONFIRMED = "confirmed"  # the user is active with the new secret
    WRONG_CODE = "wrong-code"  # not a code of the new secret now: try again
    LOCKED = "locked"  # locked meanwhile (by an admin, or expired): nothing changes
    PROOF_REQUIRED = "proof-required"  # active: the old device must be proven first


def may_set_up(record: UserRecord | None, now: int, *, old_device_proven: bool) -> SetupResult:
    """Whether a new secret may be issued now; CONFIRMED means yes.

    Anyone not locked may set up (in grace, pending, before the bridge ever required it);
    an active user only after proving the current device with one of its codes.
    """
    current = effective(record, now) if record is not None else None
    if current is None:
        return SetupResult.CONFIRMED
    if current.state is State.LOCKED:
        return SetupResult.LOCKED
    if current.state is State.ACTIVE and not old_device_proven:
        return SetupResult.PROOF_REQUIRED
    return SetupResult.CONFIRMED


def confirm_secret(
    record: UserRecord | None,
    owner: Identity,
    secret: bytes,
    code: str,
    *,
    now: int,
    policy: Policy,
    old_device_proven: bool,
) -> tuple[UserRecord | None, SetupResult]:
    """The user's first code from `secret`: on a match the user is `active` with it.

    A wrong code changes nothing and does not count towards the lock (the old secret was
    not guessed at; the portal limits the attempts). The replay guard moves to the
    confirming step, so that code cannot also be used for a login; a new key does not
    inherit the old key's guard.
    """
    allowed = may_set_up(record, now, old_device_proven=old_device_proven)
    if allowed is not SetupResult.CONFIRMED:
        return record, allowed
    step = match_step(secret, code, now, policy.totp)
    if step is None:
        return record, SetupResult.WRONG_CODE
    last = replay_guard(record, secret)
    after = UserRecord(
        owner.name,
        State.ACTIVE,
        secret=secret,
        confirmed=True,
        last_step=step if last is None else max(last, step),
        step_key=guard_tag(secret),
        created=record.created if record is not None else now,
        updated=now,
        entry_id=owner.entry_id,
    )
    return after, SetupResult.CONFIRMED
