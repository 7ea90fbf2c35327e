"""The audit log's line format: one JSON object per decision, UTC times, no secrets."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from pathlib import Path

from bridge.audit import AuditLog, admin_audit, open_audit, utc_iso
from bridge.core.types import Decision, LockReason, Outcome, Reason, State


def test_utc_iso_has_milliseconds_and_z() -> None:
    """Times are ISO 8601 UTC with milliseconds, the same second formatted the same."""
    assert utc_iso(1_764_577_804.1239) == "2025-12-01T08:30:04.123Z"
    assert utc_iso(1_764_577_804.9) == "2025-12-01T08:30:04.900Z"
    assert utc_iso(0) == "1970-01-01T00:00:00.000Z"


def test_record_is_one_json_line_with_every_field() -> None:
    """A decision becomes exactly one line holding who, what, why, states and latency."""
    out = io.StringIO()
    audit = AuditLog(out, wall_clock=lambda: 1_764_577_804.5)
    decision = Decision(
        Outcome.REJECT,
        Reason.LOCKED,
        "carol",
        State.LOCKED,
        State.LOCKED,
        lock_reason=LockReason.FAILURES,
        password_ok=True,
    )
    audit.record(decision, "ldap", "192.0.2.7", 0.0123)
    (line,) = out.getvalue().splitlines()
    assert json.loads(line) == {
        "time": "2025-12-01T08:30:04.500Z",
        "event": "auth.reject",
        "protocol": "ldap",
        "client": "192.0.2.7",
        "user": "carol",
        "outcome": "reject",
        "reason": "locked",
        "state_before": "locked",
        "state_after": "locked",
        "lock_reason": "failures",
        "latency_ms": 12.3,
    }
    assert audit.written == 1


def test_off_writes_nothing_and_a_file_appends(tmp_path: Path) -> None:
    """`off` keeps no lines; a file path appends lines to that file."""
    silent = open_audit("off", io.StringIO())
    assert silent.path is None
    silent.record(Decision(Outcome.ACCEPT, Reason.GRACE, "a"), "radius", "nas", 0.0)
    assert silent.written == 0
    path = f"{tmp_path}/audit.jsonl"
    audit = open_audit(path, io.StringIO())
    assert audit.path == path
    audit.record(Decision(Outcome.ACCEPT, Reason.GRACE, "a"), "radius", "nas", 0.0)
    audit.close()
    with open(path, encoding="utf-8") as written:
        assert json.loads(written.read())["user"] == "a"


def test_the_audit_file_is_created_for_the_owner_only(tmp_path: Path) -> None:
    """Whatever the umask, a new audit file is 0600, and so is its successor after a reopen."""
    path = tmp_path / "audit.log"
    old = os.umask(0o022)
    try:
        audit = open_audit(str(path), io.StringIO())
        path.rename(tmp_path / "audit.log.1")  # logrotate moves it, then SIGHUP
        audit.reopen()
        audit.close()
    finally:
        os.umask(old)
    assert (tmp_path / "audit.log.1").stat().st_mode & 0o777 == 0o600
    assert path.stat().st_mode & 0o777 == 0o600


def test_admin_lines_go_to_the_system_log_when_the_audit_is_stdout(tmp_path: Path) -> None:
    """With log.audit: stdout the admin commands' lines go to the syslog socket (journald
    keeps them beside the daemon's), tagged mfa-bridge, facility authpriv; without one,
    to standard error."""
    path = str(tmp_path / "log")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    try:
        audit = admin_audit("stdout", syslog=path)
        audit.admin("lock", "alice", "cli:maria", State.ACTIVE, State.LOCKED)
        audit.close()
        got = listener.recv(4096).decode()
    finally:
        listener.close()
    prefix, _, line = got.partition(": ")
    assert prefix.startswith("<86>mfa-bridge[")
    fields = json.loads(line)
    assert (fields["event"], fields["protocol"], fields["client"]) == (
        "admin.lock",
        "admin",
        "cli:maria",
    )
    assert (fields["state_before"], fields["state_after"]) == ("active", "locked")
    fallback = admin_audit("stdout", syslog=str(tmp_path / "none"))
    assert fallback._stream is sys.stderr
    assert admin_audit("off")._stream is None
