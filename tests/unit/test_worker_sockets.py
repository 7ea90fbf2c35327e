"""`server.workers`: its config key, the descriptors a worker is handed, the kernel's
spreading of one NAS socket's requests over a socket group, and the metrics page adding
the workers' counters to the main process's."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from twisted.internet.defer import succeed

from bridge.config import parse_config
from bridge.core.types import Decision, Outcome, Reason, State
from bridge.metrics import Metrics
from bridge.workers import (
    Sample,
    Sockets,
    counter_samples,
    inherited,
    spread_by_request,
)
from tests.unit.test_config import minimal, problems_of


def test_workers_default_to_one_and_take_a_number_or_auto(tmp_path: Path) -> None:
    assert parse_config(minimal(), tmp_path).server.workers == 1
    data = minimal()
    data["server"] = {"workers": 4}
    assert parse_config(data, tmp_path).server.workers == 4
    data["server"] = {"workers": "auto"}
    assert parse_config(data, tmp_path).server.workers == min(64, os.cpu_count() or 1)


@pytest.mark.parametrize("value", [0, 65, "two", 1.5, True])
def test_a_bad_worker_count_names_the_key(tmp_path: Path, value: object) -> None:
    data = minimal()
    data["server"] = {"workers": value}
    (problem,) = problems_of(data, tmp_path)
    assert problem.startswith("server.workers: must be")
    assert "64" in problem


def test_an_unknown_server_key_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    data = minimal()
    data["server"] = {"worker": 2}
    (problem,) = problems_of(data, tmp_path)
    assert "server.worker" in problem and "workers" in problem


def test_a_worker_finds_its_sockets_where_the_main_put_them() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as radius,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ldap,
    ):
        sockets = Sockets({"radius": radius, "ldap": ldap})
        told = inherited(sockets.descriptors())
        handed = sockets.child_fds()
        assert set(told) == {"radius", "ldap"}
        assert handed[told["radius"]] == radius.fileno()
        assert handed[told["ldap"]] == ldap.fileno()
    assert inherited("") == {}


def group(count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", socks[0].getsockname()[1] if socks else 0))
        sock.settimeout(0)
        socks.append(sock)
    return socks


def received(socks: list[socket.socket]) -> list[list[bytes]]:
    got: list[list[bytes]] = [[] for _ in socks]
    for index, sock in enumerate(socks):
        while True:
            try:
                got[index].append(sock.recv(4096))
            except BlockingIOError:
                break
    return got


def test_one_nas_socket_is_spread_over_the_group_and_a_resend_stays() -> None:
    """The kernel picks the socket by the Request Authenticator: requests from one source
    port reach every worker, and a retransmission reaches the same one as the first."""
    socks = group(3)
    spread_by_request(socks[0], 3)
    nas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        requests = [bytes([1, n, 0, 20]) + os.urandom(16) for n in range(60)]
        for request in requests:
            nas.sendto(request, socks[0].getsockname())
            nas.sendto(request, socks[0].getsockname())  # the NAS resends it
        got = received(socks)
    finally:
        nas.close()
        for sock in socks:
            sock.close()
    assert sum(map(len, got)) == 120
    assert all(len(share) >= 4 for share in got), [len(share) for share in got]
    for share in got:
        for request in share:  # both copies at the same socket
            assert share.count(request) == 2
    for request in requests:
        index = int.from_bytes(request[4:8], "big") % 3
        assert request in got[index]


def test_without_the_spread_one_source_port_reaches_one_socket() -> None:
    """What the kernel does by itself (the EAP case): it hashes the source address and
    port, so one NAS socket's requests all reach one worker."""
    socks = group(3)
    nas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for n in range(30):
            nas.sendto(bytes([1, n, 0, 20]) + os.urandom(16), socks[0].getsockname())
        got = received(socks)
    finally:
        nas.close()
        for sock in socks:
            sock.close()
    assert sorted(map(len, got)) == [0, 0, 30]


def accepted(metrics: Metrics, reason: Reason) -> None:
    decision = Decision(Outcome.ACCEPT, reason, "walter", State.ACTIVE, State.ACTIVE)
    metrics.decision(decision, "radius", "vpn")


def test_the_page_adds_the_workers_counters_to_the_mains() -> None:
    worker = Metrics()
    for _ in range(3):
        accepted(worker, Reason.ACCEPTED)
    accepted(worker, Reason.GRACE)  # a label set the main has not seen
    worker.directory_seconds.observe(0.002)
    theirs: list[Sample] = worker.samples()
    assert all(not name.endswith("_created") for name, _, _ in theirs)
    assert not any(name.startswith("process_") for name, _, _ in theirs)  # gauges stay out

    main = Metrics()
    accepted(main, Reason.ACCEPTED)
    main.directory_seconds.observe(0.2)
    main.add_workers(lambda: succeed(theirs + theirs))  # two workers alike
    for refresh in main.before_scrape:
        refresh()
    page = generate_latest(main.page).decode()
    assert (
        'mfa_bridge_decisions_total{client="vpn",outcome="accept",protocol="radius",'
        'reason="accepted"} 7.0' in page
    )
    assert 'reason="grace"} 2.0' in page
    assert "mfa_bridge_directory_seconds_count 3.0" in page
    assert 'mfa_bridge_directory_seconds_bucket{le="0.0025"} 2.0' in page
    assert 'mfa_bridge_directory_seconds_bucket{le="+Inf"} 3.0' in page
    assert "mfa_bridge_build_info" in page  # the rest of the main's registry is shown


def test_counter_samples_leave_out_gauges_and_timestamps() -> None:
    metrics = Metrics()
    accepted(metrics, Reason.ACCEPTED)
    names = {name for name, _, _ in counter_samples(metrics.registry.collect())}
    assert "mfa_bridge_decisions_total" in names
    assert not any(n.endswith("_created") or n.startswith("process_") for n in names)
