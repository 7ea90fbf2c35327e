"""Unit tests of bridge.core.policy: the MFA state machine of SPEC sections 2 and 5."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.policy import (
    DAY,
    EVERYONE,
    Access,
    Attempt,
    Mode,
    Policy,
    Verdict,
    admin_enroll,
    admin_import,
    admin_lock,
    admin_reset,
    admin_unlock,
    check_code,
    conclude,
    days_left,
    effective,
    plan_attempt,
    plan_given,
    rejected,
    replay_guard,
)
from bridge.core.totp import TotpParams, code_at_step, guard_tag, match_step, time_step
from bridge.core.types import Decision, Identity, LockReason, Outcome, Reason, State, UserRecord

SECRET = b"12345678901234567890"
OTHER_SECRET = bytes(range(1, 21))
POLICY = Policy(enrollment_days=14, max_failures=5, totp=TotpParams())
NOW = 1_700_000_025  # 15 s into step 56_666_667
STEP = time_step(NOW, POLICY.totp)
CREATED = NOW - 3 * DAY
USER = "alice"
ENTRY = "5c1f3e0a-6b1d-4a9e-9f3c-2d7a8b9c0d1e"  # alice's entryUUID
OWNER = Identity(ENTRY, USER, "uid=alice,ou=people,dc=example,dc=org")
PASSWORD = "s3cret pw"


def code(step: int = STEP, secret: bytes = SECRET) -> str:
    """The 6-digit code of `secret` at `step`."""
    return code_at_step(secret, step)


def wrong_code(now: int = NOW, secret: bytes = SECRET) -> str:
    """A well-formed 6-digit code that matches no step in the window at `now`."""
    for n in range(1_000_000):
        candidate = f"{n:06d}"
        if match_step(secret, candidate, now, POLICY.totp) is None:
            return candidate
    raise AssertionError("no wrong code")  # pragma: no cover


def grace(deadline: int = NOW + 5 * DAY, **changes: object) -> UserRecord:
    """A user inside the enrollment period, without a secret."""
    record = UserRecord(
        USER, State.GRACE, deadline=deadline, created=CREATED, updated=CREATED, entry_id=ENTRY
    )
    return record.evolve(**changes)


def pending(deadline: int | None = NOW + 5 * DAY, **changes: object) -> UserRecord:
    """A user with an issued but unconfirmed secret."""
    record = UserRecord(
        USER,
        State.PENDING,
        deadline=deadline,
        secret=SECRET,
        created=CREATED,
        updated=CREATED,
        entry_id=ENTRY,
    )
    return record.evolve(**changes)


def active(**changes: object) -> UserRecord:
    """An enrolled user whose last accepted code is long past."""
    record = UserRecord(
        USER,
        State.ACTIVE,
        secret=SECRET,
        confirmed=True,
        last_step=STEP - 100,
        created=CREATED,
        updated=CREATED,
        entry_id=ENTRY,
    )
    return record.evolve(**changes)


def locked(reason: LockReason = LockReason.FAILURES, **changes: object) -> UserRecord:
    """A locked, confirmed user."""
    return active(state=State.LOCKED, lock_reason=reason, failures=5).evolve(**changes)


def run(
    record: UserRecord | None,
    attempt: Attempt | str = PASSWORD,
    *,
    now: int = NOW,
    policy: Policy = POLICY,
    exempt: bool = False,
    can_challenge: bool = True,
    access: Access = EVERYONE,
) -> Verdict:
    """conclude() for alice's entry after the directory accepted the password."""
    if isinstance(attempt, str):
        attempt = Attempt(attempt)
    return conclude(
        record,
        OWNER,
        attempt,
        exempt=exempt,
        can_challenge=can_challenge,
        now=now,
        policy=policy,
        access=access,
    )


def with_code(c: str) -> Attempt:
    """The attempt of a correct password with an appended code."""
    return Attempt(PASSWORD, c)


# --- days_left and effective -----------------------------------------------------------


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [
        (14 * DAY, 14),
        (13 * DAY + 1, 14),
        (13 * DAY, 13),
        (DAY + 1, 2),
        (DAY, 1),
        (DAY - 1, 1),
        (1, 1),
        (0, 0),
        (-1, 0),
        (-30 * DAY, 0),
    ],
)
def test_days_left_rounds_up_and_floors_at_zero(remaining: int, expected: int) -> None:
    """days_left is the ceiling of the remaining days, 0 at and after the deadline."""
    assert days_left(NOW + remaining, NOW) == expected


def test_effective_keeps_a_grace_record_before_its_deadline() -> None:
    """A grace record one second before its deadline is unchanged (the same object)."""
    record = grace(deadline=NOW + 1)
    assert effective(record, NOW) is record


@pytest.mark.parametrize("factory", [grace, pending])
@pytest.mark.parametrize("late", [0, 1, 30 * DAY])
def test_effective_locks_an_expired_enrollment(factory: object, late: int) -> None:
    """A grace/pending record at or past its deadline is locked, reason enrollment-expired."""
    assert callable(factory)
    record = factory(deadline=NOW - late)
    now_ = effective(record, NOW)
    assert now_.state is State.LOCKED
    assert now_.lock_reason is LockReason.ENROLLMENT_EXPIRED
    assert now_.updated == NOW
    assert now_.secret == record.secret
    assert record.state in (State.GRACE, State.PENDING)  # the input is not mutated


def test_effective_leaves_pending_without_deadline() -> None:
    """A pending record with no deadline never expires."""
    record = pending(deadline=None)
    assert effective(record, NOW + 1000 * DAY) is record


@pytest.mark.parametrize(
    "record",
    [
        UserRecord(
            USER, State.ACTIVE, deadline=NOW - 1, secret=SECRET, confirmed=True, entry_id=ENTRY
        ),
        UserRecord(
            USER, State.LOCKED, deadline=NOW - 1, lock_reason=LockReason.ADMIN, entry_id=ENTRY
        ),
    ],
)
def test_effective_ignores_deadlines_outside_enrollment(record: UserRecord) -> None:
    """Only grace and pending records expire: active and locked ones are returned as they are."""
    assert effective(record, NOW) is record


# --- plan_attempt ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(Mode))
def test_plan_unknown_user_binds_whole_field(mode: Mode) -> None:
    """A user without a record cannot have a code: the whole field is the password."""
    field = "pw" + code()
    assert plan_attempt(None, field, mode, NOW, POLICY) == Attempt(field)


@pytest.mark.parametrize("mode", list(Mode))
def test_plan_user_without_secret_binds_whole_field(mode: Mode) -> None:
    """A grace user (no secret) ending the password in digits is never split."""
    field = "pw" + code()
    assert plan_attempt(grace(), field, mode, NOW, POLICY) == Attempt(field)


