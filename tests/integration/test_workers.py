"""`server.workers`: several processes on one RADIUS port (SO_REUSEPORT, requests spread
by their authenticator), against the real slapd, with pyrad-built requests from one NAS
socket, as a VPN concentrator sends them. Which process answered is read from the debug
trace's `worker` field."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary
from tests.harness import (
    Bridge,
    RadiusClient,
    code_for,
    free_tcp_port,
    scrape_metrics,
    wait_for,
)
from tests.slapd import Slapd

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
ClientFor = Callable[..., RadiusClient]
WORKERS = 3
LOGINS = 30  # each worker is missed by all of them with odds of ~1e-5


def with_workers(config: dict[str, Any]) -> None:
    config["server"] = {"workers": WORKERS}
    config["log"] = {"format": "json", "level": "info"}
    config["metrics"] = {"listen": f"127.0.0.1:{free_tcp_port()}"}


def started(make_bridge: MakeBridge, max_failures: int | None = None) -> Bridge:
    bridge = make_bridge(start=False, change=with_workers)
    if max_failures is not None:
        bridge.config["mfa"]["max_failures"] = max_failures
    bridge.start(args=("--debug",))
    assert wait_for(lambda: len(ready_workers(bridge)) == WORKERS, timeout=15), bridge.log()
    return bridge


def lines(bridge: Bridge) -> list[dict[str, Any]]:
    return [json.loads(line) for line in bridge.log().splitlines() if line.startswith("{")]


def events(bridge: Bridge, name: str) -> list[dict[str, Any]]:
    return [line for line in lines(bridge) if line.get("event") == name and "level" in line]


def audit_reasons(bridge: Bridge) -> list[str]:
    """The audit lines' reasons (JSON too, but without a level)."""
    return [line["reason"] for line in lines(bridge) if "level" not in line and "reason" in line]


def ready_workers(bridge: Bridge) -> set[int]:
    return {
        line.get("worker", 0) for line in lines(bridge) if line.get("event") == "directory.ready"
    }


def decided_by(bridge: Bridge, user: str) -> list[tuple[int, str]]:
    """(worker, the trace's decision text) of each decision for `user`, oldest first."""
    return [
        (line.get("worker", 0), line["message"])
        for line in lines(bridge)
        if line.get("event") == "auth.decision" and f"user={user}" in line["message"]
    ]


