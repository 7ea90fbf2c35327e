"""Can an unauthenticated caller tell an unknown user from a wrong password by the time?

Against a real daemon and slapd on this machine: N requests for names the directory does
not know and N for real users with a wrong password, interleaved in batches, over RADIUS
(radius.reject_delay) and the portal (portal.failure_delay). Prints, for each, the best
single-request classification any latency threshold achieves (50 % is a coin toss), idle
and with a background load of good logins.

    python3 bench/timing.py [--tries 1000] [--delay 1.0]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import re
import select
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.loadgen import Result, _Flight  # noqa: E402
from tests.harness import Bridge, free_tcp_port, free_udp_port  # noqa: E402
from tests.slapd import Slapd, SlapdUser  # noqa: E402

SECRET = "timing-bench-secret-0123456789"  # noqa: S105 - a test secret
BATCH = 50


def classification(unknown: list[float], known: list[float]) -> float:
    """The best accuracy of "slower than t means known" (or faster), over every t."""
    labelled = sorted([(t, 0) for t in unknown] + [(t, 1) for t in known])
    total = len(labelled)
    known_above = len(known)
    unknown_below = 0
    best = 0.5
    for _t, label in labelled:
        if label == 0:
            unknown_below += 1
        else:
            known_above -= 1
        right = (unknown_below + known_above) / total
        best = max(best, right, 1 - right)
    return best


def radius_latencies(port: int, logins: list[tuple[str, str]]) -> list[float]:
    """Send a batch at once; each reply's latency (every one is a reject)."""
    flight = _Flight(len(logins), ("127.0.0.1", port), SECRET.encode())
    result = Result()
    for user, password in logins:
        flight.send(user, password)
    deadline = time.perf_counter() + 10
    while flight.inflight and time.perf_counter() < deadline:
        ready, _, _ = select.select(flight.sockets, [], [], 0.05)
        now = time.perf_counter()
        for sock in ready:
            flight.receive(flight.sockets.index(sock), now, result)
    flight.close()
    return result.latencies


def portal_sign_in(address: tuple[str, int], user: str, password: str) -> float:
    """One failed sign-in's latency (the form's token fetched first, not timed)."""
    conn = http.client.HTTPConnection(*address, timeout=10)
    conn.request("GET", "/")
    page = conn.getresponse()
    cookie = page.getheader("Set-Cookie", "").split(";")[0]
    token = re.search(r'name="csrf" value="([^"]+)"', page.read().decode())
    body = urlencode({"csrf": token[1] if token else "", "username": user, "password": password})
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
    started = time.perf_counter()
    conn.request("POST", "/sign-in", body, headers)
    reply = conn.getresponse()
    reply.read()
    took = time.perf_counter() - started
    conn.close()
    return took


def background(port: int, users: list[SlapdUser], stop: Any) -> None:
    """Good logins at 16 in flight until told to stop: the load."""
    from bench.loadgen import run  # noqa: PLC0415

    logins = [(u.uid, u.password) for u in users]
    while not stop.is_set():
        run(("127.0.0.1", port), SECRET.encode(), logins, 16)


def measure(bridge: Bridge, users: list[SlapdUser], tries: int) -> tuple[float, float]:
    """(RADIUS, portal) classification accuracy, batches of unknown and known alternated."""
    radius_unknown: list[float] = []
    radius_known: list[float] = []
    for batch in range(tries // BATCH):
        unknown = [(f"nobody{batch}x{i}", "wrong-password") for i in range(BATCH)]
        known = [(users[i % len(users)].uid, "wrong-password") for i in range(BATCH)]
        radius_unknown += radius_latencies(bridge.port, unknown)
        radius_known += radius_latencies(bridge.port, known)
    host, port = bridge.config["portal"]["listen"].rsplit(":", 1)
    address = (host, int(port))
    portal_unknown: list[float] = []
    portal_known: list[float] = []
    with ThreadPoolExecutor(BATCH) as pool:
        for batch in range(tries // BATCH):
            names = [f"nobody{batch}y{i}" for i in range(BATCH)]
            portal_unknown += pool.map(lambda n: portal_sign_in(address, n, "x"), names)
            real = [users[(batch * BATCH + i) % len(users)].uid for i in range(BATCH)]
            portal_known += pool.map(lambda n: portal_sign_in(address, n, "x"), real)
    return (
        classification(radius_unknown, radius_known),
        classification(portal_unknown, portal_known),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=1.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mfa-timing-"))
    users = [SlapdUser(f"t{i:05d}", f"pw-{i:05d}") for i in range(2000)]
    slapd = Slapd(work / "slapd", users=users, stats_log=False)
    slapd.start()
    config: dict[str, Any] = {
        "directory": {
            "urls": [slapd.url],
            "bind_dn": slapd.service_dn,
            "bind_password": slapd.service_password,
            "user_base": slapd.people_dn,
            "cache_ttl": 0,  # every request searches: the difference is a bind, no more
        },
        "mfa": {"issuer": "bench"},
        "store": {"path": str(work / "state.db")},
        "radius": {
            "listen": f"127.0.0.1:{free_udp_port()}",
            "mode": "append",
            "reject_delay": args.delay,
            "clients": [{"address": "127.0.0.1", "secret": SECRET}],
        },
        "portal": {
            "listen": f"127.0.0.1:{free_tcp_port()}",
            "failure_delay": args.delay,
            "max_attempts_per_user": 10_000,
            "max_attempts_per_address": 1_000_000,
            "max_connections_per_address": 256,
        },
        "log": {"level": "warn"},
    }
    bridge = Bridge(work / "bridge", config)
    bridge.start()
    try:
        idle = measure(bridge, users, args.tries)
        stop = multiprocessing.Event()
        load = multiprocessing.Process(target=background, args=(bridge.port, users, stop))
        load.start()
        try:
            loaded = measure(bridge, users, args.tries)
        finally:
            stop.set()
            load.join(30)
    finally:
        bridge.stop()
        slapd.stop()
    print(f"delay {args.delay:g} s, {args.tries} unknown and {args.tries} known per case")
    print(f"RADIUS: idle {idle[0]:.1%}, under load {loaded[0]:.1%}")
    print(f"portal: idle {idle[1]:.1%}, under load {loaded[1]:.1%}")


if __name__ == "__main__":
    main()