@pytest.mark.parametrize("mode", [Mode.APPEND, Mode.AUTO])
@pytest.mark.parametrize("factory", [active, pending])
def test_plan_splits_a_valid_appended_code(mode: Mode, factory: object) -> None:
    """In append and auto mode a trailing code valid now is split off the password."""
    assert callable(factory)
    c = code()
    assert plan_attempt(factory(), PASSWORD + c, mode, NOW, POLICY) == Attempt(PASSWORD, c)


@pytest.mark.parametrize("offset", [-1, 1])
def test_plan_auto_splits_codes_from_neighbouring_steps(offset: int) -> None:
    """In auto mode a code from an adjacent step (inside the window) is still split off."""
    c = code(STEP + offset)
    assert plan_attempt(active(), "pw" + c, Mode.AUTO, NOW, POLICY) == Attempt("pw", c)


def test_plan_challenge_mode_never_splits() -> None:
    """In challenge mode the field is the password, even ending in a valid code."""
    field = PASSWORD + code()
    assert plan_attempt(active(), field, Mode.CHALLENGE, NOW, POLICY) == Attempt(field)


def test_plan_append_splits_an_invalid_code() -> None:
    """In append mode a trailing wrong code is still split off (so it counts as a failure)."""
    bad = wrong_code()
    assert plan_attempt(active(), "pw" + bad, Mode.APPEND, NOW, POLICY) == Attempt("pw", bad)


def test_plan_auto_keeps_the_whole_field_for_an_invalid_code() -> None:
    """In auto mode a trailing wrong code stays: the field may be a password ending in digits."""
    field = "pw" + wrong_code()
    assert plan_attempt(active(), field, Mode.AUTO, NOW, POLICY) == Attempt(field)


def test_plan_challenge_keeps_the_whole_field_for_an_invalid_code() -> None:
    """In challenge mode a trailing wrong code is not split either."""
    field = "pw" + wrong_code()
    assert plan_attempt(active(), field, Mode.CHALLENGE, NOW, POLICY) == Attempt(field)


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("field", ["password", "pw12345", "123456", "pw１２３４５６", ""])  # noqa: RUF001
def test_plan_without_trailing_code_binds_whole_field(mode: Mode, field: str) -> None:
    """A field that does not end in six ASCII digits after a password is never split."""
    assert plan_attempt(active(), field, mode, NOW, POLICY) == Attempt(field)


def test_plan_append_keeps_space_before_code_in_password() -> None:
    """'pass 123456' in append mode binds with 'pass ' (the space is part of the password)."""
    c = code()
    assert plan_attempt(active(), "pass " + c, Mode.APPEND, NOW, POLICY) == Attempt("pass ", c)


def test_plan_does_not_consume_the_code() -> None:
    """Planning is pure: the record is not touched and the same code plans the same twice."""
    record = active()
    field = "pw" + code()
    first = plan_attempt(record, field, Mode.AUTO, NOW, POLICY)
    assert plan_attempt(record, field, Mode.AUTO, NOW, POLICY) == first
    assert record == active()


# --- conclude: unknown users and grace -------------------------------------------------


def test_first_login_of_unknown_user_creates_grace_record() -> None:
    """The first correct password of an unknown user creates a grace record, deadline now+14d."""
    verdict = run(None)
    record = verdict.record
    assert record is not None
    assert verdict.changed
    assert record.username == USER
    assert record.state is State.GRACE
    assert record.deadline == NOW + 14 * DAY
    assert record.secret is None
    assert record.failures == 0
    assert (record.created, record.updated) == (NOW, NOW)
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.ACCEPT, Reason.GRACE)
    assert d.days_left == 14
    assert (d.state_before, d.state_after) == (None, State.GRACE)
    assert d.password_ok


@pytest.mark.parametrize("days", [1, 7, 30])
def test_first_login_period_follows_enrollment_days(days: int) -> None:
    """The new grace deadline is now + enrollment_days * 86400 and days_left equals the setting."""
    verdict = run(None, policy=Policy(enrollment_days=days))
    assert verdict.record is not None
    assert verdict.record.deadline == NOW + days * 86_400
    assert verdict.decision.days_left == days


@pytest.mark.parametrize("mode", list(Mode))
def test_unknown_user_with_zero_enrollment_days_is_rejected(mode: Mode) -> None:
    """With enrollment_days 0 an unknown user's correct password is rejected as not-enrolled."""
    policy = Policy(enrollment_days=0)
    attempt = plan_attempt(None, PASSWORD, mode, NOW, policy)
    verdict = run(None, attempt, policy=policy)
    assert verdict.record is None
    assert not verdict.changed
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.REJECT, Reason.NOT_ENROLLED)
    assert not d.accepted
    assert d.password_ok


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [(1, 1), (DAY, 1), (DAY + 1, 2), (13 * DAY + 1, 14), (14 * DAY, 14)],
)
def test_grace_login_shows_days_left_rounded_up(remaining: int, expected: int) -> None:
    """A grace login is accepted with days_left rounded up (1 s -> 1 day, 13 d + 1 s -> 14)."""
    record = grace(deadline=NOW + remaining)
    verdict = run(record)
    d = verdict.decision
    assert (d.outcome, d.reason, d.days_left) == (Outcome.ACCEPT, Reason.GRACE, expected)
    assert (d.state_before, d.state_after) == (State.GRACE, State.GRACE)
    assert verdict.record == record
    assert not verdict.changed


@pytest.mark.parametrize("can_challenge", [True, False])
def test_grace_login_is_accepted_in_any_mode(can_challenge: bool) -> None:
    """Password-only is accepted for a grace user whether or not a challenge is possible."""
    verdict = run(grace(), can_challenge=can_challenge)
    assert verdict.decision.outcome is Outcome.ACCEPT


@pytest.mark.parametrize("late", [0, 1, DAY])
def test_grace_past_deadline_is_locked(late: int) -> None:
    """A grace user at or past the deadline is rejected and locked (enrollment-expired), stored."""
    verdict = run(grace(deadline=NOW - late))
    assert verdict.changed
    record = verdict.record
    assert record is not None
    assert record.state is State.LOCKED
    assert record.lock_reason is LockReason.ENROLLMENT_EXPIRED
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.REJECT, Reason.LOCKED)
    assert d.lock_reason is LockReason.ENROLLMENT_EXPIRED
    assert (d.state_before, d.state_after) == (State.GRACE, State.LOCKED)
    assert d.days_left is None
    assert d.password_ok


def test_grace_one_second_before_deadline_is_still_accepted() -> None:
    """One second before the deadline the grace user is still in, with 1 day left."""
    verdict = run(grace(deadline=NOW + 1))
    assert verdict.decision.accepted
    assert verdict.decision.days_left == 1


