"""The descriptor budget (bridge/budget.py): what the limits need against what is allowed."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import pytest

from bridge.budget import BASE, descriptors_needed, ensure_descriptors
from bridge.config import Config, parse_config


def config(tmp_path: Path, **sections: Any) -> Config:
    """A valid config with `sections` added (ldap_proxy, portal, ...)."""
    data: dict[str, Any] = {
        "directory": {
            "urls": ["ldap://127.0.0.1:389", "ldap://127.0.0.2:389"],
            "bind_dn": "cn=bridge,dc=example,dc=org",
            "bind_password": "directory-password",
            "user_base": "ou=people,dc=example,dc=org",
            "pool_size": 8,
        },
        "store": {"path": str(tmp_path / "state.db")},
        "radius": {"clients": [{"address": "127.0.0.1", "secret": "a-long-radius-secret-123"}]},
        **sections,
    }
    return parse_config(data, tmp_path)


def test_each_part_is_counted_by_the_key_that_sizes_it(tmp_path: Path) -> None:
    """An LDAP session is two descriptors, a portal connection one, a directory link two."""
    needs = descriptors_needed(
        config(
            tmp_path,
            ldap_proxy={"listen": "127.0.0.1:1389", "max_connections": 1000},
            portal={"listen": "127.0.0.1:8480", "max_connections": 300},
        )
    )
    assert needs["ldap_proxy.max_connections"] == 2002
    assert needs["portal.max_connections"] == 301
    assert needs["directory.pool_size"] == 2 * 9 * 2


def test_a_hard_limit_below_the_need_is_a_problem_naming_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a hard limit of 1,024, the default LDAP proxy limits cannot be met: say so."""
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, 1024))
    problem = ensure_descriptors(
        config(tmp_path, ldap_proxy={"listen": "127.0.0.1:1389"})  # max_connections 1000
    )
    assert problem is not None
    assert "ldap_proxy.max_connections 2002" in problem and "LimitNOFILE" in problem


def test_the_soft_limit_is_raised_to_the_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A soft limit below the need and a hard one above it: the soft limit is raised."""
    raised: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (256, 65536))
    monkeypatch.setattr(resource, "setrlimit", lambda _which, limits: raised.append(limits))
    cfg = config(tmp_path, portal={"listen": "127.0.0.1:8480"})
    assert ensure_descriptors(cfg) is None
    assert raised == [(BASE + sum(descriptors_needed(cfg).values()), 65536)]
