"""Running it like an appliance: healthcheck, systemd's notify protocol, SIGHUP reload."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary
from tests.harness import (
    REPO,
    Bridge,
    RadiusClient,
    code_for,
    free_tcp_port,
    scrape_metrics,
    wait_for,
)

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
ClientFor = Callable[..., RadiusClient]
UNIT = REPO / "systemd" / "mfa-bridge.service"


# --- healthcheck ---------------------------------------------------------------------------


def test_healthcheck_answers_for_a_running_daemon(make_bridge: MakeBridge) -> None:
    """`mfa-bridge healthcheck` exits 0 with the round-trip time while the daemon runs."""
    bridge = make_bridge()
    result = bridge.cli("healthcheck")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("healthy: Status-Server answered in ")


def test_healthcheck_fails_when_nothing_answers(make_bridge: MakeBridge) -> None:
    """With the daemon stopped the check exits 1 and says there was no answer."""
    bridge = make_bridge(start=False)
    result = bridge.cli("healthcheck", "--timeout", "0.3")
    assert result.returncode == 1
    assert result.stderr.startswith("unhealthy: no answer from 127.0.0.1:")


def test_healthcheck_needs_a_loopback_client_entry(make_bridge: MakeBridge) -> None:
    """Without a client entry for 127.0.0.1 the check says what to add."""
    bridge = make_bridge(start=False, clients=[{"address": "192.0.2.1", "secret": "s" * 20}])
    result = bridge.cli("healthcheck")
    assert result.returncode == 1
    assert "no radius.clients entry covers 127.0.0.1" in result.stderr


# --- systemd -------------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    yield sock
    sock.close()


def messages(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_ready_after_the_directory_answered_then_watchdog_pings(
    make_bridge: MakeBridge, notify_socket: socket.socket
) -> None:
    """READY=1 once listening and the directory answered; WATCHDOG=1 at half WATCHDOG_USEC."""
    bridge = make_bridge(start=False)
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "400000"}
    bridge.start(env=env)
    seen: list[str] = []

    def pinged_twice_after_ready() -> bool:
        seen.extend(messages(notify_socket))
        ready = [i for i, m in enumerate(seen) if "READY=1" in m]
        return bool(ready) and sum("WATCHDOG=1" in m for m in seen[ready[0] :]) >= 2

    assert wait_for(pinged_twice_after_ready), seen
    ready = next(m for m in seen if "READY=1" in m)
    assert "STATUS=serving; directory ldap://127.0.0.1:" in ready
    bridge.stop()
    seen.extend(messages(notify_socket))
    assert any("STOPPING=1" in m for m in seen)


def test_no_ready_while_the_directory_is_down(
    make_bridge: MakeBridge, notify_socket: socket.socket
) -> None:
    """With no directory reachable the daemon serves, but does not tell systemd it is ready."""

    def unreachable(config: dict[str, object]) -> None:
        config["directory"]["urls"] = ["ldap://127.0.0.1:9"]  # type: ignore[index]

    bridge = make_bridge(start=False, change=unreachable)
    bridge.start(env={"NOTIFY_SOCKET": notify_socket.getsockname()})
    assert wait_for(lambda: "directory.unavailable" in bridge.log())
    sent = messages(notify_socket)
    assert not any("READY=1" in m for m in sent), sent
    assert any("waiting for the directory" in m for m in sent)


def test_unit_file_verifies_and_rates_ok(tmp_path: Path) -> None:
    """systemd-analyze verifies the unit and rates its exposure at 2.0 or lower."""
    analyze = require_binary("systemd-analyze")
    here = f"{sys.prefix}/bin/mfa-bridge"  # verify wants the programs it names to exist
    copy = tmp_path / "mfa-bridge.service"
    copy.write_text(UNIT.read_text().replace("/opt/mfa-bridge/bin/mfa-bridge", here))
    verify = subprocess.run(
        [analyze, "verify", str(copy)], check=False, capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    rated = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", str(UNIT)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert rated.returncode == 0, rated.stdout[-2000:]
    marker = "Overall exposure level for mfa-bridge.service:"
    score = float(rated.stdout.rsplit(marker, 1)[1].split()[0])
    assert score <= 2.0
    text = UNIT.read_text()
    # pip puts pyproject's data-files beside bin/ (the image test checks they are there).
    assert "Documentation=file:///opt/mfa-bridge/share/doc/mfa-bridge/README.md" in text
    assert (
        '"share/doc/mfa-bridge" = ["README.md", "LICENSE"]' in (REPO / "pyproject.toml").read_text()
    )
    assert "LogsDirectory=mfa-bridge" in text  # a file audit log under ProtectSystem=strict


# --- reload --------------------------------------------------------------------------------


def test_sighup_applies_a_new_client_secret(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    """After SIGHUP with a new secret, the old one is dropped and the new one is answered."""
    bridge = make_bridge()
    old = client_for(bridge)
    assert old.status() is not None
    bridge.config["radius"]["clients"][0]["secret"] = "a-new-shared-secret-42"
    bridge.reload()
    assert wait_for(lambda: "config.reloaded" in bridge.log()), bridge.log()
    new = client_for(bridge, secret=b"a-new-shared-secret-42")
    assert new.status() is not None
    assert old.status(timeout=0.5) is None  # its Message-Authenticator no longer verifies


def test_sighup_with_a_bad_config_keeps_the_running_one(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """A config with errors is rejected with each problem logged; the daemon goes on as before."""
    bridge = make_bridge()
    bridge.config["radius"]["mode"] = "sometimes"
    bridge.reload()
    assert wait_for(lambda: "the running config stays in force" in bridge.log()), bridge.log()
    assert "radius.mode: must be one of append, challenge, auto" in bridge.log()
    assert client_for(bridge).status() is not None


def test_sighup_reports_settings_that_need_a_restart(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """A changed store path is reported as needing a restart; the rest is applied."""
    bridge = make_bridge()
    bridge.config["store"]["path"] = str(bridge.workdir / "elsewhere.db")
    bridge.config["mfa"]["exempt_users"] = ["oscar"]
    bridge.reload()
    assert wait_for(lambda: "config.reloaded" in bridge.log()), bridge.log()
    assert "restart-needed=store" in bridge.log()
    reply = client_for(bridge).login("oscar", "oscar-pw")
    assert reply is not None and reply.accepted
    assert bridge.audit_reasons()[-1] == "exempt"


# --- metrics -------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """The metrics page as {'name{labels}': value}."""
    return scrape_metrics(f"127.0.0.1:{port}")


def test_metrics_count_decisions_drops_lockouts_and_users(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """The Prometheus page counts decisions by reason and client, drops, lockouts and states."""
    port = free_tcp_port()

    def with_metrics(config: dict[str, Any]) -> None:
        config["metrics"] = {"listen": f"127.0.0.1:{port}"}
        config["radius"]["clients"][0]["name"] = "vpn"

    bridge = make_bridge(change=with_metrics, mode="append")
    client = client_for(bridge)
    assert bridge.cli("user", "enroll", "trent").returncode == 0
    grace = client.login("peggy", "peggy-pw")
    assert grace is not None and grace.accepted
    wrong = client.login("peggy", "nope")
    assert wrong is not None and wrong.rejected
    for _ in range(3):  # max_failures is 3 in the tests' config
        client.login("trent", "trent-pw000000")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.sendto(b"\x01\x02garbage", ("127.0.0.1", bridge.port))
    dropped = "mfa_bridge_radius_dropped_total"
    assert wait_for(lambda: any(k.startswith(dropped) for k in scrape(port)))
    samples = scrape(port)

    def decisions(outcome: str, reason: str) -> float:
        labels = f'client="vpn",outcome="{outcome}",protocol="radius",reason="{reason}"'
        return samples[f"mfa_bridge_decisions_total{{{labels}}}"]

    assert decisions("accept", "grace") == 1
    assert decisions("reject", "bad-password") == 1
    assert decisions("reject", "wrong-code") == 3
    assert samples['mfa_bridge_lockouts_total{reason="failures"}'] == 1
    assert samples['mfa_bridge_users{state="grace"}'] == 1
    assert samples['mfa_bridge_users{state="locked"}'] == 1
    assert samples["mfa_bridge_enrollment_deadlines_next_7_days"] == 0
    assert 20e6 < samples["process_resident_memory_bytes"] < 400e6  # the daemon's own
    assert samples["process_open_fds"] > 3
    assert samples["process_start_time_seconds"] > 1.7e9
    (build,) = [name for name in samples if name.startswith("mfa_bridge_build_info{")]
    assert re.fullmatch(r'mfa_bridge_build_info\{version="\d+\.\d+\.\d+[^"]*"\}', build)
    assert sum(v for k, v in samples.items() if k.startswith(dropped)) == 1
    assert samples["mfa_bridge_directory_seconds_count"] >= 5


# --- doctor --------------------------------------------------------------------------------


def test_doctor_reports_directory_user_clock_and_store(make_bridge: MakeBridge) -> None:
    """Against the test slapd: bound, user found, clocks agree (cn=Monitor), store opens."""
    bridge = make_bridge(start=False)
    result = bridge.cli("doctor", "--user", "alice")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(
        line.startswith("ok    ldap://127.0.0.1:") and "service account bound" in line
        for line in lines
    )
    assert any(line.startswith("ok    user alice: found as uid=alice,") for line in lines)
    assert any(line.startswith("ok    clock: this host is") for line in lines), lines
    assert lines[-1] == "all checks passed"


def test_doctor_names_what_fails(make_bridge: MakeBridge) -> None:
    """An unreachable server, a wrong service password and an unknown user are each reported."""

    def broken(config: dict[str, Any]) -> None:
        config["directory"]["urls"] = ["ldap://127.0.0.1:9", *config["directory"]["urls"]]

    bridge = make_bridge(start=False, change=broken)
    result = bridge.cli("doctor", "--user", "nobody-here")
    assert result.returncode == 1
    assert "fail  ldap://127.0.0.1:9:" in result.stdout
    assert "fail  user nobody-here: not found under" in result.stdout
    assert result.stdout.splitlines()[-1] == "2 problems found"
    bridge.config["directory"]["bind_password"] = "wrong"
    bridge.config["directory"]["urls"] = bridge.config["directory"]["urls"][1:]
    refused = bridge.cli("doctor")
    assert refused.returncode == 1
    assert "service account bind refused" in refused.stdout


def test_audit_file_is_reopened_on_sighup(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    """log.audit to a file: after logrotate moves it and sends SIGHUP, lines go to a new one."""
    bridge = make_bridge(start=False)
    audit = bridge.workdir / "audit.jsonl"
    bridge.config["log"]["audit"] = str(audit)
    bridge.start()
    client = client_for(bridge)
    assert client.login("victor", "victor-pw") is not None
    rotated = audit.with_suffix(".1")
    audit.rename(rotated)
    bridge.reload()
    assert wait_for(lambda: "config.reloaded" in bridge.log()), bridge.log()
    assert client.login("victor", "nope") is not None
    assert wait_for(audit.exists)
    old = [json.loads(line)["reason"] for line in rotated.read_text().splitlines()]
    new = [json.loads(line)["reason"] for line in audit.read_text().splitlines()]
    assert (old, new) == (["grace"], ["bad-password"])
    assert '"event":"auth.' not in bridge.log()  # nothing on stdout when a file is named


# --- stopping ------------------------------------------------------------------------------


def test_sigterm_answers_every_login_in_flight_and_exits_at_once(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """SIGTERM with rejects waiting out reject_delay and logins at the directory: each one
    audited is answered, the process exits well under a second, and later requests get
    nothing (the NAS tries the other server)."""
    bridge = make_bridge(reject_delay=3)
    client = client_for(bridge)
    sent = []
    for i in range(8):
        sent.append(client.request("load100", "wrong-password"))
        sent.append(client.request(f"load{101 + i:03d}", f"load{101 + i:03d}-pw"))
    for req in sent:
        client.send_raw(req.RequestPacket())
    assert wait_for(lambda: len(bridge.audit()) == 16)  # all decided; 8 rejects held back
    assert bridge.proc is not None
    started = time.monotonic()
    bridge.proc.send_signal(signal.SIGTERM)
    bridge.proc.wait(10)
    took = time.monotonic() - started
    answered = set()
    while (data := client.receive(0.5)) is not None:
        answered.add(data[1])
    assert answered == {req.id for req in sent}
    assert took < 1.0, f"exit took {took:.2f} s"
    assert len(bridge.audit()) == 16  # nothing audited that was not sent


def test_sigterm_right_after_a_burst_audits_only_what_it_answers(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """40 logins then SIGTERM at once: every login audited got its reply (none is audited
    and left unsent); the others got nothing, to be retried at the other server."""
    bridge = make_bridge()
    client = client_for(bridge)
    users = [f"load{120 + i:03d}" for i in range(40)]
    ids = {}
    for user in users:
        req = client.request(user, f"{user}-pw")
        ids[user] = req.id
        client.send_raw(req.RequestPacket())
    assert bridge.proc is not None
    bridge.proc.send_signal(signal.SIGTERM)
    assert bridge.proc.wait(10) == 0
    answered = set()
    while (data := client.receive(0.5)) is not None:
        answered.add(data[1])
    audited = {line["user"] for line in bridge.audit()}
    assert {ids[user] for user in audited} == answered


# --- logs ---------------------------------------------------------------------------------


def test_json_logs_and_the_debug_trace(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    """log.format json with `run --debug`: every line one JSON object (the start-up
    warning too), with time, level, event and message; the trace shows the request's
    attributes with the password hidden, the directory's search and bind with their
    latency, and the decision; the password and the code appear nowhere."""
    bridge = make_bridge(start=False, mode="append")
    bridge.config["log"] = {"format": "json", "level": "info"}
    bridge.start(args=("--debug",))
    secret = json.loads(bridge.cli("user", "enroll", "walter", "--json").stdout)["secret"]
    typed = "walter-pw" + code_for(secret)
    client = client_for(bridge)
    accepted = client.login("walter", typed, NAS_Identifier="vpn-1", Calling_Station_Id="AA-BB")
    assert accepted is not None and accepted.accepted
    assert wait_for(lambda: '"auth.decision"' in bridge.log())
    text = bridge.log()
    lines = [json.loads(line) for line in text.splitlines()]  # every line parses
    logs = [line for line in lines if "level" in line]  # audit lines have no level
    for line in logs:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line
        assert line["level"] in {"debug", "info", "warning", "error"}, line
        assert isinstance(line["event"], str) and isinstance(line["message"], str), line
    events = {line["event"] for line in logs}
    assert {"config.warning", "radius.request", "radius.reply", "auth.decision"} <= events
    assert {"directory.search", "directory.bind"} <= events
    request = next(
        line
        for line in logs
        if line["event"] == "radius.request" and "Access-Request" in line["message"]
    )
    assert "User-Password = <16 octets, hidden>" in request["message"]
    assert "NAS-Identifier = 'vpn-1'" in request["message"]
    bind = next(line for line in logs if line["event"] == "directory.bind")
    assert re.search(r"accepted in \d+\.\d ms", bind["message"]), bind
    decision = next(line for line in logs if line["event"] == "auth.decision")
    assert "accept (activated)" in decision["message"]
    assert "walter-pw" not in text and typed not in text
