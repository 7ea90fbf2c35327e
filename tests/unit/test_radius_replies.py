"""Reply rules (SPEC 11): checked against the dictionary, encoded once, decoded by pyrad."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyrad import packet

from bridge.config import ConfigError, parse_config
from bridge.ldapdn import dn_key
from bridge.radius.replies import compile_replies, load_dictionary

ADMINS = "cn=vpn-admins,ou=groups,dc=example,dc=org"
STAFF = "cn=Staff,ou=Groups,dc=example,dc=org"
SECRET = "radius-shared-secret-0123456789"


def config(replies: list[dict[str, Any]], tmp_path: Path, **radius: Any) -> Any:
    data = {
        "directory": {
            "urls": ["ldaps://ldap.example.org"],
            "bind_dn": "cn=bridge,ou=services,dc=example,dc=org",
            "bind_password": "ldap-Service-Passw0rd",
            "user_base": "ou=people,dc=example,dc=org",
        },
        "store": {"path": str(tmp_path / "state.db")},
        "radius": {
            "clients": [
                {"name": "vpn-concentrator", "address": "192.0.2.10", "secret": SECRET},
                {"name": "wifi", "address": "198.51.100.0/28", "secret": SECRET},
            ],
            "replies": replies,
            **radius,
        },
    }
    return parse_config(data, tmp_path).radius


def decoded(wire: bytes) -> packet.Packet:
    """The attributes as pyrad reads them from an Access-Accept carrying `wire`."""
    reply = packet.Packet(
        code=2, id=1, secret=b"s", authenticator=bytes(16), dict=load_dictionary()
    )
    reply.DecodePacket(b"\x02\x01" + (20 + len(wire)).to_bytes(2, "big") + bytes(16) + wire)
    return reply


RULES = [
    {
        "group": ADMINS,
        "clients": ["vpn-concentrator"],
        "attributes": {
            "Class": "admins",
            "Filter-Id": "admin-acl",
            "Cisco-AVPair": ["shell:priv-lvl=15", "ip:inacl#1=permit ip any any"],
            "ASA-Group-Policy": "AdminPolicy",
        },
    },
    {
        "group": STAFF,
        "attributes": {
            "Tunnel-Type": "VLAN",
            "Tunnel-Medium-Type": "IEEE-802",
            "Tunnel-Private-Group-Id": 42,
            "Aruba-User-Role": "staff",
        },
    },
    {"attributes": {"Session-Timeout": 28800, "Fortinet-Group-Name": "everyone"}},
]


def test_every_matching_rule_applies_in_order_and_pyrad_reads_them(tmp_path: Path) -> None:
    replies = compile_replies(config(RULES, tmp_path))
    assert replies.groups == (ADMINS, STAFF)
    both = frozenset({dn_key(ADMINS), dn_key("cn=staff,ou=groups,DC=example,DC=org")})
    reply = decoded(replies.for_login(both, "vpn-concentrator"))  # type: ignore[arg-type]
    assert reply["Class"] == [b"admins"]
    assert reply["Filter-Id"] == ["admin-acl"]
    assert reply["Cisco-AVPair"] == ["shell:priv-lvl=15", "ip:inacl#1=permit ip any any"]
    assert reply["ASA-Group-Policy"] == ["AdminPolicy"]
    assert reply["Tunnel-Type"] == ["VLAN"] and reply["Tunnel-Medium-Type"] == ["IEEE-802"]
    assert reply["Tunnel-Private-Group-Id"] == ["42"]
    assert reply["Aruba-User-Role"] == ["staff"]
    assert reply["Session-Timeout"] == [28800]
    assert reply["Fortinet-Group-Name"] == ["everyone"]
    # Another client: the admins' rule is the VPN's only; no group: only the last rule.
    other = decoded(replies.for_login(both, "wifi"))  # type: ignore[arg-type]
    assert "Class" not in other and other["Tunnel-Private-Group-Id"] == ["42"]
    nobody = decoded(replies.for_login(frozenset(), "vpn-concentrator"))
    assert sorted(nobody.keys()) == ["Fortinet-Group-Name", "Session-Timeout"]


def test_tags_are_kept_for_the_tunnel_attributes(tmp_path: Path) -> None:
    rules = [{"attributes": {"Tunnel-Type:1": "VLAN", "Tunnel-Private-Group-Id:1": "42"}}]
    wire = compile_replies(config(rules, tmp_path)).for_login(frozenset(), "wifi")
    assert wire == bytes.fromhex("4006010000 0d".replace(" ", "")) + b"\x51\x05\x0142"


def test_unknown_names_wrong_types_and_forbidden_attributes_name_their_key(
    tmp_path: Path,
) -> None:
    rules = [
        {
            "attributes": {
                "Cisco-AVPiar": "shell:priv-lvl=15",
                "Tunnel-Type": "VLNA",
                "Session-Timeout": "soon",
                "Tunnel-Password": "x",
                "Framed-IP-Address": "10.0.0",
                "Reply-Message": "hi",
                "Class:2": "x",
            }
        }
    ]
    with pytest.raises(ConfigError) as info:
        compile_replies(config(rules, tmp_path))
    where = "radius.replies[0].attributes"
    assert info.value.problems == (
        f"{where}.Cisco-AVPiar: unknown attribute (did you mean Cisco-AVPair?);"
        " radius.dictionaries adds more",
        f"{where}.Tunnel-Type: 'VLNA' is not a number (did you mean VLAN?)",
        f"{where}.Session-Timeout: 'soon' is not a number",
        f"{where}.Tunnel-Password: is encrypted with the shared secret and cannot be set"
        " in a reply rule",
        f"{where}.Framed-IP-Address: '10.0.0' is not an IPv4 address",
        f"{where}.Reply-Message: is the bridge's own to send, not a reply rule's",
        f"{where}.Class:2: a tag (:0 to :31) is only for the tagged Tunnel attributes",
    )


def test_more_dictionaries_add_vendors(tmp_path: Path) -> None:
    extra = tmp_path / "dictionary.example"
    extra.write_text(
        "VENDOR\tExample\t99999\nBEGIN-VENDOR\tExample\n"
        "ATTRIBUTE\tExample-Role\t1\tstring\nEND-VENDOR\tExample\n"
    )
    rules = [{"attributes": {"Example-Role": "ops"}}]
    with pytest.raises(ConfigError, match="Example-Role: unknown attribute"):
        compile_replies(config(rules, tmp_path))
    radius = config(rules, tmp_path, dictionaries=[str(extra)])
    wire = compile_replies(radius).for_login(frozenset(), "wifi")
    assert wire == b"\x1a\x0b\x00\x01\x86\x9f\x01\x05ops"


def test_rule_shapes_are_config_errors(tmp_path: Path) -> None:
    bad = [
        {"clients": ["vpn-concentratr"], "attributes": {"Class": "x"}},
        {"group": "not a dn", "attributes": {"Class": "x"}},
        {"group": ADMINS},
        {"attributes": {"Class": {"nested": 1}}},
        "Class=x",
    ]
    with pytest.raises(ConfigError) as info:
        config(bad, tmp_path, dictionaries=["missing.dict"])
    problems = info.value.problems
    assert problems[0] == (
        "radius.replies[0].clients[0]: no radius.clients entry is named 'vpn-concentratr'"
        " (did you mean vpn-concentrator?)"
    )
    assert problems[1].startswith("radius.replies[1].group: ")
    assert problems[2] == (
        "radius.replies[2].attributes: required: a mapping of attribute names to values"
    )
    assert (
        problems[3]
        == "radius.replies[3].attributes.Class: must be a string or a number, got a mapping"
    )
    assert problems[4] == "radius.replies[4]: must be a mapping with attributes, got a string"
    assert problems[5].startswith("radius.dictionaries[0]: ")
