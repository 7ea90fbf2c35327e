"""One MFA record per person (SPEC section 8), against the real slapd and real clients.

The directory lets users log in by uid or by mail (`(|(uid={username})(mail={username}))`,
the shape of Active Directory's sAMAccountName-or-UPN filter); `kim` also has a second
uid, `kim.lee`. Whatever name is typed, over RADIUS, the LDAP proxy, the portal or the
CLI, the record is the entry's: no other name gets an enrollment period of its own.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Bridge, RadiusClient, code_for, free_tcp_port
from tests.integration.test_ldap_proxy import proxy_url, whoami, with_proxy
from tests.integration.test_portal import portal, with_portal
from tests.slapd import Slapd

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
ClientFor = Callable[..., RadiusClient]

OR_FILTER = "(|(uid={username})(mail={username}))"
KIM_NAMES = ["kim", "kim@example.org", "KIM@Example.ORG", "kim.lee", " Kim "]
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # the key in the previous release's store too
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store-v2"
CODE_HINT = "6-digit code"


def by_uid_or_mail(*more: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """A `make_bridge(change=...)`: logins by uid or mail, plus any other changes."""

    def change(config: dict[str, Any]) -> None:
        config["directory"]["user_filter"] = OR_FILTER
        for other in more:
            other(config)

    return change


def import_key(bridge: Bridge, user: str, secret: str = SECRET) -> None:
    """`user import` of one known key: the user is active with it."""
    csv = bridge.workdir / f"import-{time.monotonic_ns()}.csv"
    csv.write_text(f"username,secret\n{user},{secret}\n")
    result = bridge.cli("user", "import", str(csv))
    assert result.returncode == 0, result.stderr


def users(bridge: Bridge) -> list[dict[str, Any]]:
    """`user list --json`."""
    result = bridge.cli("user", "list", "--json")
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, Any]] = json.loads(result.stdout)
    return listed


def fresh_code(secret: str = SECRET) -> str:
    """A code of `secret` in a step no earlier test of this daemon used (the next step)."""
    return code_for(secret, 1)


def test_an_active_user_is_asked_for_the_code_under_every_name(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """Enrolled by mail, activated by uid: every other name is asked for the code, no grace."""
    bridge = make_bridge(change=by_uid_or_mail(), mode="append")
    enrolled = bridge.cli("user", "enroll", "kim@example.org", "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    view = json.loads(enrolled.stdout)
    assert (view["username"], view["state"]) == ("kim", "pending")
    assert "otpauth://totp/Example%20Corp:kim?" in view["uri"]
    client = client_for(bridge)
    activated = client.login("kim", "kim-pw" + code_for(view["secret"]))
    assert activated is not None and activated.accepted
    for name in KIM_NAMES:
        reply = client.login(name, "kim-pw")
        assert reply is not None and reply.rejected, name
        assert CODE_HINT in reply.message and "left to set up" not in reply.message, name
    assert [(u["username"], u["state"]) for u in users(bridge)] == [("kim", "active")]
    audited = [a for a in bridge.audit() if a["reason"] == "code-required"]
    assert {a["user"] for a in audited} == {"kim"}
    assert {a.get("login") for a in audited} == {None, "kim@example.org", "kim.lee"}


def test_a_code_used_under_one_name_is_a_replay_under_another(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """Password+code is accepted once, by whichever name; the same code by another is a replay."""
    bridge = make_bridge(change=by_uid_or_mail(), mode="append")
    import_key(bridge, "kim.lee")
    client = client_for(bridge)
    code = fresh_code()
    first = client.login("kim@example.org", "kim-pw" + code)
    assert first is not None and first.accepted
    for name in ("kim", "kim.lee", "KIM@EXAMPLE.ORG"):
        again = client.login(name, "kim-pw" + code)
        assert again is not None and again.rejected, name
    assert bridge.audit_reasons()[-3:] == ["replay", "replay", "replay"]


def test_wrong_codes_under_several_names_add_up_to_one_lock(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """max_failures counts the person: one wrong code under each of three names locks kim."""
    bridge = make_bridge(change=by_uid_or_mail(), mode="append")
    import_key(bridge, "kim")
    client = client_for(bridge)
    good = fresh_code()
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    for name in ("kim", "kim@example.org", "kim.lee"):
        reply = client.login(name, "kim-pw" + wrong)
        assert reply is not None and reply.rejected, name
    locked = client.login("kim@example.org", "kim-pw" + good)
    assert locked is not None and locked.rejected and "locked" in locked.message
    status = json.loads(bridge.cli("user", "status", "kim.lee", "--json").stdout)
    assert (status["username"], status["state"], status["lock_reason"]) == (
        "kim",
        "locked",
        "failures",
    )


def test_a_challenge_by_mail_is_answered_against_the_entry(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """challenge mode: the State issued to the mail name takes the code of the entry's key."""
    bridge = make_bridge(change=by_uid_or_mail(), mode="challenge")
    import_key(bridge, "kim")
    client = client_for(bridge)
    challenge = client.login("kim@example.org", "kim-pw")
    assert challenge is not None and challenge.challenged
    code = fresh_code()
    answer = client.login("kim@example.org", code, state=challenge.state)
    assert answer is not None and answer.accepted
    again = client.login("kim", "kim-pw")
    assert again is not None and again.challenged
    replayed = client.login("kim", code, state=again.state)
    assert replayed is not None and replayed.rejected
    assert bridge.audit_reasons()[-1] == "replay"


