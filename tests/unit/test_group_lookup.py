"""Where a user's groups are looked up: the configured groups' common suffix."""

from __future__ import annotations

import pytest

from bridge import directory
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


def test_the_name_cache_forgets_its_oldest_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded memory: at CACHE_LIMIT the oldest name goes, the others stay remembered
    (a full cache is not emptied all at once, which would send every login to search)."""
    monkeypatch.setattr(directory, "CACHE_LIMIT", 3)
    now = [0.0]
    cache = directory._Expiring(300, lambda: now[0])
    for name in ("a", "b", "c"):
        cache.put(name, name.upper())
    cache.put("a", "A2")  # seen again: now the newest
    cache.put("d", "D")
    assert [cache.get(n) for n in ("a", "b", "c", "d")] == ["A2", None, "C", "D"]
    now[0] = 301.0
    assert cache.get("d") is None  # and each expires after the TTL
