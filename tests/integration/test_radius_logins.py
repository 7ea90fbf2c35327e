"""Logins over RADIUS against the real slapd: the state machine of SPEC section 2 end to end."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.core.types import State, UserRecord
from bridge.store import SqliteStore
from tests.harness import Bridge, RadiusClient, code_for
from tests.slapd import Slapd

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
ClientFor = Callable[..., RadiusClient]


def enroll(bridge: Bridge, user: str) -> str:
    """Enroll through the CLI and return the base32 key it printed."""
    result = bridge.cli("user", "enroll", user, "--json")
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["state"] == "pending"
    return str(view["secret"])


def activate(bridge: Bridge, client: RadiusClient, user: str, password: str) -> str:
    """Make the user active and return the key: enroll + first code, or (challenge mode,
    where the code only comes after a challenge) an import."""
    if bridge.config["radius"]["mode"] == "challenge":
        secret = new_key()
        csv = bridge.workdir / f"{user}.csv"
        csv.write_text(f"username,secret\n{user},{secret}\n")
        result = bridge.cli("user", "import", str(csv))
        assert result.returncode == 0, result.stderr
        return secret
    secret = enroll(bridge, user)
    reply = client.login(user, password + code_for(secret))
    assert reply is not None and reply.accepted
    return secret


def new_key() -> str:
    from bridge.core.totp import encode_secret, new_secret  # noqa: PLC0415

    return encode_secret(new_secret())


def status(bridge: Bridge, user: str) -> dict[str, object]:
    result = bridge.cli("user", "status", user, "--json")
    assert result.returncode == 0, result.stderr
    view: dict[str, object] = json.loads(result.stdout)
    return view


def store_of(bridge: Bridge) -> SqliteStore:
    path = Path(bridge.config["store"]["path"])
    return SqliteStore.open(path, path.with_suffix(".key"))


def test_first_login_is_grace_with_days_left(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """A user's first correct password is accepted with the days-left notice, and recorded."""
    bridge = make_bridge()
    reply = client_for(bridge).login("alice", "alice-pw")
    assert reply is not None and reply.accepted and reply.valid
    assert reply.message == "14 days left to set up MFA"
    view = status(bridge, "alice")
    assert view["state"] == "grace" and view["days_left"] == 14