def test_auto_mode_accepts_by_mail_and_challenges_by_uid(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """auto mode: an appended code works by mail; the password alone by uid draws a challenge."""
    bridge = make_bridge(change=by_uid_or_mail(), mode="auto")
    import_key(bridge, "kim")
    client = client_for(bridge)
    accepted = client.login("kim@example.org", "kim-pw" + fresh_code())
    assert accepted is not None and accepted.accepted
    challenged = client.login("KIM", "kim-pw")
    assert challenged is not None and challenged.challenged


def test_spaces_and_case_the_directory_ignores_reach_the_same_record(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """'jo  smith', 'JO  SMITH', a no-break space: slapd finds jo smith; all are challenged."""
    bridge = make_bridge(change=by_uid_or_mail(), mode="auto")
    import_key(bridge, "jo smith")
    client = client_for(bridge)
    for name in ("jo smith", "jo  smith", "JO  SMITH", "jo \u00a0smith", "Jo.Smith@example.org"):
        reply = client.login(name, "pw-jo smith")
        assert reply is not None and reply.challenged, name
    assert [(u["username"], u["state"]) for u in users(bridge)] == [("jo smith", "active")]


def test_a_grace_user_has_one_deadline_whatever_the_name(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """A user in grace logging in by uid then by mail has one record, one deadline."""
    bridge = make_bridge(change=by_uid_or_mail(), mode="append")
    client = client_for(bridge)
    for name in ("kim", "kim@example.org", "kim.lee"):
        reply = client.login(name, "kim-pw")
        assert reply is not None and reply.accepted, name
        assert reply.message.startswith("14 days left"), name
    listed = users(bridge)
    assert [(u["username"], u["state"]) for u in listed] == [("kim", "grace")]


def test_exempt_users_match_the_entry_name_not_the_name_typed(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """exempt_users: [kim] exempts kim by mail too; listing her mail exempts nobody."""

    def exempt(names: list[str]) -> Callable[[dict[str, Any]], None]:
        return by_uid_or_mail(lambda config: config["mfa"].update(exempt_users=names))

    by_name = make_bridge(change=exempt(["kim"]), mode="append")
    reply = client_for(by_name).login("kim@example.org", "kim-pw")
    assert reply is not None and reply.accepted
    assert by_name.audit_reasons() == ["exempt"]
    status = json.loads(by_name.cli("user", "status", "kim.lee", "--json").stdout)
    assert (status["username"], status["state"]) == ("kim", "exempt")

    by_mail = make_bridge(change=exempt(["kim@example.org"]), mode="append")
    import_key(by_mail, "kim")
    refused = client_for(by_mail).login("kim@example.org", "kim-pw")
    assert refused is not None and refused.rejected
    assert by_mail.audit_reasons() == ["code-required"]


def test_ldap_proxy_bind_by_mail_or_dn_uses_the_entry_record(
    slapd: Slapd, make_bridge: MakeBridge
) -> None:
    """A bare-name bind by mail needs the code; the code then used is a replay by DN (with
    rebinds off; with them, the same app binding again is accepted: test_ldap_proxy)."""
    bridge = make_bridge(change=by_uid_or_mail(with_proxy(rebind_seconds=0)))
    import_key(bridge, "kim")
    url = proxy_url(bridge)
    assert whoami(url, "kim@example.org", "kim-pw").returncode == 49
    code = fresh_code()
    bound = whoami(url, "kim@example.org", "kim-pw" + code)
    assert bound.returncode == 0, bound.stderr
    assert slapd.user_dn("kim").lower() in bound.stdout.lower()
    replayed = whoami(url, slapd.user_dn("kim"), "kim-pw" + code)
    assert replayed.returncode == 49
    assert bridge.audit_reasons("ldap")[-3:] == ["code-required", "accepted", "replay"]


def test_portal_sign_in_by_mail_shows_the_entry_state(make_bridge: MakeBridge) -> None:
    """The portal asks kim, signing in by mail, for the code of her one active record."""
    bridge = make_bridge(change=by_uid_or_mail(with_portal()))
    import_key(bridge, "kim")
    asked = portal(bridge).sign_in("kim@example.org", "kim-pw")
    assert "enter the 6-digit code too" in asked.body
    client = portal(bridge)
    assert client.sign_in("KIM.LEE", "kim-pw", fresh_code()).status == 303
    page = client.get("/")
    assert "kim" in page.body and "active" in page.body.lower()
    assert [(u["username"], u["state"]) for u in users(bridge)] == [("kim", "active")]


def test_enroll_of_a_name_the_directory_does_not_know_creates_nothing(
    make_bridge: MakeBridge,
) -> None:
    """`user enroll` of a typo exits 1 with one line and leaves the store empty."""
    bridge = make_bridge(change=by_uid_or_mail(), start=False)
    result = bridge.cli("user", "enroll", "kmi@example.org")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "unknown user" in result.stderr
    assert users(bridge) == []


def test_lock_and_status_by_stored_name_while_the_directory_is_down(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """With no directory, `user lock kim` still locks (by stored name); enroll is refused."""
    bridge = make_bridge(change=by_uid_or_mail(), mode="append")
    import_key(bridge, "kim")
    real_urls = bridge.config["directory"]["urls"]
    bridge.config["directory"]["urls"] = [f"ldap://127.0.0.1:{free_tcp_port()}"]
    locked = bridge.cli("user", "lock", "KIM", "--json")
    assert locked.returncode == 0, locked.stderr
    assert json.loads(locked.stdout)["state"] == "locked"
    assert "note: directory unreachable" in locked.stderr
    status = bridge.cli("user", "status", "kim", "--json")
    assert json.loads(status.stdout)["state"] == "locked"
    refused = bridge.cli("user", "enroll", "kim")
    assert refused.returncode == 1 and "directory unreachable" in refused.stderr
    bridge.config["directory"]["urls"] = real_urls
    bridge.write_config()
    reply = client_for(bridge).login("kim@example.org", "kim-pw" + fresh_code())
    assert reply is not None and reply.rejected and "locked" in reply.message


def test_a_store_of_the_previous_release_is_attached_at_start(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """Rows keyed by typed names become the entries' records; strictest wins; none is lost."""

    def old_store(config: dict[str, Any]) -> None:
        workdir = Path(config["store"]["path"]).parent
        shutil.copy(FIXTURE / "state.db", workdir / "old.db")
        shutil.copy(FIXTURE / "state.key", workdir / "old.key")
        (workdir / "old.key").chmod(0o600)
        config["store"] = {"path": str(workdir / "old.db"), "key_file": str(workdir / "old.key")}

    bridge = make_bridge(change=by_uid_or_mail(old_store), mode="append")
    deadline = time.monotonic() + 10
    while "store.upgrade: done" not in bridge.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "store.upgrade: done, 5 records attached; 1 name" in bridge.log()
    assert "store.merged" in bridge.log()
    listed = {u["username"]: u for u in users(bridge)}
    assert {name: u["state"] for name, u in listed.items()} == {
        "olga": "active",  # olga (active) + olga@example.org (grace)
        "pia": "locked",  # pia (grace) + pia@example.org (locked by an admin)
        "quinn": "pending",
        "ghost": None,  # no such entry: kept, shown, waiting
    }
    assert listed["ghost"]["unattached"] is True
    client = client_for(bridge)
    olga = client.login("olga@example.org", "olga-pw" + fresh_code())
    assert olga is not None and olga.accepted  # the old key still works, by mail too
    pia = client.login("pia", "pia-pw")
    assert pia is not None and pia.rejected and "locked" in pia.message
