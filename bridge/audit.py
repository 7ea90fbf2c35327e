"""The audit log: one JSON line per login decision, for SIEMs, `jq` and the admin on call.

Written straight to its stream rather than through `twisted.logger`: a login's audit
line is the product's record of who got in, so it is never filtered by the log level,
and building it directly costs a fraction of a logger event (it is on every login's
path). Fields: time, event, protocol, client, user (the directory entry's name), login
(the name typed, when it was another), outcome, reason, state before and after, lock
reason, latency. Never a password, a code or a secret: none of them reaches this module.
"""

from __future__ import annotations

import functools
import io
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Protocol, TextIO

from bridge.core.types import Decision, State


class Lines(Protocol):
    """Where audit lines are written: a file, standard output, the system log."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@functools.lru_cache(maxsize=4)
def _utc_second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def utc_iso(seconds: float) -> str:
    """ISO 8601 in UTC with milliseconds: `2026-12-01T08:30:04.123Z`."""
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return f"{_utc_second(whole)}.{millis:03d}Z"


class AuditLog:
    """Writes decisions as JSON lines to `stream` (None: audit lines are not kept)."""

    def __init__(
        self,
        stream: Lines | None,
        wall_clock: Callable[[], float] = time.time,
        *,
        setup_url: str | None = None,
    ) -> None:
        self._stream = stream
        self.path: str | None = None  # the file it writes to, when it is one (see reopen)
        self.owned = False  # a stream of its own to close (the system log's socket)
        self._wall_clock = wall_clock
        self.setup_url = setup_url  # the portal: named on grace accepts, for LDAP's sake
        self.observers: list[Callable[[Decision, str, str], None]] = []  # the metrics
        self.written = 0

    def record(
        self,
        decision: Decision,
        protocol: str,
        client: str,
        latency: float,
        label: str = "",
        *,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        """One line for one decision; flushed at once so a crash loses no decision.

        `label` names the client for the metrics (a RADIUS client's name, never an address);
        `extra` are the fields the protocol knows of the caller (SPEC 12: nas_identifier,
        nas_ip, calling_station_id, client_address; outer_identity for EAP).
        """
        for observe in self.observers:
            observe(decision, protocol, label)
        if self._stream is None:
            return
        fields = {
            "time": utc_iso(self._wall_clock()),
            "event": f"auth.{decision.outcome.value}",
            "protocol": protocol,
            "client": client,
            "user": decision.username,
            "outcome": decision.outcome.value,
            "reason": decision.reason.value,
            "state_before": decision.state_before.value if decision.state_before else None,
            "state_after": decision.state_after.value if decision.state_after else None,
            "lock_reason": decision.lock_reason.value if decision.lock_reason else None,
            "latency_ms": round(latency * 1000, 2),
        }
        if decision.login is not None:  # another of the entry's names was typed
            fields["login"] = decision.login
        if extra:
            fields.update(extra)
        if decision.days_left is not None:
            fields["days_left"] = decision.days_left
            if self.setup_url:
                fields["setup_url"] = self.setup_url
        self._write(fields)

    def admin(
        self,
        action: str,
        user: str,
        actor: str,
        before: State | None = None,
        after: State | None = None,
        **details: object,
    ) -> None:
        """One line for one admin change (SPEC 12): `"protocol": "admin"`, the account
        that ran the command as `client`, the user's state before and after."""
        if self._stream is None:
            return
        fields = {
            "time": utc_iso(self._wall_clock()),
            "event": f"admin.{action}",
            "protocol": "admin",
            "client": actor,
            "user": user,
            "state_before": before.value if before else None,
            "state_after": after.value if after else None,
            **details,
        }
        self._write(fields)

    def _write(self, fields: Mapping[str, object]) -> None:
        """One line, flushed at once so a crash loses none."""
        assert self._stream is not None  # the callers return early without one
        self._stream.write(_encode(fields) + "\n")
        self._stream.flush()
        self.written += 1

    def reopen(self) -> None:
        """Open the audit file again (after logrotate moved it; SIGHUP)."""
        if self.path is None or self._stream is None:
            return
        fresh = _append(self.path)
        old, self._stream = self._stream, fresh
        old.close()

    def close(self) -> None:
        """Close the audit file or the system log's socket (at shutdown)."""
        if self._stream is not None and (self.path is not None or self.owned):
            self._stream.close()


def open_audit(destination: str, stdout: TextIO, setup_url: str | None = None) -> AuditLog:
    """The audit log for `log.audit` (when it is a file, `path` says which; close() it)."""
    if destination == "off":
        return AuditLog(None)
    if destination == "stdout":
        return AuditLog(stdout, setup_url=setup_url)
    stream = _append(destination)
    audit = AuditLog(stream, setup_url=setup_url)
    audit.path = destination
    return audit


def _append(path: str) -> TextIO:
    """The audit file opened for appending; created 0600 (it names users and clients)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


def admin_audit(destination: str, syslog: str = "/dev/log") -> AuditLog:
    """Where the admin commands' audit lines go: the audit file when `log.audit` names
    one; with `stdout` (the daemon's, which journald keeps), the system log at /dev/log,
    so they land beside the daemon's; standard error when there is no such socket."""
    if destination == "off":
        return AuditLog(None)
    if destination != "stdout":
        return open_audit(destination, sys.stderr)
    try:
        audit = AuditLog(_SyslogLines(syslog))
    except OSError:
        return AuditLog(sys.stderr)
    audit.owned = True
    return audit


class _SyslogLines(io.TextIOBase):
    """A text stream whose lines go to the local syslog socket, tagged `mfa-bridge`."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._socket.connect(path)
        except OSError:
            self._socket.close()
            raise

    def write(self, text: str) -> int:
        for line in text.splitlines():
            # <86>: facility authpriv (10) * 8 + severity info (6).
            self._socket.send(f"<86>mfa-bridge[{os.getpid()}]: {line}".encode())
        return len(text)

    def close(self) -> None:
        self._socket.close()
        super().close()