# --- conclude: pending -----------------------------------------------------------------


def test_pending_password_only_inside_deadline_is_accepted() -> None:
    """A pending user inside the deadline gets in with the password alone, with days_left."""
    record = pending(deadline=NOW + 3 * DAY)
    verdict = run(record, can_challenge=False)
    d = verdict.decision
    assert (d.outcome, d.reason, d.days_left) == (Outcome.ACCEPT, Reason.GRACE, 3)
    assert (d.state_before, d.state_after) == (State.PENDING, State.PENDING)
    assert verdict.record == record
    assert not verdict.changed


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_pending_with_valid_code_becomes_active(offset: int) -> None:
    """A pending user's first valid code activates: active, confirmed, last_step set, failures 0."""
    step = STEP + offset
    verdict = run(pending(failures=3), with_code(code(step)))
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.ACCEPT, Reason.ACTIVATED)
    assert (d.state_before, d.state_after) == (State.PENDING, State.ACTIVE)
    assert d.password_ok
    assert verdict.changed
    record = verdict.record
    assert record is not None
    assert record.state is State.ACTIVE
    assert record.confirmed
    assert record.last_step == step
    assert record.failures == 0
    assert record.deadline is None
    assert record.secret == SECRET
    assert record.updated == NOW


def test_pending_past_deadline_with_valid_code_is_locked() -> None:
    """A pending user whose deadline passed is locked even with a valid code (not activated)."""
    verdict = run(pending(deadline=NOW - 1), with_code(code()))
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.REJECT, Reason.LOCKED)
    assert d.lock_reason is LockReason.ENROLLMENT_EXPIRED
    assert verdict.record is not None
    assert verdict.record.state is State.LOCKED
    assert verdict.changed


def test_pending_with_wrong_code_counts_a_failure() -> None:
    """A pending user's wrong code is rejected and counted, the state stays pending."""
    verdict = run(pending(), with_code(wrong_code()))
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.REJECT, Reason.WRONG_CODE)
    assert verdict.record is not None
    assert verdict.record.failures == 1
    assert verdict.record.state is State.PENDING


def test_pending_without_deadline_is_challenged() -> None:
    """A pending user without a deadline and password only is challenged when possible."""
    verdict = run(pending(deadline=None), can_challenge=True)
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.CHALLENGE, Reason.CHALLENGED)
    assert d.days_left is None
    assert d.password_ok
    assert not verdict.changed


def test_pending_without_deadline_needs_code_when_no_challenge() -> None:
    """A pending user without a deadline and password only is rejected code-required in append."""
    verdict = run(pending(deadline=None), can_challenge=False)
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.REJECT, Reason.CODE_REQUIRED)
    assert d.password_ok
    assert verdict.record == pending(deadline=None)
    assert not verdict.changed


# --- conclude: active ------------------------------------------------------------------


def test_active_password_only_is_challenged() -> None:
    """An active user's password alone draws a challenge when the client can take one."""
    verdict = run(active(), can_challenge=True)
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.CHALLENGE, Reason.CHALLENGED)
    assert (d.state_before, d.state_after) == (State.ACTIVE, State.ACTIVE)
    assert d.password_ok
    assert not verdict.changed
    assert verdict.record == active()


def test_active_password_only_without_challenge_is_code_required() -> None:
    """An active user's password alone is rejected code-required when no challenge is possible."""
    verdict = run(active(), can_challenge=False)
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.REJECT, Reason.CODE_REQUIRED)
    assert d.password_ok
    assert verdict.record is not None
    assert verdict.record.failures == 0
    assert not verdict.changed


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_active_with_valid_code_is_accepted(offset: int) -> None:
    """An active user's valid code (any step of the window) is accepted and its step recorded."""
    verdict = run(active(failures=2), with_code(code(STEP + offset)))
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.ACCEPT, Reason.ACCEPTED)
    assert (d.state_before, d.state_after) == (State.ACTIVE, State.ACTIVE)
    assert d.days_left is None
    assert d.password_ok
    assert verdict.changed
    assert verdict.record is not None
    assert verdict.record.last_step == STEP + offset
    assert verdict.record.failures == 0
    assert verdict.record.state is State.ACTIVE


@pytest.mark.parametrize("offset", [-2, 2])
def test_active_with_code_outside_window_is_wrong(offset: int) -> None:
    """A code two steps away is a wrong code for window 1."""
    verdict = run(active(), with_code(code(STEP + offset)))
    assert verdict.decision.reason is Reason.WRONG_CODE
    assert verdict.record is not None
    assert verdict.record.failures == 1


def test_replay_of_the_same_code_is_rejected() -> None:
    """Reusing an accepted code (same step) is rejected as replay and counts a failure."""
    c = code()
    first = run(active(), with_code(c))
    assert first.decision.accepted
    assert first.record is not None
    second = run(first.record, with_code(c), now=NOW + 5)
    d = second.decision
    assert (d.outcome, d.reason) == (Outcome.REJECT, Reason.REPLAY)
    assert d.password_ok
    assert second.changed
    assert second.record is not None
    assert second.record.failures == 1
    assert second.record.last_step == STEP


def test_older_step_after_newer_step_is_replay() -> None:
    """After step+1 was used, a still-in-window code of the current step is a replay."""
    first = run(active(), with_code(code(STEP + 1)))
    assert first.decision.accepted
    assert first.record is not None
    second = run(first.record, with_code(code(STEP)))
    assert second.decision.reason is Reason.REPLAY
    assert second.record is not None
    assert second.record.failures == 1
    assert second.record.last_step == STEP + 1


def test_newer_step_after_older_step_is_accepted() -> None:
    """A code of a later step than the last one used is accepted and becomes last_step."""
    first = run(active(), with_code(code(STEP - 1)))
    assert first.record is not None
    second = run(first.record, with_code(code(STEP)))
    assert second.decision.reason is Reason.ACCEPTED
    assert second.record is not None
    assert second.record.last_step == STEP


def test_wrong_code_counts_a_failure() -> None:
    """A wrong code after a correct password is rejected and failures goes up by one."""
    verdict = run(active(failures=1), with_code(wrong_code()))
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.REJECT, Reason.WRONG_CODE)
    assert (d.state_before, d.state_after) == (State.ACTIVE, State.ACTIVE)
    assert d.lock_reason is None
    assert d.password_ok
    assert verdict.changed
    assert verdict.record is not None
    assert verdict.record.failures == 2
    assert verdict.record.state is State.ACTIVE
    assert verdict.record.updated == NOW