def worker_pids(bridge: Bridge) -> list[int]:
    assert bridge.proc is not None
    pid = bridge.proc.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_every_worker_answers_and_the_metrics_add_them_up(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    bridge = started(make_bridge)
    assert len(worker_pids(bridge)) == WORKERS - 1
    nas = client_for(bridge)  # one socket: one source port for every request
    for _ in range(LOGINS):  # grace: the password alone
        reply = nas.login("walter", "walter-pw")
        assert reply is not None and reply.accepted
    assert wait_for(lambda: len(decided_by(bridge, "walter")) == LOGINS)
    assert {worker for worker, _ in decided_by(bridge, "walter")} == set(range(WORKERS))
    metrics = scrape_metrics(bridge.config["metrics"]["listen"])
    key = (
        'mfa_bridge_decisions_total{client="127.0.0.1/32",outcome="accept",'
        'protocol="radius",reason="grace"}'
    )
    assert metrics[key] == LOGINS
    assert metrics['mfa_bridge_radius_packets_total{kind="access-requests"}'] >= LOGINS
    assert metrics["mfa_bridge_directory_seconds_count"] == LOGINS


def test_a_code_spent_at_one_worker_is_refused_by_all(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    bridge = started(make_bridge, max_failures=LOGINS + 1)  # replays count as failures
    secret = json.loads(bridge.cli("user", "enroll", "erin", "--json").stdout)["secret"]
    typed = "erin-pw" + code_for(secret)
    nas = client_for(bridge)
    first = nas.login("erin", typed)
    assert first is not None and first.accepted
    for _ in range(LOGINS):  # new requests (new authenticators), the same password+code
        again = nas.login("erin", typed)
        assert again is not None and again.rejected
    assert wait_for(lambda: len(decided_by(bridge, "erin")) == LOGINS + 1)
    decisions = decided_by(bridge, "erin")
    refusing = {worker for worker, text in decisions[1:] if "replay" in text}
    assert len(refusing) == WORKERS, decisions
    assert audit_reasons(bridge).count("replay") == LOGINS


def test_a_retransmission_is_answered_from_the_cache_of_the_worker_that_has_it(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """A resend carries the same authenticator, so it reaches the worker that answered
    the request and holds the reply (at another, it would be a replay)."""
    bridge = started(make_bridge)
    users = ("alice", "bob", "carol", "ivan", "judy", "mallory", "oscar", "peggy")
    nas = client_for(bridge)
    for user in users:
        secret = json.loads(bridge.cli("user", "enroll", user, "--json").stdout)["secret"]
        request = nas.request(user, f"{user}-pw" + code_for(secret))
        first = nas.exchange(request)
        again = nas.exchange(request)
        assert first is not None and again is not None
        assert first.accepted
        assert first.raw == again.raw  # the same Access-Accept, resent
    metrics = scrape_metrics(bridge.config["metrics"]["listen"])
    assert metrics['mfa_bridge_radius_packets_total{kind="duplicates"}'] == len(users)
    assert "replay" not in audit_reasons(bridge)
    assert len({worker for user in users for worker, _ in decided_by(bridge, user)}) > 1


def test_a_worker_that_dies_is_restarted_and_its_share_answered(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    bridge = started(make_bridge)
    nas = client_for(bridge)
    for _ in range(LOGINS):
        reply = nas.login("grace", "grace-pw")
        assert reply is not None and reply.accepted
    listen = bridge.config["metrics"]["listen"]
    count = "mfa_bridge_directory_seconds_count"
    assert scrape_metrics(listen)[count] == LOGINS  # the last each worker told the main
    victim = worker_pids(bridge)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: len(events(bridge, "worker.died")) == 1, timeout=5)
    assert wait_for(lambda: len(worker_pids(bridge)) == WORKERS - 1, timeout=10)
    assert victim not in worker_pids(bridge)
    assert wait_for(
        lambda: len(events(bridge, "directory.ready")) == WORKERS + 1,
        timeout=10,
    )
    for _ in range(LOGINS):  # the restarted worker holds the same socket: none lost
        reply = nas.login("grace", "grace-pw")
        assert reply is not None and reply.accepted
    assert len({worker for worker, _ in decided_by(bridge, "grace")[LOGINS:]}) == WORKERS
    assert scrape_metrics(listen)[count] == 2 * LOGINS  # the dead one's count is kept


def test_sighup_reaches_every_worker(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    bridge = started(make_bridge)
    bridge.config["radius"]["clients"][0]["secret"] = "a-new-secret-for-all-workers"
    bridge.reload()
    assert wait_for(lambda: len(events(bridge, "config.reloaded")) == WORKERS, timeout=10)
    nas = client_for(bridge, secret=b"a-new-secret-for-all-workers")
    for _ in range(LOGINS):
        reply = nas.login("heidi", "heidi-pw")
        assert reply is not None and reply.accepted
    assert len({worker for worker, _ in decided_by(bridge, "heidi")}) == WORKERS


def test_sigterm_stops_the_workers_and_a_killed_main_takes_them_along(
    make_bridge: MakeBridge,
) -> None:
    bridge = started(make_bridge)
    workers = worker_pids(bridge)
    assert bridge.stop() == 0
    assert wait_for(lambda: not any(alive(pid) for pid in workers), timeout=5)

    orphaned = started(make_bridge)
    workers = worker_pids(orphaned)
    assert orphaned.proc is not None
    orphaned.proc.kill()  # SIGKILL: no chance to stop them; their stdin closes
    orphaned.proc.wait(5)
    assert wait_for(lambda: not any(alive(pid) for pid in workers), timeout=10)


def test_ctrl_c_stops_the_main_and_its_workers_once(make_bridge: MakeBridge) -> None:
    """A terminal's Ctrl-C signals the whole process group: the main process stops its
    workers (they leave SIGINT to it), none is restarted, and no error is logged."""
    bridge = make_bridge(start=False, change=with_workers)
    bridge.start(args=("--debug",), own_group=True)
    assert wait_for(lambda: len(ready_workers(bridge)) == WORKERS, timeout=15), bridge.log()
    workers = worker_pids(bridge)
    assert bridge.proc is not None
    os.killpg(bridge.proc.pid, signal.SIGINT)
    assert bridge.proc.wait(10) == 0
    assert wait_for(lambda: not any(alive(pid) for pid in workers), timeout=5)
    levels = {line.get("level") for line in lines(bridge)}
    assert "error" not in levels, [line for line in lines(bridge) if line.get("level") == "error"]
    assert not events(bridge, "worker.died")


def test_a_port_held_by_another_program_is_an_error_not_a_share(make_bridge: MakeBridge) -> None:
    bridge = make_bridge(start=False, change=with_workers)
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even one that would share
    holder.bind(("127.0.0.1", bridge.port))
    try:
        with pytest.raises(RuntimeError, match="exited 1"):
            bridge.start(timeout=10)
        assert f"radius: cannot listen on 127.0.0.1:{bridge.port}" in bridge.log()
    finally:
        holder.close()


def test_the_ldap_proxy_is_served_by_every_worker(make_bridge: MakeBridge, slapd: Slapd) -> None:
    """Each connection goes to one worker (the kernel's choice by address and port):
    ldapwhoami, one connection per bind, reaches all of them."""
    require_binary("ldapwhoami")

    def change(config: dict[str, Any]) -> None:
        with_workers(config)
        config["ldap_proxy"] = {"listen": f"127.0.0.1:{free_tcp_port()}"}

    bridge = make_bridge(start=False, change=change)
    bridge.start(args=("--debug",))
    assert wait_for(lambda: len(ready_workers(bridge)) == WORKERS, timeout=15), bridge.log()
    url = f"ldap://{bridge.config['ldap_proxy']['listen']}"
    dn = f"uid=judy,{slapd.people_dn}"
    env = {**os.environ, "LDAPNOINIT": "1", "LC_ALL": "C"}
    for _ in range(LOGINS):  # grace: the password alone
        result = subprocess.run(
            ["ldapwhoami", "-x", "-H", url, "-D", dn, "-w", "judy-pw"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"dn:{dn}"
    assert wait_for(lambda: len(decided_by(bridge, "judy")) == LOGINS)
    assert {worker for worker, _ in decided_by(bridge, "judy")} == set(range(WORKERS))
