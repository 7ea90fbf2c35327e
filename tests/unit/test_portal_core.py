"""The portal's pure parts: sessions and attempt limits on a fake clock, set-up and reset."""

from __future__ import annotations

from bridge.core.policy import DAY, Policy
from bridge.core.selfservice import SetupResult, confirm_secret, may_set_up
from bridge.core.totp import code_at_step
from bridge.core.types import Identity, LockReason, State, UserRecord
from bridge.portal.sessions import AttemptLimiter, Sessions

NOW = 1_700_000_010
OLD = bytes(range(20))
NEW = bytes(range(1, 21))
ALICE = Identity("0b6f2c8e-1f4a-4c3b-9d2e-7a5b3c1d9e8f", "alice", "uid=alice,dc=example,dc=org")
ERIN = Identity("5d2e8a1c-3b7f-4e6a-8c9d-1f0a2b3c4d5e", "erin", "uid=erin,dc=example,dc=org")


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def grace(name: str = "alice") -> UserRecord:
    return UserRecord(
        name,
        State.GRACE,
        deadline=NOW + 14 * DAY,
        created=NOW - DAY,
        updated=NOW,
        entry_id=ALICE.entry_id,
    )


def active(name: str = "alice", last_step: int | None = None) -> UserRecord:
    return UserRecord(
        name,
        State.ACTIVE,
        secret=OLD,
        confirmed=True,
        last_step=last_step,
        created=1,
        updated=1,
        entry_id=ALICE.entry_id,
    )