@pytest.mark.parametrize("max_failures", [1, 3, 5])
def test_max_failures_consecutive_wrong_codes_lock(max_failures: int) -> None:
    """max_failures consecutive wrong codes lock the user with lock_reason failures."""
    policy = Policy(max_failures=max_failures)
    record: UserRecord | None = active()
    for i in range(max_failures):
        assert record is not None
        assert record.state is State.ACTIVE
        verdict = run(record, with_code(wrong_code()), policy=policy, now=NOW + i)
        record = verdict.record
        assert verdict.decision.outcome is Outcome.REJECT
    assert record is not None
    assert record.state is State.LOCKED
    assert record.lock_reason is LockReason.FAILURES
    assert record.failures == max_failures
    assert record.secret == SECRET
    d = verdict.decision
    assert d.reason is Reason.WRONG_CODE
    assert d.state_after is State.LOCKED
    assert d.lock_reason is LockReason.FAILURES


def test_one_below_max_failures_does_not_lock() -> None:
    """max_failures - 1 wrong codes leave the user active."""
    verdict = run(active(failures=3), with_code(wrong_code()))
    assert verdict.record is not None
    assert verdict.record.failures == 4
    assert verdict.record.state is State.ACTIVE


def test_replays_count_towards_the_lock() -> None:
    """A replay that reaches max_failures locks like a wrong code does."""
    record = active(failures=4, last_step=STEP)
    verdict = run(record, with_code(code(STEP)))
    assert verdict.decision.reason is Reason.REPLAY
    assert verdict.record is not None
    assert verdict.record.state is State.LOCKED
    assert verdict.record.lock_reason is LockReason.FAILURES


def test_success_resets_failures() -> None:
    """A valid code after some wrong ones resets failures, so the count is consecutive."""
    policy = Policy(max_failures=3)
    record = active()
    for i in range(2):
        v = run(record, with_code(wrong_code()), policy=policy, now=NOW + i)
        assert v.record is not None
        record = v.record
    assert record.failures == 2
    ok = run(record, with_code(code()), policy=policy)
    assert ok.decision.accepted
    assert ok.record is not None
    assert ok.record.failures == 0
    v = run(ok.record, with_code(wrong_code()), policy=policy)
    assert v.record is not None
    assert v.record.failures == 1
    assert v.record.state is State.ACTIVE


def test_password_only_login_does_not_reset_failures() -> None:
    """A password-only (challenged) login is no success: the failure count stays."""
    verdict = run(active(failures=3), can_challenge=True)
    assert verdict.record is not None
    assert verdict.record.failures == 3


# --- conclude: locked and exempt -------------------------------------------------------


@pytest.mark.parametrize("reason", list(LockReason))
def test_locked_user_rejected_even_with_valid_code(reason: LockReason) -> None:
    """A locked user is rejected (reason locked) with a valid code, and the code is not consumed."""
    record = locked(reason)
    verdict = run(record, with_code(code()))
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.REJECT, Reason.LOCKED)
    assert d.lock_reason is reason
    assert (d.state_before, d.state_after) == (State.LOCKED, State.LOCKED)
    assert d.password_ok
    assert verdict.record == record
    assert not verdict.changed


@pytest.mark.parametrize("can_challenge", [True, False])
def test_locked_user_rejected_with_password_only(can_challenge: bool) -> None:
    """A locked user's password alone is rejected as locked, never challenged."""
    verdict = run(locked(LockReason.ADMIN), can_challenge=can_challenge)
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.REJECT, Reason.LOCKED)
    assert d.lock_reason is LockReason.ADMIN


def test_locked_user_wrong_code_does_not_count() -> None:
    """Codes sent by a locked user are not counted: failures stay as they were."""
    verdict = run(locked(), with_code(wrong_code()))
    assert verdict.decision.reason is Reason.LOCKED
    assert verdict.record is not None
    assert verdict.record.failures == 5


@pytest.mark.parametrize(
    "record", [None, grace(), pending(), active(), locked(), grace(deadline=NOW - 1)]
)
@pytest.mark.parametrize("attempt", [Attempt(PASSWORD), with_code(code()), with_code("000000")])
def test_exempt_is_accepted_and_record_unchanged(
    record: UserRecord | None, attempt: Attempt
) -> None:
    """An exempt user is accepted (reason exempt), any code ignored, the record untouched."""
    verdict = run(record, attempt, exempt=True, can_challenge=False)
    d = verdict.decision
    assert (d.outcome, d.reason) == (Outcome.ACCEPT, Reason.EXEMPT)
    assert d.state_after is State.EXEMPT
    assert d.password_ok
    assert verdict.record is record
    assert not verdict.changed


def test_exempt_user_with_zero_enrollment_days_is_accepted() -> None:
    """Exemption beats enrollment_days 0: an unknown exempt user is accepted, no record made."""
    verdict = run(None, exempt=True, policy=Policy(enrollment_days=0))
    assert verdict.decision.reason is Reason.EXEMPT
    assert verdict.record is None


# --- password_ok -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "attempt", "can_challenge"),
    [
        (None, Attempt(PASSWORD), True),
        (grace(), Attempt(PASSWORD), True),
        (grace(deadline=NOW), Attempt(PASSWORD), True),
        (pending(), Attempt(PASSWORD), True),
        (pending(), with_code(code()), True),
        (pending(deadline=None), Attempt(PASSWORD), False),
        (active(), Attempt(PASSWORD), True),
        (active(), Attempt(PASSWORD), False),
        (active(), with_code(code()), True),
        (active(), with_code(wrong_code()), True),
        (active(last_step=STEP), with_code(code()), True),
        (active(failures=4), with_code(wrong_code()), True),
        (locked(), with_code(code()), True),
    ],
)
def test_decisions_after_correct_password_have_password_ok(
    record: UserRecord | None, attempt: Attempt, can_challenge: bool
) -> None:
    """Every decision of conclude (accept, challenge or reject) is marked password_ok."""
    decision = run(record, attempt, can_challenge=can_challenge).decision
    assert decision.password_ok
    assert decision.username == USER


def test_unknown_user_with_zero_days_has_password_ok() -> None:
    """The not-enrolled reject also comes after a correct password: password_ok."""
    assert run(None, policy=Policy(enrollment_days=0)).decision.password_ok


@pytest.mark.parametrize(
    "reason", [Reason.BAD_PASSWORD, Reason.UNKNOWN_USER, Reason.EMPTY_PASSWORD, Reason.BAD_STATE]
)
@pytest.mark.parametrize("record", [None, active(), locked()])
def test_rejected_has_no_password_ok(reason: Reason, record: UserRecord | None) -> None:
    """rejected() is a reject before the password was known to be right: password_ok False."""
    d = rejected(USER, reason, record)
    assert (d.outcome, d.reason, d.username) == (Outcome.REJECT, reason, USER)
    assert not d.password_ok
    assert not d.accepted
    assert d.days_left is None
    assert d.lock_reason is None


