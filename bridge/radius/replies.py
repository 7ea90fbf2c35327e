"""What an Access-Accept carries beyond the decision (SPEC 11): `radius.replies` rules.

A rule names attributes (with the values a VPN concentrator or Wi-Fi controller acts on:
a group policy in Class or a vendor attribute, an ACL in Filter-Id, a VLAN in the tagged
Tunnel attributes), and optionally the group whose members get them and the clients that
send them. Every matching rule applies, in order.

Rules are checked and encoded once, when the config is loaded, against the shipped
dictionary and `radius.dictionaries`: an unknown name or a value of the wrong type is a
config error naming its key, and a login only concatenates the bytes of its rules.
pyrad's encoder does the encoding (its dictionary knows vendors, tags and named values).
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pyrad.dictionary import Attribute, Dictionary
from pyrad.packet import AuthPacket

from bridge.config import ConfigError, RadiusConfig, ReplyRule
from bridge.ldapdn import DnKey, dn_key

_INTEGERS = frozenset({"integer", "integer64", "short", "byte", "signed", "date"})
_NUMBER_LIMITS = {"byte": 0xFF, "short": 0xFFFF, "integer": 0xFFFFFFFF, "date": 0xFFFFFFFF}
_DECIDED_HERE = frozenset(
    {"Reply-Message", "State", "Message-Authenticator", "EAP-Message", "Proxy-State"}
)


@dataclass(frozen=True, slots=True)
class _Rule:
    group: DnKey | None  # None: every user
    clients: frozenset[str]  # empty: every client
    wire: bytes  # the encoded attributes


class Replies:
    """The compiled rules: for a login, the attribute bytes its Access-Accept carries."""

    def __init__(self, rules: Iterable[_Rule] = (), groups: tuple[str, ...] = ()) -> None:
        self._rules = tuple(rules)
        self.groups = groups  # the rules' group DNs: the directory looks up these too

    def __bool__(self) -> bool:
        return bool(self._rules)

    def for_login(self, groups: frozenset[DnKey], client: str) -> bytes:
        """The attributes of every rule that matches the user's groups and the client."""
        return b"".join(
            rule.wire
            for rule in self._rules
            if (rule.group is None or rule.group in groups)
            and (not rule.clients or client in rule.clients)
        )


def load_dictionary(extra: Iterable[Path] = ()) -> Dictionary:
    """The shipped dictionary, then each of `extra` (FreeRADIUS format) read into it."""
    source = resources.files("bridge.radius").joinpath("dictionary")
    with source.open("r", encoding="utf-8") as lines:
        dictionary = Dictionary(lines)
    for path in extra:
        try:
            dictionary.ReadDictionary(str(path))
        except Exception as exc:  # pyrad's ParseError, or an OSError
            raise ConfigError([f"radius.dictionaries: {path}: {exc}"]) from exc
    return dictionary


def compile_replies(config: RadiusConfig) -> Replies:
    """`radius.replies` checked and encoded; a ConfigError lists every problem."""
    if not config.replies:
        return Replies()
    dictionary = load_dictionary(config.dictionaries)
    problems: list[str] = []
    rules = []
    for index, rule in enumerate(config.replies):
        wire = _encode(rule, dictionary, f"radius.replies[{index}].attributes", problems)
        group = dn_key(rule.group) if rule.group is not None else None
        rules.append(_Rule(group, frozenset(rule.clients), wire))
    if problems:
        raise ConfigError(problems)
    groups = tuple(dict.fromkeys(r.group for r in config.replies if r.group is not None))
    return Replies(rules, groups)


def _encode(rule: ReplyRule, dictionary: Dictionary, path: str, problems: list[str]) -> bytes:
    packet = AuthPacket(code=2, secret=b"", authenticator=bytes(16), dict=dictionary)
    for name, value in rule.attributes:
        where = f"{path}.{name}"
        base, _, tag = name.partition(":")
        attribute = dictionary.attributes.get(base) if base in dictionary.attributes else None
        problem = _problem(base, tag, value, attribute, dictionary)
        if problem is not None:
            problems.append(f"{where}: {problem}")
            continue
        assert attribute is not None
        try:
            packet.AddAttribute(name, _typed(value, attribute))
        except Exception as exc:  # pyrad's encoders raise TypeError, ValueError, struct.error
            problems.append(f"{where}: {value!r} is not a valid {attribute.type} ({exc})")
    try:
        wire: bytes = packet._PktEncodeAttributes()
    except Exception as exc:
        problems.append(f"{path}: cannot be encoded ({exc})")
        return b""
    return wire


def _problem(
    name: str, tag: str, value: object, attribute: Attribute | None, dictionary: Dictionary
) -> str | None:
    """What is wrong with one `name: value` of a rule, or None."""
    if attribute is None:
        close = difflib.get_close_matches(name, list(dictionary.attributes.keys()), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"unknown attribute{hint}; radius.dictionaries adds more"
    if name in _DECIDED_HERE:
        return "is the bridge's own to send, not a reply rule's"
    if attribute.encrypt:
        return "is encrypted with the shared secret and cannot be set in a reply rule"
    if tag and not (attribute.has_tag and tag.isdigit() and 0 <= int(tag) <= 0x1F):
        return "a tag (:0 to :31) is only for the tagged Tunnel attributes"
    if attribute.type in _INTEGERS:
        if isinstance(value, str) and attribute.values.HasForward(value):
            return None
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            limit = _NUMBER_LIMITS.get(attribute.type, 2**64 - 1)
            return None if 0 <= int(value) <= limit else f"{value} is out of range"
        known = list(attribute.values.forward.keys()) if attribute.values else []
        close = difflib.get_close_matches(str(value), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        names = f" or one of {', '.join(known)}" if known and not close else ""
        return f"{value!r} is not a number{names}{hint}"
    if attribute.type == "ipaddr":
        try:
            ipaddress.IPv4Address(str(value))
        except ValueError:
            return f"{value!r} is not an IPv4 address"
    if attribute.type in ("string", "octets") and len(str(value).encode("utf-8")) > 247:
        return "longer than one attribute can carry (247 octets here)"
    return None


def _typed(value: object, attribute: Attribute) -> object:
    """The value as pyrad's encoder for the attribute's type wants it."""
    if attribute.type in _INTEGERS:
        if isinstance(value, str) and attribute.values.HasForward(value):
            return value
        return int(str(value))
    if attribute.type == "octets":
        return str(value).encode("utf-8")
    return str(value)
