"""`mfa-bridge doctor`: check a config against the real directory, and say what is wrong.

Blocking on purpose (a command, not the daemon): for each directory URL it connects with
the daemon's own TLS settings (chain and host name verified) and binds the service
account; then it finds a named test user with the daemon's escaped filter, compares
this host's clock with the directory's (TOTP codes fail for everyone once the clock is
more than a step off), and opens the store.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import ldap

from bridge.config import Config
from bridge.directory import NoEntryIdError, UnavailableError, connect, identity_of, user_query
from bridge.store import StoreError, open_store

# Where directories publish their time: AD's RootDSE, OpenLDAP's monitor backend.
_TIME_SOURCES = (
    ("", "currentTime"),
    ("cn=Current,cn=Time,cn=Monitor", "monitorTimestamp"),
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report."""

    level: str  # ok | warn | fail
    subject: str
    text: str


def parse_generalized_time(value: str) -> float:
    """Seconds since the epoch of an LDAP GeneralizedTime (`20261201094500Z`, `.0Z`)."""
    digits = value.rstrip("Z").split(".")[0]
    return datetime.strptime(digits, "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp()


def directory_time(conn: Any) -> float | None:
    """The directory's clock, if it publishes it where this looks; None otherwise."""
    for base, attribute in _TIME_SOURCES:
        try:
            results = conn.search_s(base, ldap.SCOPE_BASE, "(objectClass=*)", [attribute])
        except ldap.LDAPError:
            continue
        for _dn, attributes in results:
            values = attributes.get(attribute) if isinstance(attributes, dict) else None
            if values:
                with contextlib.suppress(ValueError):
                    return parse_generalized_time(values[0].decode())
    return None


def check_clock(conn: Any, step: int, now: Callable[[], float]) -> Finding:
    remote = directory_time(conn)
    if remote is None:
        return Finding(
            "warn",
            "clock",
            "the directory does not publish its time (RootDSE currentTime or"
            " cn=Monitor): make sure NTP keeps this host's clock right",
        )
    drift = now() - remote
    text = f"this host is {abs(drift):.0f} s {'ahead of' if drift > 0 else 'behind'} the directory"
    if abs(drift) >= step:
        return Finding("fail", "clock", text + f": more than a TOTP step ({step} s); fix NTP")
    if abs(drift) >= step / 2:
        return Finding("warn", "clock", text + ": codes at the edge of a step will fail")
    return Finding("ok", "clock", text)


def check_user(conn: Any, config: Config, username: str) -> Finding:
    directory = config.directory
    query = user_query(directory, username)
    wanted = [directory.id_attribute, directory.name_attribute]
    try:
        found = conn.search_s(directory.user_base, ldap.SCOPE_SUBTREE, query, wanted)
    except ldap.LDAPError as exc:
        return Finding("fail", f"user {username}", f"search failed: {exc}")
    hits = [(dn, attributes) for dn, attributes in found if dn]
    dns = [dn for dn, _attributes in hits]
    if len(hits) == 1:
        try:
            identity = identity_of(*hits[0], directory, username)
        except NoEntryIdError:
            return Finding(
                "fail",
                f"user {username}",
                f"{dns[0]} has no {directory.id_attribute}: set directory.id_attribute to the"
                " attribute that identifies entries (OpenLDAP entryUUID, AD objectGUID)",
            )
        return Finding(
            "ok",
            f"user {username}",
            f"found as {dns[0]} ({directory.name_attribute} {identity.name},"
            f" {directory.id_attribute} {identity.entry_id})",
        )
    if not dns:
        return Finding(
            "fail", f"user {username}", f"not found under {directory.user_base} with {query}"
        )
    return Finding("fail", f"user {username}", f"{len(dns)} entries match {query}: ambiguous")


def run(
    config: Config, username: str | None, now: Callable[[], float] = time.time
) -> list[Finding]:
    """Every check, in order; nothing is changed anywhere."""
    findings = [Finding("ok", "config", "valid")]
    findings += [Finding("warn", "config", warning) for warning in config.warnings]
    reached = None
    for url in config.directory.urls:
        started = time.monotonic()
        try:
            conn = connect(url, config.directory)
        except UnavailableError as exc:
            findings.append(Finding("fail", url, str(exc)))
            continue
        took = (time.monotonic() - started) * 1000
        secure = url.lower().startswith("ldaps:") or config.directory.start_tls
        how = "TLS verified, " if secure else "no TLS, "
        findings.append(Finding("ok", url, f"{how}service account bound ({took:.0f} ms)"))
        if reached is None:
            reached = conn
        else:
            with contextlib.suppress(ldap.LDAPError):
                conn.unbind_s()
    if reached is not None:
        if username:
            findings.append(check_user(reached, config, username))
        findings.append(check_clock(reached, config.mfa.step, now))
        with contextlib.suppress(ldap.LDAPError):
            reached.unbind_s()
    try:
        store = open_store(config.store, config.directory.id_attribute)
    except StoreError as exc:
        findings.append(Finding("fail", "store", str(exc)))
    else:
        count, waiting = len(store.list()), len(store.legacy_names())
        store.close()
        findings.append(Finding("ok", "store", f"{store.where}: {count} users"))
        if waiting:
            findings.append(
                Finding(
                    "warn",
                    "store",
                    f"{waiting} records of an earlier release are not yet matched to a"
                    " directory entry (`mfa-bridge user list` shows them)",
                )
            )
    return findings