def test_rejected_does_not_reveal_the_lock_reason() -> None:
    """Even for a locked record, rejected() carries no lock reason for the caller."""
    d = rejected(USER, Reason.BAD_PASSWORD, locked(LockReason.ADMIN))
    assert d.lock_reason is None
    assert not d.password_ok


def test_policy_defaults_match_the_spec() -> None:
    """Policy defaults are SPEC section 3's: 14 enrollment days, 5 failures, window 1."""
    policy = Policy()
    assert (policy.enrollment_days, policy.max_failures) == (14, 5)
    assert (policy.totp.digits, policy.totp.step, policy.totp.window) == (6, 30, 1)
    assert DAY == 86_400


def test_decision_accepted_property() -> None:
    """Decision.accepted is True exactly for the accept outcome."""
    assert Decision(Outcome.ACCEPT, Reason.ACCEPTED, USER).accepted
    assert not Decision(Outcome.CHALLENGE, Reason.CHALLENGED, USER).accepted
    assert not Decision(Outcome.REJECT, Reason.WRONG_CODE, USER).accepted


# --- check_code (challenge answers) ----------------------------------------------------


def test_challenge_flow_accepts_code_answer() -> None:
    """Challenge mode: the password draws a challenge, then check_code accepts the answer."""
    attempt = plan_attempt(active(), PASSWORD, Mode.CHALLENGE, NOW, POLICY)
    first = run(active(), attempt)
    assert first.decision.outcome is Outcome.CHALLENGE
    assert first.record is not None
    answer = check_code(first.record, code(), now=NOW + 20, policy=POLICY)
    assert (answer.decision.outcome, answer.decision.reason) == (Outcome.ACCEPT, Reason.ACCEPTED)
    assert answer.decision.password_ok
    assert answer.record is not None
    assert answer.record.last_step == STEP


def test_check_code_activates_pending() -> None:
    """check_code on a pending record with a valid code activates it."""
    verdict = check_code(pending(), code(), now=NOW, policy=POLICY)
    assert verdict.decision.reason is Reason.ACTIVATED
    assert verdict.decision.state_before is State.PENDING
    assert verdict.record is not None
    assert verdict.record.state is State.ACTIVE
    assert verdict.record.confirmed


def test_check_code_on_locked_user_is_locked() -> None:
    """check_code on a locked record rejects as locked and changes nothing."""
    record = locked()
    verdict = check_code(record, code(), now=NOW, policy=POLICY)
    assert verdict.decision.reason is Reason.LOCKED
    assert verdict.record == record
    assert not verdict.changed


def test_check_code_locks_expired_pending() -> None:
    """check_code on a pending record past its deadline locks it (enrollment-expired)."""
    verdict = check_code(pending(deadline=NOW), code(), now=NOW, policy=POLICY)
    assert verdict.decision.reason is Reason.LOCKED
    assert verdict.changed
    assert verdict.record is not None
    assert verdict.record.lock_reason is LockReason.ENROLLMENT_EXPIRED


@pytest.mark.parametrize("bad", ["", "12345", "abcdef", "１２３４５６", "1234567"])  # noqa: RUF001
def test_check_code_malformed_code_is_wrong_code(bad: str) -> None:
    """A malformed answer is a wrong code, counted, and raises nothing."""
    verdict = check_code(active(), bad, now=NOW, policy=POLICY)
    assert verdict.decision.reason is Reason.WRONG_CODE
    assert verdict.record is not None
    assert verdict.record.failures == 1


def test_check_code_with_other_secret_is_wrong() -> None:
    """A code from another key is wrong for this user."""
    c = code(STEP, OTHER_SECRET)
    assert match_step(SECRET, c, NOW, POLICY.totp) is None
    assert check_code(active(), c, now=NOW, policy=POLICY).decision.reason is Reason.WRONG_CODE


# --- properties ------------------------------------------------------------------------

NOWS = st.integers(min_value=10**6, max_value=10**10)


@settings(database=None, max_examples=300, deadline=None)
@given(
    now=NOWS,
    last_offset=st.integers(min_value=-4, max_value=4),
    code_offset=st.one_of(st.none(), st.integers(min_value=-3, max_value=3)),
    random_code=st.from_regex(r"\A[0-9]{6}\Z"),
)
def test_check_code_never_accepts_a_used_step(
    now: int, last_offset: int, code_offset: int | None, random_code: str
) -> None:
    """For any time and code, check_code never accepts a step <= last_step; fresh steps pass."""
    current = time_step(now, POLICY.totp)
    last_step = current + last_offset
    record = active(last_step=last_step)
    c = random_code if code_offset is None else code(current + code_offset)
    verdict = check_code(record, c, now=now, policy=POLICY)
    matched = match_step(SECRET, c, now, POLICY.totp)
    if verdict.decision.accepted:
        assert verdict.record is not None
        assert verdict.record.last_step is not None
        assert verdict.record.last_step > last_step
        assert verdict.record.last_step == matched
    else:
        assert verdict.decision.reason in (Reason.WRONG_CODE, Reason.REPLAY)
        assert matched is None or matched <= last_step
        assert verdict.record is not None
        assert verdict.record.last_step == last_step


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["wrong", "valid", "replay", "password"]),
        st.integers(min_value=0, max_value=200),
    ),
    max_size=25,
)


@settings(database=None, max_examples=200, deadline=None)
@given(
    start=NOWS,
    max_failures=st.integers(min_value=1, max_value=6),
    actions=ACTIONS,
)
def test_failures_never_exceed_max_without_a_lock(
    start: int, max_failures: int, actions: list[tuple[str, int]]
) -> None:
    """Over any login sequence failures stay below max_failures unless locked, and locks stick."""
    policy = Policy(max_failures=max_failures)
    record = active(last_step=time_step(start, policy.totp) - 10)
    now = start
    for action, advance in actions:
        now += advance
        current = time_step(now, policy.totp)
        if action == "wrong":
            attempt = with_code(wrong_code(now))
        elif action == "valid":
            attempt = with_code(code(current))
        elif action == "replay":
            attempt = with_code(code(record.last_step if record.last_step is not None else 0))
        else:
            attempt = Attempt(PASSWORD)
        was_locked = record.state is State.LOCKED
        verdict = run(record, attempt, now=now, policy=policy)
        assert verdict.record is not None
        record = verdict.record
        assert record.failures >= 0
        if record.state is State.LOCKED:
            assert record.lock_reason is LockReason.FAILURES
            assert not verdict.decision.accepted
        else:
            assert record.failures < max_failures
        if was_locked:
            assert record.state is State.LOCKED
        if verdict.decision.reason in (Reason.ACCEPTED, Reason.ACTIVATED):
            assert record.failures == 0


# --- admin operations ------------------------------------------------------------------


