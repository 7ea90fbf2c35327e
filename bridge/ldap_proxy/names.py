"""Bind DNs to user names, and DNs compared the way a directory compares them.

Parsing is python-ldap's (OpenLDAP's `ldap_str2dn`, RFC 4514 escapes included); no DN
is ever built by string concatenation here.
"""

from __future__ import annotations

import functools
import re

import ldap
import ldap.dn

DnKey = tuple[tuple[tuple[str, str], ...], ...]

# `(attr={username})` anywhere in the user filter: the attribute a user DN is named by.
_NAMING_ATTRIBUTE = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*\{username\}\s*\)")


def parse_dn(text: str) -> list[list[tuple[str, str, int]]] | None:
    """RDNs of `text` (most specific first), or None when it is not a DN."""
    try:
        rdns: list[list[tuple[str, str, int]]] = ldap.dn.str2dn(text)
    except (ldap.DECODING_ERROR, TypeError, ValueError):
        return None
    return rdns


def _key(rdns: list[list[tuple[str, str, int]]]) -> DnKey:
    """Attribute names and values case-folded, AVAs of a multi-valued RDN in order."""
    return tuple(
        tuple(sorted((attr.lower(), value.casefold()) for attr, value, _flags in rdn))
        for rdn in rdns
    )


@functools.lru_cache(maxsize=4096)
def dn_key(text: str) -> DnKey | None:
    """A comparable form of the DN `text` (case-insensitive), or None when not a DN.

    Remembered for the last few thousand DNs: a bind compares its DN twice or more.
    """
    rdns = parse_dn(text)
    return None if rdns is None else _key(rdns)


def same_dn(a: str, b: str) -> bool:
    """Whether two DNs name the same entry (case-insensitively, escapes resolved)."""
    key_a = dn_key(a)
    return key_a is not None and key_a == dn_key(b)


def naming_attribute(user_filter: str) -> str | None:
    """`uid` from `(uid={username})` (or from such a term inside a larger filter)."""
    found = _NAMING_ATTRIBUTE.search(user_filter)
    return found.group(1).lower() if found else None


class UserMapper:
    """Turns what a client binds with into the user name the Authenticator expects.

    A bare name (no `=`) is taken as the user name. A DN is accepted when its first RDN
    is a single `attr=value` with the user filter's attribute and the rest of it is
    `user_base` or below it; the value is the user name. The Authenticator's escaped
    search then finds the entry, and the caller checks it is the DN that was bound.
    """

    def __init__(self, user_base: str, user_filter: str) -> None:
        self.attribute = naming_attribute(user_filter)
        self._base = dn_key(user_base) or ()

    def username(self, bind_dn: str) -> str | None:
        """The user name for `bind_dn`, or None when it names no user of ours."""
        if "=" not in bind_dn:
            return bind_dn or None
        rdns = parse_dn(bind_dn)
        if not rdns or self.attribute is None or len(rdns[0]) != 1:
            return None
        attr, value, flags = rdns[0][0]
        if attr.lower() != self.attribute or flags & ldap.AVA_BINARY:
            return None
        parent = _key(rdns[1:])
        if len(parent) < len(self._base) or parent[len(parent) - len(self._base) :] != self._base:
            return None
        return value
