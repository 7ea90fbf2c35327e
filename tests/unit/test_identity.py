"""Who a record belongs to: entry ids as text, names as keys, merging one person's records."""

from __future__ import annotations

import base64
import uuid

import pytest

from bridge.core.identity import id_text, merge, name_key, name_keys
from bridge.core.policy import DAY, Policy, admin_unlock, effective
from bridge.core.types import Identity, LockReason, State, UserRecord

GUID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
NOW = 1_700_000_000
KEY = bytes(range(20))
OTHER_KEY = bytes(range(1, 21))
OWNER = Identity("entry-1", "Alice", "uid=alice,ou=people,dc=example,dc=org")


# --- id_text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attribute", ["objectGUID", "objectguid", "OBJECTGUID", "msDS-ConsistencyGuid"]
)
def test_id_text_reads_a_binary_guid_as_ad_shows_it(attribute: str) -> None:
    """A 16-byte objectGUID becomes the GUID's usual text, the attribute name in any case."""
    raw = uuid.UUID(GUID).bytes_le
    assert raw != uuid.UUID(GUID).bytes  # the first three groups really are little-endian
    assert id_text(attribute, raw) == GUID


@pytest.mark.parametrize("attribute", ["entryUUID", "nsUniqueId", "ipaUniqueID", "objectGUID"])
def test_id_text_keeps_a_text_identifier_as_sent(attribute: str) -> None:
    """A text identifier (entryUUID and the like, or a GUID already as text) is kept as sent."""
    for text in (GUID, GUID.upper(), "7c2a9d02-e0f911ee-8c4ba3f1-51d6ea10"):
        assert id_text(attribute, text.encode()) == text


@pytest.mark.parametrize("attribute", ["entryUUID", "objectGUID"])
def test_id_text_of_an_empty_value_is_none(attribute: str) -> None:
    """An empty value identifies nothing: None."""
    assert id_text(attribute, b"") is None


def test_id_text_of_other_binary_is_base64_with_a_prefix() -> None:
    """Binary that is no GUID and no text becomes 'b64:' and its base64."""
    raw = b"\xff\xfe\x00\x01\x80"
    assert id_text("nsUniqueId", raw) == "b64:" + base64.b64encode(raw).decode()
    sixteen = uuid.UUID(GUID).bytes_le  # 16 bytes, but the attribute holds no GUID
    assert id_text("entryUUID", sixteen) == "b64:" + base64.b64encode(sixteen).decode()


@pytest.mark.parametrize("raw", [b"\x01\x02\x03", bytes(range(15)), bytes(range(17))])
def test_id_text_of_an_objectguid_that_is_not_16_bytes(raw: bytes) -> None:
    """An objectGUID of the wrong length is not read as a GUID: it is kept, as base64."""
    assert id_text("objectGUID", raw) == "b64:" + base64.b64encode(raw).decode()


def test_id_text_is_stable_and_distinct() -> None:
    """The same value always gives the same text; different GUIDs give different texts."""
    a, b = uuid.uuid4().bytes_le, uuid.uuid4().bytes_le
    assert id_text("objectGUID", a) == id_text("objectGUID", a)
    assert id_text("objectGUID", a) != id_text("objectGUID", b)


# --- name_key -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Alice", "alice"),
        ("ALICE", "alice"),
        ("\uff21\uff4c\uff49\uff43\uff45", "alice"),  # full-width: NFKC folds it
        ("Jo  Smith", "jo smith"),
        ("jo     smith", "jo smith"),
        ("Jo\u00a0Smith", "jo smith"),  # no-break space
        ("jo\u00a0\u00a0 smith", "jo smith"),
        ("  alice  ", "alice"),
        ("\u00a0alice\u00a0", "alice"),
        ("Stra\u00dfe", "strasse"),
    ],
)
def test_name_key_folds_case_width_and_runs_of_spaces(name: str, key: str) -> None:
    """Case, NFKC width forms and space runs fold away; blanks at either end are dropped."""
    assert name_key(name) == key


