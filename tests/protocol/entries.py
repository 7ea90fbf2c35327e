"""The fake directories' entries: each user found by uid and by one alias, as SPEC 8 means.

A real `user_filter` such as `(|(uid={username})(mail={username}))` finds one entry by
several names; the fakes in these tests do the same with a table mapping every name to
the one `Identity` of its entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bridge.core.types import Identity

DOMAIN = "example.org"


def alias(uid: str) -> str:
    """The entry's other name (its mail address), as a user may type it instead of the uid."""
    return f"{uid}@{DOMAIN}"


def entry_id(uid: str) -> str:
    """The entry's id attribute (entryUUID in a real directory): the key of its MFA record."""
    return f"id-{uid}"


def identity(uid: str, dn: Callable[[str], str]) -> Identity:
    """The entry of `uid`, named by `dn(uid)`."""
    return Identity(entry_id(uid), uid, dn(uid))


def entries(uids: Iterable[str], dn: Callable[[str], str]) -> dict[str, Identity]:
    """Every name (the uid and its alias) of each user, mapped to the user's one entry."""
    table: dict[str, Identity] = {}
    for uid in uids:
        table[uid] = table[alias(uid)] = identity(uid, dn)
    return table
