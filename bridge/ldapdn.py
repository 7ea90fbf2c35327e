"""DNs compared the way a directory compares them: case-insensitively, escapes resolved.

Parsing is python-ldap's (OpenLDAP's `ldap_str2dn`, RFC 4514 escapes included); no DN
is ever built by string concatenation here. Used wherever two DNs must be found equal:
the LDAP proxy's bind DNs, and the groups a user is a member of.
"""

from __future__ import annotations

import functools

import ldap
import ldap.dn

DnKey = tuple[tuple[tuple[str, str], ...], ...]


def parse_dn(text: str) -> list[list[tuple[str, str, int]]] | None:
    """RDNs of `text` (most specific first), or None when it is not a DN."""
    try:
        rdns: list[list[tuple[str, str, int]]] = ldap.dn.str2dn(text)
    except (ldap.DECODING_ERROR, TypeError, ValueError):
        return None
    return rdns


def key_of(rdns: list[list[tuple[str, str, int]]]) -> DnKey:
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
    return None if rdns is None else key_of(rdns)


def same_dn(a: str, b: str) -> bool:
    """Whether two DNs name the same entry (case-insensitively, escapes resolved)."""
    key_a = dn_key(a)
    return key_a is not None and key_a == dn_key(b)
