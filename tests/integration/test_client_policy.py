"""Per-client policy and reply attributes (SPEC 11) against the real slapd, with radclient
and a pyrad client from two source addresses (127.0.0.1 and 127.0.0.2)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pyotp
import pytest

from tests.harness import Bridge, RadiusClient, code_for
from tests.slapd import Slapd

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
ClientFor = Callable[..., RadiusClient]
SECRET = "testing123"


def group(slapd: Slapd, name: str) -> str:
    return slapd.group_dn(name)


def enroll_active(bridge: Bridge, user: str) -> str:
    """A secret imported for `user`: active at once; returns the secret."""
    secret = pyotp.random_base32()
    sheet = bridge.workdir / f"{user}.csv"
    sheet.write_text(f"username,secret\n{user},{secret}\n", encoding="utf-8")
    result = bridge.cli("user", "import", str(sheet))
    assert result.returncode == 0, result.stderr
    status = json.loads(bridge.cli("user", "status", user, "--json").stdout)
    assert status["state"] == "active"
    return secret


@pytest.fixture
def two_clients(make_bridge: MakeBridge, slapd: Slapd) -> Callable[..., Bridge]:
    """A daemon with two clients: "vpn" (127.0.0.1) and "switch" (127.0.0.2)."""

    def make(vpn: dict[str, Any], switch: dict[str, Any], **radius: Any) -> Bridge:
        clients = [
            {"name": "vpn", "address": "127.0.0.1/32", "secret": SECRET, **vpn},
            {"name": "switch", "address": "127.0.0.2/32", "secret": SECRET, **switch},
        ]
        return make_bridge(clients=clients, **radius)

    return make


def test_reply_attributes_by_group_and_client_reach_radclient_and_pyrad(
    two_clients: Callable[..., Bridge], slapd: Slapd, client_for: ClientFor
) -> None:
    """A VPN admin gets the admins' Class, Cisco-AVPair and ASA group policy, and the staff
    VLAN; a staff member only the VLAN; anyone else nothing; through the switch the VPN's
    rule does not apply. radclient (FreeRADIUS's dictionaries) and pyrad both decode them."""
    replies = [
        {
            "group": group(slapd, "vpn-admins"),
            "clients": ["vpn"],
            "attributes": {
                "Class": "admins",
                "Cisco-AVPair": ["shell:priv-lvl=15", "ip:inacl#1=permit ip any any"],
                "ASA-Group-Policy": "AdminPolicy",
            },
        },
        {
            "group": group(slapd, "wifi-staff"),
            "attributes": {
                "Tunnel-Type": "VLAN",
                "Tunnel-Medium-Type": "IEEE-802",
                "Tunnel-Private-Group-Id": 42,
            },
        },
    ]
    bridge = two_clients({}, {}, replies=replies, mode="append")
    shown = bridge.radclient(
        'User-Name = "load190"\nUser-Password = "load190-pw"\nMessage-Authenticator = 0x00\n'
    )
    assert "Received Access-Accept" in shown.stdout, shown.stdout
    assert "Class = 0x61646d696e73" in shown.stdout
    assert 'Cisco-AVPair = "shell:priv-lvl=15"' in shown.stdout
    assert 'Cisco-AVPair = "ip:inacl#1=permit ip any any"' in shown.stdout
    assert re.search(r'ASA-Group-Policy = "AdminPolicy"', shown.stdout), shown.stdout
    assert re.search(r"Tunnel-Type(:0)? = VLAN", shown.stdout), shown.stdout
    assert re.search(r"Tunnel-Medium-Type(:0)? = IEEE-802", shown.stdout)
    assert re.search(r'Tunnel-Private-Group-Id(:0)? = "42"', shown.stdout)
    staff = client_for(bridge).login("load191", "load191-pw")
    assert staff is not None and staff.accepted
    assert staff.packet["Tunnel-Private-Group-Id"] == ["42"]
    assert "Class" not in staff.packet
    nobody = client_for(bridge).login("load193", "load193-pw")
    assert nobody is not None and nobody.accepted
    assert "Tunnel-Type" not in nobody.packet and "Class" not in nobody.packet
    switch = client_for(bridge, source="127.0.0.2").login("load190", "load190-pw")
    assert switch is not None and switch.accepted
    assert "Class" not in switch.packet and switch.packet["Tunnel-Type"] == ["VLAN"]


def test_two_clients_with_their_own_mode_and_mfa(
    two_clients: Callable[..., Bridge], client_for: ClientFor
) -> None:
    """The same enrolled user, password only: the VPN (mode challenge) asks for the code;
    the switch (mfa off) accepts on the password, audited as mfa-off, a wrong one refused."""
    bridge = two_clients({"mode": "challenge"}, {"mfa": "off"}, mode="append")
    secret = enroll_active(bridge, "load194")
    vpn = client_for(bridge)
    first = vpn.login("load194", "load194-pw")
    assert first is not None and first.challenged
    answered = vpn.login("load194", code_for(secret), state=first.packet["State"][0])
    assert answered is not None and answered.accepted
    switch = client_for(bridge, source="127.0.0.2")
    ok = switch.login("load194", "load194-pw")
    assert ok is not None and ok.accepted
    bad = switch.login("load194", "not-the-password")
    assert bad is not None and bad.rejected
    assert bridge.audit_reasons() == ["challenged", "accepted", "mfa-off", "bad-password"]


def test_allowed_groups_admit_members_only(
    two_clients: Callable[..., Bridge], slapd: Slapd, client_for: ClientFor
) -> None:
    """Through a client limited to wifi-staff: a member is accepted, a non-member with the
    right password is rejected (not-allowed, told so), a wrong password stays bad-password."""
    bridge = two_clients({}, {"allowed_groups": [group(slapd, "wifi-staff")]})
    switch = client_for(bridge, source="127.0.0.2")
    member = switch.login("load191", "load191-pw")
    assert member is not None and member.accepted
    outsider = switch.login("load195", "load195-pw")
    assert outsider is not None and outsider.rejected
    assert "not allowed" in outsider.message
    wrong = switch.login("load195", "wrong")
    assert wrong is not None and wrong.rejected and not wrong.message
    anywhere = client_for(bridge).login("load195", "load195-pw")  # the VPN has no such limit
    assert anywhere is not None and anywhere.accepted
    assert bridge.audit_reasons() == ["grace", "not-allowed", "bad-password", "grace"]


def test_a_remembered_device_logs_in_with_the_password_alone(
    two_clients: Callable[..., Bridge], client_for: ClientFor
) -> None:
    """Wi-Fi re-authenticating: after password+code from one Calling-Station-Id, that
    device is accepted with the password alone (and with its saved password+code again);
    another device still needs a code; a wrong password is still refused."""
    bridge = two_clients({}, {"remember_seconds": 3600}, mode="append")
    secret = enroll_active(bridge, "load192")
    wifi = client_for(bridge, source="127.0.0.2")
    phone, laptop = "AA-BB-CC-00-11-22", "AA-BB-CC-33-44-55"
    typed = "load192-pw" + code_for(secret)
    first = wifi.login("load192", typed, Calling_Station_Id=phone)
    assert first is not None and first.accepted
    again = wifi.login("load192", "load192-pw", Calling_Station_Id=phone)
    assert again is not None and again.accepted
    saved = wifi.login("load192", typed, Calling_Station_Id=phone.lower())
    assert saved is not None and saved.accepted
    other = wifi.login("load192", "load192-pw", Calling_Station_Id=laptop)
    assert other is not None and other.rejected
    wrong = wifi.login("load192", "wrong-pw", Calling_Station_Id=phone)
    assert wrong is not None and wrong.rejected
    vpn = client_for(bridge).login("load192", "load192-pw", Calling_Station_Id=phone)
    assert vpn is not None and vpn.rejected  # remembered for the Wi-Fi client only
    assert bridge.audit_reasons() == [
        "accepted",
        "remembered",
        "remembered",
        "code-required",
        "bad-password",
        "code-required",
    ]


def test_check_config_names_a_misspelled_attribute(make_bridge: MakeBridge) -> None:
    """check-config compiles the rules: a typo is a config error with its key, exit 1."""
    bridge = make_bridge(start=False, replies=[{"attributes": {"Filter-ID": "acl"}}])
    result = bridge.cli("check-config")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "config error: radius.replies[0].attributes.Filter-ID: unknown attribute"
        " (did you mean Filter-Id?); radius.dictionaries adds more"
    )


def test_an_accept_after_a_challenge_carries_the_group_replies(
    two_clients: Callable[..., Bridge], slapd: Slapd, client_for: ClientFor
) -> None:
    """Challenge mode: the accept that answers the challenge (decided without a bind)
    still carries the attributes of the user's groups."""
    rules = [{"group": group(slapd, "vpn-admins"), "attributes": {"Class": "admins"}}]
    bridge = two_clients({"mode": "challenge"}, {}, replies=rules)
    secret = enroll_active(bridge, "load190")
    vpn = client_for(bridge)
    first = vpn.login("load190", "load190-pw")
    assert first is not None and first.challenged and "Class" not in first.packet
    answered = vpn.login("load190", code_for(secret), state=first.packet["State"][0])
    assert answered is not None and answered.accepted
    assert answered.packet["Class"] == [b"admins"]