def test_admin_enroll_unknown_user_is_pending_with_a_period() -> None:
    """Enrolling an unknown user: pending, the new secret, deadline now + enrollment_days."""
    record = admin_enroll(None, OWNER, SECRET, NOW, POLICY)
    assert record.username == USER
    assert record.state is State.PENDING
    assert record.secret == SECRET
    assert record.deadline == NOW + 14 * DAY
    assert not record.confirmed
    assert record.failures == 0
    assert record.last_step is None
    assert (record.created, record.updated) == (NOW, NOW)


def test_admin_enroll_unknown_user_without_period() -> None:
    """With enrollment_days 0 an enrolled unknown user is pending with no deadline."""
    record = admin_enroll(None, OWNER, SECRET, NOW, Policy(enrollment_days=0))
    assert record.state is State.PENDING
    assert record.deadline is None


@pytest.mark.parametrize("factory", [grace, pending])
def test_admin_enroll_inside_period_keeps_the_deadline(factory: object) -> None:
    """A grace or pending user inside the period keeps its deadline when (re-)enrolled."""
    assert callable(factory)
    old = factory(deadline=NOW + 2 * DAY)
    record = admin_enroll(old, OWNER, OTHER_SECRET, NOW, POLICY)
    assert record.state is State.PENDING
    assert record.deadline == NOW + 2 * DAY
    assert record.secret == OTHER_SECRET
    assert record.created == CREATED
    assert record.updated == NOW


def test_admin_enroll_active_user_has_no_deadline() -> None:
    """Re-enrolling an active user: pending with no deadline, so a code is needed to log in."""
    record = admin_enroll(active(), OWNER, OTHER_SECRET, NOW, POLICY)
    assert record.state is State.PENDING
    assert record.deadline is None
    assert record.secret == OTHER_SECRET
    assert not record.confirmed
    verdict = run(record, can_challenge=False)
    assert verdict.decision.reason is Reason.CODE_REQUIRED


@pytest.mark.parametrize("old", [locked(), grace(deadline=NOW - 1)])
def test_admin_enroll_locked_or_expired_user_has_no_deadline(old: UserRecord) -> None:
    """Enrolling a locked or expired user gives pending without a password-only period."""
    record = admin_enroll(old, OWNER, OTHER_SECRET, NOW, POLICY)
    assert record.state is State.PENDING
    assert record.deadline is None
    assert record.lock_reason is None
    assert record.failures == 0


def test_admin_enroll_then_first_code_activates() -> None:
    """An enrolled user's first valid code makes them active."""
    record = admin_enroll(None, OWNER, OTHER_SECRET, NOW, POLICY)
    verdict = run(record, with_code(code(STEP, OTHER_SECRET)))
    assert verdict.decision.reason is Reason.ACTIVATED
    assert verdict.record is not None
    assert verdict.record.state is State.ACTIVE


@pytest.mark.parametrize("old", [None, grace(), locked()])
def test_admin_import_is_active_and_confirmed(old: UserRecord | None) -> None:
    """Importing a secret makes the user active and confirmed at once, no deadline."""
    record = admin_import(old, OWNER, OTHER_SECRET, NOW)
    assert record.state is State.ACTIVE
    assert record.confirmed
    assert record.secret == OTHER_SECRET
    assert record.deadline is None
    assert record.failures == 0
    assert record.lock_reason is None
    assert record.created == (old.created if old else NOW)
    assert record.updated == NOW


def test_admin_import_then_code_is_accepted() -> None:
    """An imported user logs in with a code of the imported secret (reason accepted)."""
    record = admin_import(None, OWNER, OTHER_SECRET, NOW)
    verdict = run(record, with_code(code(STEP, OTHER_SECRET)))
    assert verdict.decision.reason is Reason.ACCEPTED


@pytest.mark.parametrize("old", [active(), pending(), grace()])
def test_admin_lock_keeps_the_secret(old: UserRecord) -> None:
    """An admin lock sets locked / reason admin and keeps the secret for the unlock."""
    record = admin_lock(old, NOW)
    assert record.state is State.LOCKED
    assert record.lock_reason is LockReason.ADMIN
    assert record.secret == old.secret
    assert record.confirmed == old.confirmed
    assert record.updated == NOW
    assert run(record, with_code(code())).decision.reason is Reason.LOCKED


def test_admin_unlock_confirmed_user_is_active() -> None:
    """Unlocking a user with a confirmed secret: active, failures 0, lock reason cleared."""
    record = admin_unlock(locked(LockReason.FAILURES), NOW, POLICY)
    assert record is not None
    assert record.state is State.ACTIVE
    assert record.failures == 0
    assert record.lock_reason is None
    assert record.deadline is None
    assert record.secret == SECRET
    assert record.updated == NOW


def test_admin_unlock_keeps_the_replay_guard() -> None:
    """Unlocking keeps last_step, so a code used before the lock cannot be replayed after it."""
    record = admin_unlock(locked(last_step=STEP), NOW, POLICY)
    assert record is not None
    assert record.last_step == STEP
    assert run(record, with_code(code(STEP))).decision.reason is Reason.REPLAY


def test_admin_unlock_after_admin_lock_restores_active() -> None:
    """Lock then unlock of an active user gives an active user who logs in with a code."""
    record = admin_unlock(admin_lock(active(), NOW), NOW + 1, POLICY)
    assert record is not None
    assert record.state is State.ACTIVE
    assert run(record, with_code(code()), now=NOW + 1).decision.accepted


@pytest.mark.parametrize(
    "old",
    [
        grace(deadline=NOW - DAY, state=State.LOCKED, lock_reason=LockReason.ENROLLMENT_EXPIRED),
        pending(deadline=NOW - DAY, state=State.LOCKED, lock_reason=LockReason.ENROLLMENT_EXPIRED),
        pending(state=State.LOCKED, lock_reason=LockReason.FAILURES, failures=5),
        grace(deadline=NOW - DAY),  # expired but not yet stored as locked
    ],
)
def test_admin_unlock_unconfirmed_user_gets_a_fresh_period(old: UserRecord) -> None:
    """Unlocking a user without a confirmed secret: grace with a fresh enrollment period."""
    record = admin_unlock(old, NOW, POLICY)
    assert record is not None
    assert record.state is State.GRACE
    assert record.deadline == NOW + 14 * DAY
    assert record.failures == 0
    assert record.lock_reason is None
    assert record.secret is None
    assert record.created == old.created
    verdict = run(record)
    assert verdict.decision.reason is Reason.GRACE
    assert verdict.decision.days_left == 14


@pytest.mark.parametrize("days", [1, 3, 30])
def test_admin_unlock_honours_days(days: int) -> None:
    """unlock --days N gives an unconfirmed user exactly N days."""
    old = grace(deadline=NOW - 1, state=State.LOCKED, lock_reason=LockReason.ENROLLMENT_EXPIRED)
    record = admin_unlock(old, NOW, POLICY, days=days)
    assert record is not None
    assert record.deadline == NOW + days * DAY
    assert days_left(record.deadline, NOW) == days