@pytest.mark.parametrize("name", ["", "   ", "\u00a0", "a\x00b"])
def test_name_key_of_an_unusable_name_is_none(name: str) -> None:
    """Empty, blank or control-character names have no key."""
    assert name_key(name) is None


def test_name_keys_drops_unusable_names_and_duplicates() -> None:
    """name_keys keeps one key per spelling and skips names without one."""
    assert name_keys(["Alice", "alice ", "", "Jo  Smith"]) == frozenset({"alice", "jo smith"})


# --- merge ----------------------------------------------------------------------------------


def record(
    state: State,
    username: str = "alice",
    *,
    secret: bytes | None = KEY,
    last_step: int | None = None,
    created: int = NOW - 10 * DAY,
    updated: int = NOW - DAY,
    deadline: int | None = None,
) -> UserRecord:
    """A record as it might have been kept under one of the person's names."""
    if state in (State.GRACE, State.PENDING) and deadline is None:
        deadline = NOW + 5 * DAY
    if state is State.GRACE:
        secret = None
    return UserRecord(
        username,
        state,
        deadline=deadline,
        secret=secret,
        last_step=last_step,
        lock_reason=LockReason.ADMIN if state is State.LOCKED else None,
        confirmed=state in (State.ACTIVE, State.LOCKED),
        created=created,
        updated=updated,
        entry_id=f"old:{username}",
    )


ORDER = [State.GRACE, State.PENDING, State.ACTIVE, State.LOCKED]


@pytest.mark.parametrize(
    ("weaker", "stricter"),
    [(ORDER[i], ORDER[j]) for i in range(len(ORDER)) for j in range(i + 1, len(ORDER))],
)
def test_merge_keeps_the_strictest_state(weaker: State, stricter: State) -> None:
    """locked beats active beats pending beats grace, in whatever order records come."""
    weak = record(weaker, "alice", updated=NOW)  # own name and newer: still loses
    strict = record(stricter, "alice@example.org", updated=NOW - 5 * DAY)
    for pool in ([weak, strict], [strict, weak]):
        assert merge(pool, OWNER, NOW).state is stricter


def test_merge_a_period_run_out_under_one_name_does_not_lock_an_enrollment() -> None:
    """An expired grace record under the mail loses to the active record: she did enroll."""
    expired = record(State.GRACE, "alice@example.org", deadline=NOW - 1, updated=NOW)
    ok = record(State.ACTIVE, "alice", last_step=70)
    for pool in ([ok, expired], [expired, ok]):
        merged = merge(pool, OWNER, NOW)
        assert (merged.state, merged.secret, merged.confirmed) == (State.ACTIVE, KEY, True)
        assert merged.last_step == 70


def test_merge_of_grace_records_keeps_a_period_that_ran_out() -> None:
    """Without any enrollment, the expired period wins over a fresh one: a lock at `now`."""
    expired = record(State.GRACE, "alice@example.org", deadline=NOW - 1)
    fresh = record(State.GRACE, "alice", deadline=NOW + 9 * DAY, updated=NOW)
    merged = effective(merge([fresh, expired], OWNER, NOW), NOW)
    assert (merged.state, merged.lock_reason) == (State.LOCKED, LockReason.ENROLLMENT_EXPIRED)


def test_merge_of_grace_records_keeps_the_earliest_deadline() -> None:
    """Two periods of one person: the one that started first (ends first) is theirs."""
    early = record(State.GRACE, "alice@example.org", deadline=NOW + 2 * DAY)
    late = record(State.GRACE, "alice", deadline=NOW + 12 * DAY, updated=NOW)
    assert merge([late, early], OWNER, NOW).deadline == NOW + 2 * DAY


