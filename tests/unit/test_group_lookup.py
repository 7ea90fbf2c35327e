"""Where a user's groups are looked up: the configured groups' common suffix."""

from __future__ import annotations

import pytest

from bridge.directory import common_suffix


@pytest.mark.parametrize(
    ("groups", "base"),
    [
        (
            ("cn=a,ou=groups,dc=example,dc=org", "CN=b,OU=Groups,DC=example,DC=org"),
            "ou=groups,dc=example,dc=org",
        ),
        (
            ("cn=a,ou=groups,dc=example,dc=org", "cn=b,ou=teams,dc=example,dc=org"),
            "dc=example,dc=org",
        ),
        (("cn=a,ou=groups,dc=x", "ou=groups,dc=x"), "ou=groups,dc=x"),
        (("cn=a,dc=x", "cn=b,dc=y"), None),  # two trees: a base search on each group
        (("cn=a,dc=x", "not a dn"), None),
    ],
)
def test_the_common_suffix_of_the_configured_groups(
    groups: tuple[str, ...], base: str | None
) -> None:
    assert common_suffix(groups) == base