def test_admin_unlock_days_override_zero_setting() -> None:
    """--days gives a period even when enrollment_days is 0."""
    old = grace(deadline=NOW - 1, state=State.LOCKED, lock_reason=LockReason.ENROLLMENT_EXPIRED)
    record = admin_unlock(old, NOW, Policy(enrollment_days=0), days=2)
    assert record is not None
    assert record.deadline == NOW + 2 * DAY


@pytest.mark.parametrize(("setting", "days"), [(0, None), (14, 0), (0, 0)])
def test_admin_unlock_unconfirmed_without_period_forgets(setting: int, days: int | None) -> None:
    """Unlocking an unconfirmed user when the period would be 0 days returns None (forget)."""
    old = grace(deadline=NOW - 1, state=State.LOCKED, lock_reason=LockReason.ENROLLMENT_EXPIRED)
    assert admin_unlock(old, NOW, Policy(enrollment_days=setting), days=days) is None


def test_admin_unlock_confirmed_user_ignores_days() -> None:
    """A confirmed user is unlocked to active whatever --days says (there is no period)."""
    record = admin_unlock(locked(), NOW, POLICY, days=0)
    assert record is not None
    assert record.state is State.ACTIVE
    assert record.deadline is None


@pytest.mark.parametrize("old", [active(), locked(), pending(), grace()])
def test_admin_reset_forgets_secret_and_gives_fresh_grace(old: UserRecord) -> None:
    """Reset: fresh grace, the secret and confirmation gone; the guard kept with its key's tag."""
    record = admin_reset(old, NOW, POLICY)
    assert record is not None
    assert record.state is State.GRACE
    assert record.deadline == NOW + 14 * DAY
    assert record.secret is None
    assert not record.confirmed
    assert record.failures == 0
    # The guard stays, tagged with the key it belongs to: it applies again only if that
    # key comes back (replay_guard), never to another key's first code.
    assert record.last_step == old.last_step
    if old.last_step is not None:
        assert old.secret is not None and record.step_key == guard_tag(old.secret)
    assert record.lock_reason is None
    assert record.created == CREATED
    assert record.updated == NOW
    assert (record.entry_id, record.username) == (ENTRY, USER)


def test_admin_reset_without_period_forgets() -> None:
    """With enrollment_days 0 a reset user is forgotten (None): they must be enrolled again."""
    assert admin_reset(active(), NOW, Policy(enrollment_days=0)) is None


def test_admin_import_keeps_the_replay_guard() -> None:
    """Importing a key again keeps last_step, so a code already used stays used."""
    old = active()
    assert old.last_step is not None
    record = admin_import(old, OWNER, SECRET, NOW)
    assert record.last_step == old.last_step
    assert record.state is State.ACTIVE and record.confirmed


# --- replay guard across new keys (SPEC 8) -----------------------------------------------


def test_replay_guard_same_key_keeps_last_step() -> None:
    """Given the key it already has, a record keeps its replay guard."""
    assert replay_guard(active(last_step=STEP), SECRET) == STEP


def test_replay_guard_different_key_starts_afresh() -> None:
    """Given a different key, the old key's replay guard is dropped."""
    assert replay_guard(active(last_step=STEP), OTHER_SECRET) is None


@pytest.mark.parametrize("old", [None, grace(last_step=STEP)])
def test_replay_guard_without_an_old_secret_is_none(old: UserRecord | None) -> None:
    """No record, or a record without a secret or the tag of its guard's key: no guard."""
    assert replay_guard(old, SECRET) is None


def test_admin_import_of_a_new_key_accepts_its_code_in_the_same_step() -> None:
    """Importing a different key right after the old key's code was used: its code is accepted."""
    now = NOW + 5
    step = time_step(now, POLICY.totp)
    used = run(active(), with_code(code_at_step(SECRET, step)), now=now)
    assert used.decision.reason is Reason.ACCEPTED and used.record is not None
    assert used.record.last_step == step
    imported = admin_import(used.record, OWNER, OTHER_SECRET, now)
    assert imported.last_step is None
    verdict = run(imported, with_code(code_at_step(OTHER_SECRET, step)), now=now)
    assert verdict.decision.reason is Reason.ACCEPTED
    assert verdict.record is not None and verdict.record.last_step == step


def test_admin_import_of_the_same_key_keeps_a_used_code_a_replay() -> None:
    """Importing the same key again keeps the guard: a code already accepted is a replay."""
    now = NOW + 5
    step = time_step(now, POLICY.totp)
    used = run(active(), with_code(code_at_step(SECRET, step)), now=now)
    assert used.decision.accepted and used.record is not None
    imported = admin_import(used.record, OWNER, SECRET, now)
    assert imported.last_step == step
    verdict = run(imported, with_code(code_at_step(SECRET, step)), now=now)
    assert verdict.decision.reason is Reason.REPLAY


def test_admin_enroll_of_a_new_key_drops_the_guard_and_same_key_keeps_it() -> None:
    """Re-enrolling with a new key drops the old guard; with the same key it is kept."""
    old = active(last_step=STEP)
    assert admin_enroll(old, OWNER, OTHER_SECRET, NOW, POLICY).last_step is None
    assert admin_enroll(old, OWNER, SECRET, NOW, POLICY).last_step == STEP


def test_reset_then_enroll_accepts_the_new_keys_first_code_in_the_same_step() -> None:
    """After reset and enroll, the new key's first code is accepted in the step the old was used."""
    now = NOW + 5
    step = time_step(now, POLICY.totp)
    used = run(active(), with_code(code_at_step(SECRET, step)), now=now)
    assert used.decision.accepted and used.record is not None
    reset = admin_reset(used.record, now, POLICY)
    assert reset is not None
    enrolled = admin_enroll(reset, OWNER, OTHER_SECRET, now, POLICY)
    verdict = run(enrolled, with_code(code_at_step(OTHER_SECRET, step)), now=now)
    assert verdict.decision.reason is Reason.ACTIVATED
    assert verdict.record is not None
    assert (verdict.record.state, verdict.record.last_step) == (State.ACTIVE, step)


def test_reset_then_import_of_the_same_key_keeps_a_used_code_a_replay() -> None:
    """Reset forgets the key, not its guard: the same key imported again refuses a used code."""
    now = NOW + 5
    step = time_step(now, POLICY.totp)
    used = run(active(), with_code(code_at_step(SECRET, step)), now=now)
    assert used.decision.accepted and used.record is not None
    reset = admin_reset(used.record, now, POLICY)
    assert reset is not None and reset.secret is None
    again = admin_import(reset, OWNER, SECRET, now)
    verdict = run(again, with_code(code_at_step(SECRET, step)), now=now)
    assert verdict.decision.reason is Reason.REPLAY
    other = admin_import(reset, OWNER, OTHER_SECRET, now)
    assert run(other, with_code(code_at_step(OTHER_SECRET, step)), now=now).decision.accepted


