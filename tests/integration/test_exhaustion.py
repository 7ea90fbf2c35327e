"""Exhaustion: many and slow connections against the real listeners, under a low
descriptor limit. The bridge refuses what is over its limits and keeps answering the
rest; it never runs out of descriptors, so a valid login never looks like a wrong one."""

from __future__ import annotations

import select
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import Bridge, free_tcp_port
from tests.integration.test_ldap_proxy import password_of, proxy_url, whoami
from tests.slapd import Slapd

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
DESCRIPTORS = 300  # the daemon's limits below need about 260


def limited(config: dict[str, Any]) -> None:
    """Portal and LDAP proxy with small limits; a short request deadline."""
    config["directory"]["pool_size"] = 4
    config["portal"] = {
        "listen": f"127.0.0.1:{free_tcp_port()}",
        "max_connections": 40,
        "max_connections_per_address": 40,  # the tests all connect from 127.0.0.1
        "request_timeout": 5,
    }
    config["ldap_proxy"] = {
        "listen": f"127.0.0.1:{free_tcp_port()}",
        "max_connections": 60,
        "max_connections_per_address": 60,
    }


def portal_address(bridge: Bridge) -> tuple[str, int]:
    host, port = bridge.config["portal"]["listen"].rsplit(":", 1)
    return host, int(port)


def closed_within(socks: list[socket.socket], seconds: float) -> int:
    """How many of `socks` the server closes (or resets) within `seconds`."""
    closed: set[socket.socket] = set()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        waiting = [sock for sock in socks if sock not in closed]
        readable, _, _ = select.select(waiting, [], [], left)
        for sock in readable:
            try:
                if sock.recv(1) == b"":
                    closed.add(sock)
            except ConnectionResetError:
                closed.add(sock)
        if not readable:
            break
    return len(closed)


def test_slow_and_many_portal_connections_leave_logins_working(
    slapd: Slapd, make_bridge: MakeBridge
) -> None:
    """150 trickling portal connections under a 300-descriptor limit: 40 held, the rest
    closed at once, the held ones cut after request_timeout (5 s); LDAP binds all succeed
    meanwhile, and the portal answers again afterwards."""
    bridge = make_bridge(change=limited)
    assert bridge.proc is not None
    subprocess.run(
        ["prlimit", f"--pid={bridge.proc.pid}", f"--nofile={DESCRIPTORS}:{DESCRIPTORS}"],
        check=True,
    )
    slow: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(150):
            sock = socket.create_connection(portal_address(bridge))
            sock.sendall(b"GET / HTTP/1.1\r\n")  # and never the rest
            slow.append(sock)
        # The kernel may hand them to the daemon in another order: count, not positions.
        assert closed_within(slow, 1.0) == 110
        assert time.monotonic() - started < 5  # else the held ones' deadline came meanwhile
        for i in range(10):
            user = f"load{160 + i}"
            bound = whoami(proxy_url(bridge), slapd.user_dn(user), password_of(user))
            assert bound.returncode == 0, bound.stderr
        assert closed_within(slow, 8.0) == 150  # the held ones pass request_timeout
    finally:
        for sock in slow:
            sock.close()
    with socket.create_connection(portal_address(bridge)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: portal\r\nConnection: close\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
    assert "EMFILE" not in bridge.log() and "Too many open files" not in bridge.log()


def test_ldap_proxy_refuses_connections_beyond_its_limit_never_answering_49(
    slapd: Slapd, make_bridge: MakeBridge
) -> None:
    """60 connections held open under the descriptor limit: the 61st app cannot connect
    (never a 49, which an app takes for a wrong password); once they close, it binds."""
    bridge = make_bridge(change=limited)
    assert bridge.proc is not None
    subprocess.run(
        ["prlimit", f"--pid={bridge.proc.pid}", f"--nofile={DESCRIPTORS}:{DESCRIPTORS}"],
        check=True,
    )
    host, port = bridge.config["ldap_proxy"]["listen"].rsplit(":", 1)
    held: list[socket.socket] = []
    try:
        held += [socket.create_connection((host, int(port))) for _ in range(60)]
        time.sleep(0.2)
        user = "load171"
        refused = whoami(proxy_url(bridge), slapd.user_dn(user), password_of(user))
        assert refused.returncode != 0
        assert "Invalid credentials" not in refused.stderr and "(49)" not in refused.stderr
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    bound = whoami(proxy_url(bridge), slapd.user_dn(user), password_of(user))
    assert bound.returncode == 0, bound.stderr