def test_wrong_password_rejected_without_reason(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """A wrong password is rejected and the reply says nothing about the account."""
    bridge = make_bridge()
    reply = client_for(bridge).login("alice", "not-her-password")
    assert reply is not None and reply.rejected and reply.valid
    assert reply.message == ""


def test_enroll_then_first_code_activates(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    """enroll makes the user pending; password+code then logs in and makes them active."""
    bridge = make_bridge()
    client = client_for(bridge)
    secret = enroll(bridge, "bob")
    pending = client.login("bob", "bob-pw")
    assert pending is not None and pending.accepted and "day" in pending.message
    reply = client.login("bob", "bob-pw" + code_for(secret))
    assert reply is not None and reply.accepted
    assert status(bridge, "bob")["state"] == "active"


def test_active_user_append_accept_and_wrong_code(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """An active user gets in with password+code and is rejected with a wrong code."""
    bridge = make_bridge(mode="append")
    client = client_for(bridge)
    secret = activate(bridge, client, "carol", "carol-pw")
    good = client.login("carol", "carol-pw" + code_for(secret, 1))
    assert good is not None and good.accepted
    wrong = "000000" if code_for(secret, 2) != "000000" else "111111"
    bad = client.login("carol", "carol-pw" + wrong)
    assert bad is not None and bad.rejected
    assert status(bridge, "carol")["failures"] == 1


def test_password_only_rejected_in_append_mode(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """In append mode an enrolled user who sends no code is rejected, told to add it."""
    bridge = make_bridge(mode="append")
    client = client_for(bridge)
    activate(bridge, client, "erin", "erin-pw")
    reply = client.login("erin", "erin-pw")
    assert reply is not None and reply.rejected
    assert "code" in reply.message


def test_wrong_password_right_code_keeps_code_usable(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """A right code with a wrong password is not consumed: it works with the right password."""
    bridge = make_bridge(mode="append")
    client = client_for(bridge)
    secret = activate(bridge, client, "frank", "frank-pw")
    code = code_for(secret, 1)
    bad = client.login("frank", "wrong-pw" + code)
    assert bad is not None and bad.rejected and bad.message == ""
    good = client.login("frank", "frank-pw" + code)
    assert good is not None and good.accepted
    assert status(bridge, "frank")["failures"] == 0


def test_replayed_code_rejected(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    """A code accepted once is rejected the second time, in a new request."""
    bridge = make_bridge(mode="append")
    client = client_for(bridge)
    secret = activate(bridge, client, "grace", "grace-pw")
    code = code_for(secret, 1)
    first = client.login("grace", "grace-pw" + code)
    assert first is not None and first.accepted
    again = client.login("grace", "grace-pw" + code)
    assert again is not None and again.rejected


def test_challenge_round_trip(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    """Challenge mode: password draws a Challenge with State; State + code is accepted."""
    bridge = make_bridge(mode="challenge")
    client = client_for(bridge)
    secret = activate(bridge, client, "heidi", "heidi-pw")
    challenge = client.login("heidi", "heidi-pw")
    assert challenge is not None and challenge.challenged and challenge.valid
    assert challenge.state is not None and len(challenge.state) >= 16
    assert "code" in challenge.message
    reply = client.login("heidi", code_for(secret, 1), state=challenge.state)
    assert reply is not None and reply.accepted


def test_challenge_state_reuse_forgery_and_binding(
    make_bridge: MakeBridge, client_for: ClientFor, slapd: Slapd
) -> None:
    """A reused, made-up or other user's State is rejected, without a bind to the directory."""
    bridge = make_bridge(mode="challenge")
    client = client_for(bridge)
    secret = activate(bridge, client, "ivan", "ivan-pw")
    first = client.login("ivan", "ivan-pw")
    assert first is not None and first.state is not None
    ok = client.login("ivan", code_for(secret, 1), state=first.state)
    assert ok is not None and ok.accepted
    binds = slapd.bind_count()
    reused = client.login("ivan", code_for(secret, 1), state=first.state)
    assert reused is not None and reused.rejected
    forged = client.login("ivan", code_for(secret, 1), state=b"\x01" * 16)
    assert forged is not None and forged.rejected
    second = client.login("ivan", "ivan-pw")
    assert second is not None and second.state is not None
    binds = slapd.bind_count()
    other_user = client.login("judy", code_for(secret, 1), state=second.state)
    assert other_user is not None and other_user.rejected
    assert slapd.bind_count() == binds


def test_auto_mode_uses_appended_code_or_challenges(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """Auto mode: a valid appended code logs in at once; the password alone draws a challenge."""
    bridge = make_bridge(mode="auto")
    client = client_for(bridge)
    secret = activate(bridge, client, "judy", "judy-pw")
    direct = client.login("judy", "judy-pw" + code_for(secret, 1))
    assert direct is not None and direct.accepted
    challenge = client.login("judy", "judy-pw")
    assert challenge is not None and challenge.challenged


def test_password_ending_in_digits_in_auto_mode(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """Auto mode: a password that itself ends in six digits still works (grace, then challenge)."""
    bridge = make_bridge(mode="auto")
    client = client_for(bridge)
    grace = client.login("digits", "pass123456")
    assert grace is not None and grace.accepted
    secret = activate(bridge, client, "digits", "pass123456")
    challenge = client.login("digits", "pass123456")
    assert challenge is not None and challenge.challenged
    reply = client.login("digits", code_for(secret, 1), state=challenge.state)
    assert reply is not None and reply.accepted


def test_expired_enrollment_locks(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    """A grace user whose deadline passed is locked at the next login and told so."""
    bridge = make_bridge()
    client = client_for(bridge)
    first = client.login("mallory", "mallory-pw")
    assert first is not None and first.accepted
    store = store_of(bridge)
    past = int(time.time()) - 10
    (record,) = store.named("mallory")
    store.update(record.entry_id, lambda r: (r.evolve(deadline=past) if r else None, None))
    store.close()
    wrong = client.login("mallory", "wrong")
    assert wrong is not None and wrong.rejected and wrong.message == ""
    reply = client.login("mallory", "mallory-pw")
    assert reply is not None and reply.rejected and "locked" in reply.message
    view = status(bridge, "mallory")
    assert view["state"] == "locked" and view["lock_reason"] == "enrollment-expired"
    unlocked = bridge.cli("user", "unlock", "mallory", "--days", "3", "--json")
    assert unlocked.returncode == 0 and json.loads(unlocked.stdout)["days_left"] == 3
    again = client.login("mallory", "mallory-pw")
    assert again is not None and again.accepted and again.message == "3 days left to set up MFA"


def test_failures_lock_and_unlock(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    """max_failures wrong codes lock the user (even a right code fails); unlock restores them."""
    bridge = make_bridge(mode="append")
    client = client_for(bridge)
    secret = activate(bridge, client, "oscar", "oscar-pw")
    wrong = "000000" if "000000" not in {code_for(secret, i) for i in (-1, 0, 1, 2)} else "999999"
    replies = [client.login("oscar", "oscar-pw" + wrong) for _ in range(3)]
    assert all(r is not None and r.rejected for r in replies)
    assert replies[-1] is not None and "locked" in replies[-1].message
    right = client.login("oscar", "oscar-pw" + code_for(secret, 1))
    assert right is not None and right.rejected and "locked" in right.message
    assert status(bridge, "oscar")["lock_reason"] == "failures"
    result = bridge.cli("user", "unlock", "oscar", "--json")
    assert result.returncode == 0
    view = json.loads(result.stdout)
    assert view["state"] == "active" and view["failures"] == 0
    reply = client.login("oscar", "oscar-pw" + code_for(secret, 1))
    assert reply is not None and reply.accepted


def test_admin_lock_and_reset(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    """An admin lock rejects the user; reset forgets the secret and gives a fresh grace period."""
    bridge = make_bridge(mode="append")
    client = client_for(bridge)
    secret = activate(bridge, client, "peggy", "peggy-pw")
    assert bridge.cli("user", "lock", "peggy").returncode == 0
    locked = client.login("peggy", "peggy-pw" + code_for(secret, 1))
    assert locked is not None and locked.rejected and "locked" in locked.message
    assert status(bridge, "peggy")["lock_reason"] == "admin"
    assert bridge.cli("user", "reset", "peggy").returncode == 0
    view = status(bridge, "peggy")
    assert view["state"] == "grace" and view["days_left"] == 14
    reply = client.login("peggy", "peggy-pw")
    assert reply is not None and reply.accepted and "14 days" in reply.message


def test_import_makes_users_active(
    make_bridge: MakeBridge, client_for: ClientFor, tmp_path: Path
) -> None:
    """Imported secrets are active at once: password alone challenged, password+code accepted."""
    bridge = make_bridge(mode="auto")
    client = client_for(bridge)
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    csv = tmp_path / "users.csv"
    csv.write_text(f"username,secret\ntrent,{secret}\nvictor,{secret.lower()}\n")
    result = bridge.cli("user", "import", str(csv))
    assert result.returncode == 0, result.stderr
    assert status(bridge, "trent")["state"] == "active"
    challenge = client.login("trent", "trent-pw")
    assert challenge is not None and challenge.challenged
    reply = client.login("victor", "victor-pw" + code_for(secret))
    assert reply is not None and reply.accepted


def test_exempt_group_member_needs_no_code(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    """A member of an exempt group logs in with the password alone and gets no record."""
    bridge = make_bridge(mode="append")
    reply = client_for(bridge).login("dave", "dave-pw")
    assert reply is not None and reply.accepted and reply.message == ""
    assert bridge.cli("user", "status", "dave").stdout == "dave: exempt\n"
    assert bridge.cli("user", "list").stdout == "no users\n"


def test_empty_password_refused_before_the_directory(
    make_bridge: MakeBridge, client_for: ClientFor, slapd: Slapd
) -> None:
    """An empty password is rejected without any bind (slapd here would accept it as anonymous)."""
    bridge = make_bridge()
    client = client_for(bridge)
    bridge.wait_for_directory()  # its own connections' binds are not the login's
    binds = slapd.bind_count()
    reply = client.login("walter", "")
    assert reply is not None and reply.rejected
    assert slapd.bind_count() == binds
    assert bridge.cli("user", "status", "walter").returncode == 1


@pytest.mark.parametrize("name", ["*", "u*", "alice)(uid=*", "*)(|(uid=*"])
def test_filter_injection_finds_nobody(
    make_bridge: MakeBridge, client_for: ClientFor, name: str
) -> None:
    """User names with filter syntax are escaped: they match no entry and are rejected."""
    bridge = make_bridge()
    client = client_for(bridge)
    for password in ("u-pw", "u1-pw", "alice-pw"):
        reply = client.login(name, password)
        assert reply is not None and reply.rejected
    assert "unknown-user" in bridge.log()


@pytest.mark.parametrize(
    ("name", "password"), [("józsef", "józsef-pw"), ("mary ann", "mary-ann-pw")]
)
def test_non_ascii_and_spaces_in_user_names(
    make_bridge: MakeBridge, client_for: ClientFor, name: str, password: str
) -> None:
    """Non-ASCII and space-containing user names log in, case-insensitively."""
    bridge = make_bridge()
    client = client_for(bridge)
    reply = client.login(name.upper(), password)
    assert reply is not None and reply.accepted
    assert status(bridge, name)["state"] == "grace"


def test_passwords_codes_and_secrets_never_logged(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """The daemon's log (at debug level) holds no password, code or secret it handled."""
    bridge = make_bridge(mode="append")
    client = client_for(bridge)
    secret = activate(bridge, client, "walter", "walter-pw")
    code = code_for(secret, 1)
    client.login("walter", "walter-pw" + code)
    client.login("walter", "bad-pw" + code)
    log = bridge.log()
    assert "auth.accept" in log
    for needle in ("walter-pw", "bad-pw", code, secret):
        assert needle not in log


def test_store_keeps_secrets_encrypted(make_bridge: MakeBridge) -> None:
    """The database file never holds a TOTP key in base32 or raw form."""
    bridge = make_bridge(start=False)
    secret = enroll(bridge, "alice")
    from bridge.core.totp import decode_secret  # noqa: PLC0415

    path = Path(bridge.config["store"]["path"])
    data = b"".join(p.read_bytes() for p in path.parent.glob("state.db*"))
    assert secret.encode() not in data and decode_secret(secret) not in data
    key = path.with_suffix(".key")
    assert key.stat().st_mode & 0o077 == 0


def test_record_types_round_trip(tmp_path: Path) -> None:
    """A record with every field set is read back equal (store sanity, no daemon)."""
    store = SqliteStore.open(tmp_path / "s.db", tmp_path / "s.key")
    record = UserRecord("zoë", State.ACTIVE, 5, 2, 77, b"k" * 20, None, True, 1, 2, entry_id="id-z")
    store.update("id-z", lambda _old: (record, None))
    stored = store.get("id-z")
    assert stored is not None
    assert stored.evolve(version=0) == record
    store.close()


def test_exempt_user_by_name(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    """A user listed in mfa.exempt_users (any case) logs in with the password alone."""

    def exempt_judy(config: dict[str, object]) -> None:
        config["mfa"]["exempt_users"] = ["Judy"]  # type: ignore[index]

    bridge = make_bridge(mode="append", change=exempt_judy)
    client = client_for(bridge)
    reply = client.login("judy", "judy-pw")
    assert reply is not None and reply.accepted and reply.message == ""
    assert status(bridge, "judy")["state"] == "exempt"
    wrong = client.login("judy", "not-judy")
    assert wrong is not None and wrong.rejected