def test_the_guard_tag_never_holds_the_key() -> None:
    """The stored tag of the guard's key is 16 bytes that are not the key or a part of it."""
    tag = guard_tag(SECRET)
    assert len(tag) == 16 and tag not in SECRET and SECRET[:16] != tag
    assert guard_tag(OTHER_SECRET) != tag


def test_admin_operations_key_the_record_by_the_owner() -> None:
    """admin_enroll and admin_import write the owner's entry_id and current name."""
    owner = Identity("other-id", "alice.smith", "uid=alice.smith,dc=example,dc=org")
    for record in (
        admin_enroll(active(), owner, OTHER_SECRET, NOW, POLICY),
        admin_import(active(), owner, OTHER_SECRET, NOW),
    ):
        assert (record.entry_id, record.username) == ("other-id", "alice.smith")
        assert record.created == CREATED


# --- conclude: owner and renames (SPEC 8) -------------------------------------------------


RENAMED = Identity(ENTRY, "alice.smith", "uid=alice.smith,ou=people,dc=example,dc=org")


def test_conclude_renames_a_record_whose_entry_name_changed() -> None:
    """A login after a rename in the directory stores the record under the entry's new name."""
    verdict = conclude(
        active(),
        RENAMED,
        Attempt(PASSWORD),
        exempt=False,
        can_challenge=True,
        now=NOW,
        policy=POLICY,
    )
    assert verdict.decision.reason is Reason.CHALLENGED
    assert verdict.decision.username == "alice.smith"
    assert verdict.changed
    assert verdict.record == active(username="alice.smith")


def test_conclude_renames_a_grace_record_and_writes_it() -> None:
    """A grace login after a rename is still accepted, and the renamed record is written."""
    verdict = conclude(
        grace(),
        RENAMED,
        Attempt(PASSWORD),
        exempt=False,
        can_challenge=True,
        now=NOW,
        policy=POLICY,
    )
    assert verdict.decision.reason is Reason.GRACE
    assert verdict.changed
    assert verdict.record is not None and verdict.record.username == "alice.smith"


def test_conclude_renames_on_an_accepted_code() -> None:
    """An accepted code after a rename writes the record under the new name."""
    verdict = conclude(
        active(),
        RENAMED,
        with_code(code()),
        exempt=False,
        can_challenge=True,
        now=NOW,
        policy=POLICY,
    )
    assert verdict.decision.reason is Reason.ACCEPTED
    assert verdict.record is not None
    assert (verdict.record.username, verdict.record.entry_id) == ("alice.smith", ENTRY)


def test_conclude_unchanged_name_changes_nothing() -> None:
    """With the entry's name as stored, a challenged login writes nothing."""
    verdict = run(active())
    assert not verdict.changed
    assert verdict.record == active()


def test_first_login_record_belongs_to_the_owner() -> None:
    """The grace record made at a first login carries the owner's entry_id and name."""
    owner = Identity("guid-1", "bob", "uid=bob,dc=example,dc=org")
    verdict = conclude(
        None, owner, Attempt(PASSWORD), exempt=False, can_challenge=True, now=NOW, policy=POLICY
    )
    assert verdict.record is not None
    assert (verdict.record.entry_id, verdict.record.username) == ("guid-1", "bob")


# --- plan_given (the portal's separate code field) ----------------------------------------


@pytest.mark.parametrize("record", [None, grace()])
def test_plan_given_ignores_the_code_without_a_secret(record: UserRecord | None) -> None:
    """Without a secret the portal's code field is ignored: only the password is bound."""
    assert plan_given(record, PASSWORD, "123456") == Attempt(PASSWORD)


@pytest.mark.parametrize("factory", [active, pending])
def test_plan_given_keeps_the_code_with_a_secret(factory: object) -> None:
    """With a secret the password and the code stay apart, whatever the code looks like."""
    assert callable(factory)
    assert plan_given(factory(), PASSWORD, "12x") == Attempt(PASSWORD, "12x")


# --- a client's access (SPEC 11) --------------------------------------------------------


@pytest.mark.parametrize(
    "record", [None, grace(), active(), locked()], ids=["new", "grace", "active", "locked"]
)
@pytest.mark.parametrize("exempt", [False, True])
def test_a_user_outside_the_clients_allowed_groups_is_refused_whoever_they_are(
    record: UserRecord | None, exempt: bool
) -> None:
    """Not in the allowed groups: rejected after the right password, the record untouched,
    no code checked and no failure counted, exempt or not."""
    verdict = run(record, with_code(code()), exempt=exempt, access=Access(allowed=False))
    assert verdict.decision.outcome is Outcome.REJECT
    assert verdict.decision.reason is Reason.NOT_ALLOWED
    assert verdict.decision.password_ok
    assert not verdict.changed
    assert verdict.record == record


@pytest.mark.parametrize("record", [None, grace(), active(), locked(), pending()])
def test_a_client_with_mfa_off_accepts_the_password_alone_and_changes_nothing(
    record: UserRecord | None,
) -> None:
    """`mfa: off`: accepted on the password (even a locked MFA state: MFA is not asked
    here), audited as mfa-off, the record as it was."""
    verdict = run(record, access=Access(mfa=False))
    assert (verdict.decision.outcome, verdict.decision.reason) == (Outcome.ACCEPT, Reason.MFA_OFF)
    assert not verdict.changed
    assert verdict.record == record


def test_a_remembered_device_of_an_active_user_needs_no_code() -> None:
    """Remembered: accepted without a code, and a code sent along (a replay, as a device
    that saved password+code sends) is neither checked nor counted as a failure."""
    record = active(last_step=STEP)
    for attempt in (Attempt(PASSWORD), with_code(code()), with_code(wrong_code())):
        verdict = run(record, attempt, can_challenge=False, access=Access(remembered=True))
        assert (verdict.decision.outcome, verdict.decision.reason) == (
            Outcome.ACCEPT,
            Reason.REMEMBERED,
        )
        assert verdict.record == record and not verdict.changed


def test_a_remembered_device_does_not_open_a_lock_or_skip_enrollment() -> None:
    """Locked stays locked; a pending user still confirms the new key with a code."""
    assert run(locked(), access=Access(remembered=True)).decision.reason is Reason.LOCKED
    waiting = run(pending(deadline=None), can_challenge=False, access=Access(remembered=True))
    assert waiting.decision.reason is Reason.CODE_REQUIRED