def test_merge_lock_without_a_secret_keeps_the_enrollment_for_the_unlock() -> None:
    """An admin's lock under one name wins, with the other name's secret kept: unlock -> active."""
    locked = record(State.LOCKED, "alice@example.org", secret=None)
    ok = record(State.ACTIVE, "alice", last_step=40, updated=NOW)
    merged = merge([ok, locked], OWNER, NOW)
    assert (merged.state, merged.lock_reason) == (State.LOCKED, LockReason.ADMIN)
    assert (merged.secret, merged.confirmed, merged.last_step) == (KEY, True, 40)
    unlocked = admin_unlock(merged, NOW, Policy())
    assert unlocked is not None and unlocked.state is State.ACTIVE


def test_merge_prefers_a_confirmed_secret_to_a_pending_one() -> None:
    """A pending secret under one name never replaces the confirmed one under another."""
    pending = record(State.PENDING, "alice@example.org", secret=OTHER_KEY, updated=NOW)
    locked = record(State.LOCKED, "alice", secret=KEY)
    merged = merge([pending, locked], OWNER, NOW)
    assert (merged.state, merged.secret, merged.confirmed) == (State.LOCKED, KEY, True)


def test_merge_tie_goes_to_the_record_under_the_entrys_own_name() -> None:
    """Between equally strict records, the one under the entry's name wins, even if older."""
    own = record(State.ACTIVE, "alice", secret=KEY, updated=NOW - 9 * DAY)
    mail = record(State.ACTIVE, "alice@example.org", secret=OTHER_KEY, updated=NOW)
    for pool in ([own, mail], [mail, own]):
        assert merge(pool, OWNER, NOW).secret == KEY  # OWNER.name is "Alice": matched by key


def test_merge_tie_without_the_own_name_goes_to_the_newest() -> None:
    """Between equally strict records under other names, the most recently updated wins."""
    old = record(State.ACTIVE, "a.smith", secret=KEY, updated=NOW - 9 * DAY)
    new = record(State.ACTIVE, "alice@example.org", secret=OTHER_KEY, updated=NOW - DAY)
    for pool in ([old, new], [new, old]):
        assert merge(pool, OWNER, NOW).secret == OTHER_KEY


def test_merge_replay_guard_is_the_highest_step_of_the_winners_secret() -> None:
    """The guard is the max last_step over records with the winner's secret, and only those."""
    winner = record(State.LOCKED, "alice", secret=KEY, last_step=10)
    same_key = record(State.ACTIVE, "alice@example.org", secret=KEY, last_step=30)
    other_key = record(State.PENDING, "asmith", secret=OTHER_KEY, last_step=50)
    merged = merge([winner, same_key, other_key], OWNER, NOW)
    assert (merged.state, merged.secret, merged.last_step) == (State.LOCKED, KEY, 30)


def test_merge_replay_guard_ignores_a_higher_step_of_another_key() -> None:
    """A higher step used with another key never becomes the winner's guard."""
    winner = record(State.ACTIVE, "alice", secret=KEY, last_step=None)
    other_key = record(State.PENDING, "asmith", secret=OTHER_KEY, last_step=99)
    assert merge([winner, other_key], OWNER, NOW).last_step is None


def test_merge_keeps_the_earliest_created() -> None:
    """The merged record was created when the oldest of the records was."""
    a = record(State.ACTIVE, "alice", created=NOW - 3 * DAY)
    b = record(State.GRACE, "alice@example.org", created=NOW - 30 * DAY)
    assert merge([a, b], OWNER, NOW).created == NOW - 30 * DAY


def test_merge_result_belongs_to_the_owner() -> None:
    """The merged record carries the owner's entry_id and the entry's name."""
    merged = merge([record(State.ACTIVE, "alice@example.org")], OWNER, NOW)
    assert (merged.entry_id, merged.username) == (OWNER.entry_id, "Alice")
    assert merged.secret == KEY


def test_merge_of_nothing_raises() -> None:
    """Merging no records is a programming error: ValueError."""
    with pytest.raises(ValueError, match="nothing"):
        merge([], OWNER, NOW)
