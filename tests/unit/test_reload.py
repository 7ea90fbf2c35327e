"""What a SIGHUP may apply while running, and what it reports as needing a restart."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from bridge.config import Config, parse_config
from bridge.service import restart_needed

BASE: dict[str, Any] = {
    "directory": {
        "urls": ["ldap://127.0.0.1:389"],
        "bind_dn": "cn=bridge,dc=example,dc=org",
        "bind_password": "service-password",
        "user_base": "ou=people,dc=example,dc=org",
    },
    "store": {"path": "/var/lib/mfa-bridge/state.db"},
    "radius": {"clients": [{"address": "192.0.2.10", "secret": "a-long-shared-secret"}]},
    "portal": {"listen": "127.0.0.1:8443", "public_url": "https://mfa.example.org/"},
}


def config(tmp_path: Path, **changes: Any) -> Config:
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})[key] = value
    return parse_config(data, tmp_path)


def test_live_settings_need_no_restart(tmp_path: Path) -> None:
    """Clients, mode, MFA rules, exemptions, the portal URL and the log level apply live."""
    old = config(tmp_path)
    new = config(
        tmp_path,
        radius__mode="challenge",
        radius__clients=[{"address": "192.0.2.0/24", "secret": "another-long-secret"}],
        mfa__max_failures=3,
        mfa__exempt_users=["svc"],
        portal__public_url="https://portal.example.org/",
        log__level="debug",
    )
    assert restart_needed(old, new) == []


def test_restart_only_settings_are_named(tmp_path: Path) -> None:
    """Listen addresses, the store, the directory, the TOTP step and the audit sink need one."""
    old = config(tmp_path)
    new = config(
        tmp_path,
        radius__listen="127.0.0.1:1813",
        store__path="/srv/state.db",
        directory__timeout=9,
        portal__listen="127.0.0.1:9443",
        mfa__step=60,
        log__audit="off",
    )
    assert restart_needed(old, new) == [
        "radius.listen",
        "directory",
        "store",
        "portal",
        "log.audit",
        "mfa.step",
    ]


def test_changing_the_entry_attributes_needs_a_restart(tmp_path: Path) -> None:
    """directory.id_attribute and name_attribute are read when the store opens: a restart."""
    old = config(tmp_path)
    for key, value in (("id_attribute", "objectGUID"), ("name_attribute", "sAMAccountName")):
        new = config(tmp_path, **{f"directory__{key}": value})
        assert restart_needed(old, new) == ["directory"]
