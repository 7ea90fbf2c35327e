"""Bind + search through mfa-bridge's LDAP proxy, against the same directly at slapd.

    python3 bench/ldap_proxy.py [--users 2000] [--parallel 16] [--reps 3]

One client (python-ldap's asynchronous calls on `parallel` connections, one thread) binds
as each user once per run and then searches for the user's own entry, as a legacy app
does at login. Through the proxy the password carries the current TOTP code (users are
active, secrets imported); directly at slapd it is the password alone. Runs alternate
between the two within a fresh TOTP step; figures are medians over the repetitions.
"""

from __future__ import annotations

import argparse
import select
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ldap  # noqa: E402

from bench.run import SECRET, STEP, import_secrets, next_step  # noqa: E402
from bridge.core.totp import code_at_step, new_secret  # noqa: E402
from tests.harness import Bridge, free_tcp_port, free_udp_port  # noqa: E402
from tests.slapd import Slapd, SlapdUser  # noqa: E402


@dataclass
class Run:
    """What one run measured."""

    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000


def drive(url: str, jobs: list[tuple[str, str]], parallel: int) -> Run:
    """Bind then search for each (dn, password), `parallel` connections in flight."""
    conns = []
    for _ in range(parallel):
        conn = ldap.initialize(url)
        conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conns.append(conn)
    queue = list(reversed(jobs))
    state: dict[int, tuple[Any, str, str, float, int]] = {}  # fd -> conn, stage, dn, t0, msgid
    result = Run()
    poller = select.poll()

    def start(conn: Any) -> None:
        dn, password = queue.pop()
        msgid = conn.simple_bind(dn, password)
        fd = conn.fileno()
        if fd not in state:
            poller.register(fd, select.POLLIN)
        state[fd] = (conn, "bind", dn, time.perf_counter(), msgid)

    started = time.perf_counter()
    for conn in conns:
        if queue:
            start(conn)
    while state:
        for fd, _ in poller.poll(1000):
            conn, stage, dn, t0, msgid = state[fd]
            try:
                kind, _data, _mid, _ctrls = conn.result3(msgid, 1, 0)
            except ldap.LDAPError:
                result.failed += 1
                kind, stage = "failed", "search"
            if kind is None:
                continue
            if stage == "bind":
                # The user reads their own entry (the test directory's ACL allows no more).
                search = conn.search_ext(dn, ldap.SCOPE_BASE, "(objectClass=*)", ["cn", "mail"])
                state[fd] = (conn, "search", dn, t0, search)
                continue
            if kind != "failed":
                result.done += 1
                result.latencies.append(time.perf_counter() - t0)
            if queue:
                start(conn)
            else:
                del state[fd]
                poller.unregister(fd)
    result.seconds = time.perf_counter() - started
    for conn in conns:
        conn.unbind_ext()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mfa-bench-ldap-"))
    users = [SlapdUser(f"user{i:06d}", f"pw-{i:06d}") for i in range(args.users)]
    secrets = {u.uid: new_secret() for u in users}
    slapd = Slapd(work / "slapd", users=users, stats_log=False)
    slapd.start()
    proxy_port = free_tcp_port()
    config = {
        "directory": {
            "urls": [slapd.url],
            "bind_dn": slapd.service_dn,
            "bind_password": slapd.service_password,
            "user_base": slapd.people_dn,
            "pool_size": 32,
        },
        "mfa": {"issuer": "bench"},
        "store": {"path": str(work / "bridge" / "state.db")},
        "radius": {
            "listen": f"127.0.0.1:{free_udp_port()}",
            "clients": [{"address": "127.0.0.1", "secret": SECRET}],
        },
        "ldap_proxy": {"listen": f"127.0.0.1:{proxy_port}"},
        "log": {"level": "warn"},
    }
    bridge = Bridge(work / "bridge", config)
    runs: dict[str, list[Run]] = {"direct": [], "proxy": []}
    try:
        import_secrets(bridge, secrets, work)
        bridge.start()
        for rep in range(args.reps + 1):  # the first round warms both paths up
            next_step()
            step = int(time.time()) // STEP
            jobs = {
                "direct": [(slapd.user_dn(u.uid), u.password) for u in users],
                "proxy": [
                    (slapd.user_dn(u.uid), u.password + code_at_step(secrets[u.uid], step))
                    for u in users
                ],
            }
            urls = {"direct": slapd.url, "proxy": f"ldap://127.0.0.1:{proxy_port}"}
            order = ["direct", "proxy"] if rep % 2 else ["proxy", "direct"]
            for name in order:
                run = drive(urls[name], jobs[name], args.parallel)
                print(
                    f"rep {rep} {name:<6} {run.rate:7.0f} bind+search/s  p50 {run.p(50):6.2f} ms"
                    f"  p99 {run.p(99):6.2f} ms  failed {run.failed}",
                    flush=True,
                )
                if rep:
                    runs[name].append(run)
    finally:
        bridge.stop()
        slapd.stop()
    direct = statistics.median(r.rate for r in runs["direct"])
    proxy = statistics.median(r.rate for r in runs["proxy"])
    print(
        f"\n{args.users:,} users, {args.parallel} in flight, median of {args.reps}: direct "
        f"{direct:.0f}/s, through the proxy {proxy:.0f}/s, ratio {proxy / direct:.2f}; "
        f"failures through the proxy: {sum(r.failed for r in runs['proxy'])}"
    )


if __name__ == "__main__":
    main()