def code(secret: bytes, steps: int = 0) -> str:
    return code_at_step(secret, NOW // 30 + steps)


# --- sessions ------------------------------------------------------------------------------


def test_session_lives_while_used_and_ends_when_idle() -> None:
    """Each request restarts the idle timer; idle past the limit, the session is gone."""
    clock = Clock()
    sessions = Sessions(clock, idle=300, lifetime=3600)
    session = sessions.start(ALICE)
    clock.now = 299
    assert sessions.get(session.id) is session
    clock.now = 598
    assert sessions.get(session.id) is session
    clock.now = 898
    assert sessions.get(session.id) is None
    assert len(sessions) == 0


def test_session_ends_at_its_lifetime_even_when_busy() -> None:
    """However active, a session ends `lifetime` seconds after sign-in."""
    clock = Clock()
    sessions = Sessions(clock, idle=300, lifetime=600)
    session = sessions.start(ALICE)
    for t in range(100, 600, 100):
        clock.now = t
        assert sessions.get(session.id) is session
    clock.now = 600
    assert sessions.get(session.id) is None


def test_session_ids_and_tokens_are_random_and_distinct() -> None:
    """Each session has its own unguessable id and CSRF token."""
    sessions = Sessions(Clock(), idle=300, lifetime=3600)
    a, b = sessions.start(ALICE), sessions.start(ALICE)
    assert len({a.id, b.id, a.csrf, b.csrf}) == 4
    assert (a.owner, a.username) == (ALICE, "alice")
    assert len(a.id) >= 43  # 256 bits, URL-safe base64
    assert sessions.get("") is None and sessions.get("nope") is None


def test_attempts_limited_in_a_sliding_window() -> None:
    """`limit` attempts per window; the next is refused until the oldest leaves the window."""
    clock = Clock()
    limiter = AttemptLimiter(clock, limit=3, window=60)
    assert [limiter.allow("alice") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("bob")  # keys are counted apart
    clock.now = 59.9
    assert not limiter.allow("alice")
    clock.now = 60.0
    assert limiter.allow("alice")


# --- set-up and reset ----------------------------------------------------------------------


def test_grace_user_confirms_and_is_active_with_the_new_secret() -> None:
    """The first code of the new secret makes the user active with it; the guard moves on."""
    after, result = confirm_secret(
        grace(), ALICE, NEW, code(NEW), now=NOW, policy=Policy(), old_device_proven=False
    )
    assert result is SetupResult.CONFIRMED
    assert after is not None
    assert (after.state, after.secret, after.confirmed) == (State.ACTIVE, NEW, True)
    assert after.last_step == NOW // 30
    assert after.created == NOW - DAY and after.deadline is None
    assert (after.entry_id, after.username) == (ALICE.entry_id, "alice")


def test_wrong_first_code_changes_nothing() -> None:
    """A wrong code leaves the record as it was (same state, same deadline, no failure)."""
    record = grace()
    wrong = "000000" if code(NEW) != "000000" else "111111"
    after, result = confirm_secret(
        record, ALICE, NEW, wrong, now=NOW, policy=Policy(), old_device_proven=False
    )
    assert result is SetupResult.WRONG_CODE
    assert after is record


def test_active_user_needs_the_old_device_first() -> None:
    """An active user may only set up a new secret after proving the current one."""
    record = active()
    assert may_set_up(record, NOW, old_device_proven=False) is SetupResult.PROOF_REQUIRED
    after, result = confirm_secret(
        record, ALICE, NEW, code(NEW), now=NOW, policy=Policy(), old_device_proven=False
    )
    assert (after, result) == (record, SetupResult.PROOF_REQUIRED)
    after, result = confirm_secret(
        record, ALICE, NEW, code(NEW), now=NOW, policy=Policy(), old_device_proven=True
    )
    assert result is SetupResult.CONFIRMED and after is not None and after.secret == NEW


def test_confirming_the_same_key_keeps_the_replay_guard_moving_forward() -> None:
    """Confirming the key the user has: a guard ahead of the confirming step never moves back."""
    record = active(last_step=NOW // 30 + 1)
    after, result = confirm_secret(
        record, ALICE, OLD, code(OLD), now=NOW, policy=Policy(), old_device_proven=True
    )
    assert result is SetupResult.CONFIRMED
    assert after is not None and after.last_step == NOW // 30 + 1


def test_confirming_a_new_key_does_not_inherit_the_old_guard() -> None:
    """A new key's guard is its confirming step, even when the old key's guard was ahead.

    The old rule kept the old key's guard (max of both); the new rule (replay_guard) drops it.
    """
    record = active(last_step=NOW // 30 + 1)
    after, _ = confirm_secret(
        record, ALICE, NEW, code(NEW), now=NOW, policy=Policy(), old_device_proven=True
    )
    assert after is not None and after.last_step == NOW // 30


def test_locked_and_expired_users_cannot_set_up() -> None:
    """Locked by an admin or by an expired period: nothing is issued or confirmed."""
    locked = active().evolve(state=State.LOCKED, lock_reason=LockReason.ADMIN)
    expired = grace().evolve(deadline=NOW - 1)
    for record in (locked, expired):
        assert may_set_up(record, NOW, old_device_proven=True) is SetupResult.LOCKED
        after, result = confirm_secret(
            record, ALICE, NEW, code(NEW), now=NOW, policy=Policy(), old_device_proven=True
        )
        assert (after, result) == (record, SetupResult.LOCKED)


def test_a_user_the_bridge_has_not_seen_may_set_up() -> None:
    """Proactive set-up: no record yet (an exempt user, say) is allowed."""
    assert may_set_up(None, NOW, old_device_proven=False) is SetupResult.CONFIRMED
    after, result = confirm_secret(
        None, ERIN, NEW, code(NEW, -1), now=NOW, policy=Policy(), old_device_proven=False
    )
    assert result is SetupResult.CONFIRMED and after is not None and after.created == NOW


def test_confirming_renames_the_record_to_the_entrys_name() -> None:
    """A record stored under an old name is confirmed under the entry's current name."""
    after, result = confirm_secret(
        grace("alice.old"), ALICE, NEW, code(NEW), now=NOW, policy=Policy(), old_device_proven=False
    )
    assert result is SetupResult.CONFIRMED
    assert after is not None and after.username == "alice"
