"""The daemon under bad input and failing parts: it drops, counts, recovers, loses nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Bridge, RadiusClient, code_for
from tests.slapd import Slapd, SlapdUser

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
ClientFor = Callable[..., RadiusClient]


@pytest.fixture
def own_slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A directory of this test's own, free to be stopped, paused and restarted."""
    users = [SlapdUser(f"user{i:02d}", f"user{i:02d}-pw") for i in range(40)]
    server = Slapd(tmp_path / "own-slapd", users=users)
    server.start()
    yield server
    server.stop()


def use_directory(slapd: Slapd, *urls: str) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        config["directory"]["urls"] = list(urls) or [slapd.url]
        config["directory"]["bind_dn"] = slapd.service_dn
        config["directory"]["user_base"] = slapd.people_dn
        config["mfa"]["exempt_groups"] = []

    return change


def test_unknown_client_gets_no_reply(make_bridge: MakeBridge) -> None:
    """A request from an address that is not a configured client is dropped and logged."""
    bridge = make_bridge()
    stranger = RadiusClient(bridge.port, source="127.0.0.2")
    try:
        assert stranger.login("alice", "alice-pw") is None
    finally:
        stranger.close()
    time.sleep(0.2)  # the log line is written by another process
    assert "unknown-client" in bridge.log()


