"""Turn what a client typed into a canonical user name and a (password, code) pair."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

MAX_USERNAME_LENGTH = 256


def normalize_username(raw: str) -> str | None:
    """The canonical form every counter and record is keyed on, or None when unusable.

    NFKC folds full-width and compatibility forms, surrounding blanks are dropped and
    case is folded, so `Alice`, ` alice` and its full-width form share one record and one lockout.
    """
    if raw.isascii():  # the common case: NFKC changes nothing, casefold is lower
        name = raw.strip().lower()
    else:
        # Folding case can undo NFKC's composition (ß + accent -> ss + accent): again.
        name = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).strip().casefold())
    if not name or len(name) > MAX_USERNAME_LENGTH:
        return None
    if not name.isprintable():  # control, format, unassigned, private-use, line breaks
        return None
    return name


def is_code(text: str, digits: int = 6) -> bool:
    """Exactly `digits` ASCII digits: anything else is no code at all."""
    return len(text) == digits and text.isascii() and text.isdigit()


@dataclass(frozen=True, slots=True)
class Split:
    """A password field read as password followed by a code."""

    password: str
    code: str


def split_appended(field: str, digits: int = 6) -> Split | None:
    """Read `field` as password + trailing code; None when it does not end in one.

    The rule is fixed (the last `digits` ASCII digits), so users can predict it, and a
    field that is nothing but digits is not split: the password part may not be empty.
    """
    if len(field) <= digits:
        return None
    password, code = field[:-digits], field[-digits:]
    if not is_code(code, digits):
        return None
    return Split(password, code)
