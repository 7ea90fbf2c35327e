"""Bind DNs to user names (DNs compared as `bridge.ldapdn` compares them)."""

from __future__ import annotations

import re

import ldap

from bridge.ldapdn import dn_key, key_of, parse_dn

# `(attr={username})` anywhere in the user filter: the attribute a user DN is named by.
_NAMING_ATTRIBUTE = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*\{username\}\s*\)")


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
        parent = key_of(rdns[1:])
        if len(parent) < len(self._base) or parent[len(parent) - len(self._base) :] != self._base:
            return None
        return value