def test_missing_message_authenticator_dropped(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """With require_message_authenticator, a request without one gets no reply at all."""
    bridge = make_bridge()
    client = client_for(bridge)
    assert client.exchange(client.request("alice", "alice-pw", ma=False), timeout=1.5) is None
    reply = client.login("alice", "alice-pw")
    assert reply is not None and reply.accepted


def test_per_client_override_allows_legacy_clients(
    make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """A client entry with require_message_authenticator: false is answered without one."""
    bridge = make_bridge(
        clients=[
            {"address": "127.0.0.1", "secret": "testing123", "require_message_authenticator": False}
        ]
    )
    client = client_for(bridge)
    reply = client.exchange(client.request("alice", "alice-pw", ma=False))
    assert reply is not None and reply.accepted and reply.raw[20] == 80


def test_malformed_flood_then_valid_login(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    """2,000 malformed datagrams get no reply and do not stop a valid login afterwards."""
    bridge = make_bridge()
    client = client_for(bridge)
    valid = client.request("bob", "bob-pw").RequestPacket()
    rng = random.Random(2865)
    for i in range(2000):
        kind = i % 4
        if kind == 0:
            junk = rng.randbytes(rng.randrange(0, 60))
        elif kind == 1:
            junk = valid[:4] + rng.randbytes(len(valid) - 4)
        elif kind == 2:
            junk = valid[: rng.randrange(20, len(valid))]
        else:
            junk = bytes([1, i % 256]) + (4096 + 8).to_bytes(2, "big") + rng.randbytes(30)
        client.send_raw(junk)
    assert client.receive(timeout=1.0) is None
    reply = client.login("bob", "bob-pw")
    assert reply is not None and reply.accepted
    assert bridge.proc is not None and bridge.proc.poll() is None


def test_retransmission_answered_identically_with_one_bind(
    make_bridge: MakeBridge, client_for: ClientFor, slapd: Slapd
) -> None:
    """The same datagram sent twice gets the identical reply and costs one directory bind."""
    bridge = make_bridge(mode="append")
    client = client_for(bridge)
    secret = json.loads(bridge.cli("user", "enroll", "carol", "--json").stdout)["secret"]
    raw = client.request("carol", "carol-pw" + code_for(secret)).RequestPacket()
    bridge.wait_for_directory()  # its own connections' binds are not the login's
    binds = slapd.bind_count()
    client.send_raw(raw)
    first = client.receive()
    client.send_raw(raw)
    second = client.receive()
    assert first is not None and first[0] == 2
    assert second == first
    assert slapd.bind_count() - binds == 1


def test_directory_down_rejects_then_recovers(
    make_bridge: MakeBridge, client_for: ClientFor, own_slapd: Slapd
) -> None:
    """With the directory stopped logins are rejected; once it is back they succeed again."""
    bridge = make_bridge(change=use_directory(own_slapd))
    client = client_for(bridge)
    ok = client.login("user01", "user01-pw")
    assert ok is not None and ok.accepted
    own_slapd.stop()
    down = client.login(
        "user01",
        "user01-pw",
    )
    assert down is not None and down.rejected
    assert client.status() is not None
    own_slapd.start()
    deadline = time.monotonic() + 10
    reply = None
    while time.monotonic() < deadline:
        reply = client.login("user01", "user01-pw")
        if reply is not None and reply.accepted:
            break
    assert reply is not None and reply.accepted
    assert "directory.unavailable" in bridge.log()


def test_hung_directory_does_not_block_the_daemon(
    make_bridge: MakeBridge, client_for: ClientFor, own_slapd: Slapd
) -> None:
    """A paused directory: Status-Server still answers at once and the login is rejected in time."""
    bridge = make_bridge(change=use_directory(own_slapd))
    client = client_for(bridge)
    other = client_for(bridge)
    assert client.login("user02", "user02-pw") is not None
    own_slapd.pause()
    try:
        raw = client.request("user02", "user02-pw").RequestPacket()
        client.send_raw(raw)
        started = time.monotonic()
        assert other.status(timeout=1.0) is not None
        assert time.monotonic() - started < 1.0
        reply = client.receive(timeout=10)
        assert reply is not None and reply[0] == 3
    finally:
        own_slapd.resume()


def test_failover_from_a_dead_url(
    make_bridge: MakeBridge, client_for: ClientFor, own_slapd: Slapd
) -> None:
    """A first URL that refuses connections is skipped and the second one serves."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"ldap://127.0.0.1:{sock.getsockname()[1]}"
    bridge = make_bridge(change=use_directory(own_slapd, dead, own_slapd.url))
    client = client_for(bridge)
    for i in range(3):
        reply = client.login(f"user0{i + 3}", f"user0{i + 3}-pw")
        assert reply is not None and reply.accepted


def test_200_concurrent_logins_all_answered(make_bridge: MakeBridge, client_for: ClientFor) -> None:
    """200 logins of distinct users sent at once are all answered, each with its own reply."""
    bridge = make_bridge()
    client = client_for(bridge)
    requests = {}
    for i in range(200):
        req = client.request(f"load{i:03d}", f"load{i:03d}-pw")
        req.id = i
        requests[i] = req
    for req in requests.values():
        client.send_raw(req.RequestPacket())
    answered: dict[int, bytes] = {}
    deadline = time.monotonic() + 30
    while len(answered) < 200 and time.monotonic() < deadline:
        data = client.receive(timeout=max(0.1, deadline - time.monotonic()))
        if data is not None:
            answered[data[1]] = data
    assert len(answered) == 200
    accepted = 0
    for ident, raw in answered.items():
        req = requests[ident]
        reply = req.CreateReply(packet=raw)
        assert req.VerifyReply(reply, raw, enforce_ma=True)
        accepted += reply.code == 2
    assert accepted == 200


def test_kill_9_under_load_loses_no_committed_enrollment(
    make_bridge: MakeBridge, client_for: ClientFor, own_slapd: Slapd
) -> None:
    """kill -9 during logins and CLI enrollments: every enrollment confirmed before it survives."""
    bridge = make_bridge(mode="append", change=use_directory(own_slapd))
    client = client_for(bridge)
    secrets: dict[str, str] = {}
    for i in range(20, 40):
        user = f"user{i:02d}"
        secrets[user] = json.loads(bridge.cli("user", "enroll", user, "--json").stdout)["secret"]
    activated: list[str] = []
    stop = threading.Event()

    def background() -> None:
        noise = RadiusClient(bridge.port)
        try:
            while not stop.is_set():
                noise.login(
                    f"user{random.randrange(0, 20):02d}",
                    "wrong",
                )
        finally:
            noise.close()

    threads = [threading.Thread(target=background) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for user, secret in list(secrets.items())[:12]:
            reply = client.login(user, f"{user}-pw" + code_for(secret))
            assert reply is not None and reply.accepted
            activated.append(user)
        assert bridge.proc is not None
        os.kill(bridge.proc.pid, signal.SIGKILL)
        bridge.proc.wait(5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    bridge.proc = None
    bridge.start()
    views = {v["username"]: v for v in json.loads(bridge.cli("user", "list", "--json").stdout)}
    for user in secrets:
        assert user in views
    for user in activated:
        assert views[user]["state"] == "active"
    for user in set(secrets) - set(activated):
        assert views[user]["state"] == "pending"
    reply = client.login(activated[0], f"{activated[0]}-pw" + code_for(secrets[activated[0]], 1))
    assert reply is not None and reply.accepted
