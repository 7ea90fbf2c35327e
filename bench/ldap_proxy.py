"""Bind + search through mfa-bridge's LDAP proxy, against the same directly at slapd.

    python3 bench/ldap_proxy.py [--users 4000] [--parallel 16] [--procs 4] [--reps 3]
                                [--pattern kept per-login] [--workers 1]

The client is python-ldap (libldap, C) in `procs` processes, each keeping its share of
`parallel` connections busy with asynchronous calls, so that the client is not what
limits either path. Each user binds once per run and then reads their own entry, as a
legacy app does at login, in one of two patterns:

- kept: one connection binds user after user (an app's pool);
- per-login: a new connection per login (connect, bind, search, unbind).

Through the proxy the password carries the current TOTP code (users are active, secrets
imported); directly at slapd it is the password alone. Runs alternate between the two
within a fresh TOTP step; figures are medians over the repetitions, with the CPU time the
proxy and slapd spent per bind + search.
"""

from __future__ import annotations

import argparse
import multiprocessing
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

from bench.run import STEP, cpu_seconds, import_secrets, next_step  # noqa: E402
from bridge.core.totp import code_at_step, new_secret  # noqa: E402
from tests.harness import Bridge, free_tcp_port, free_udp_port  # noqa: E402
from tests.slapd import Slapd, SlapdUser  # noqa: E402

SECRET = "bench-radius-secret-0123456789"  # noqa: S105 - a throwaway test secret


@dataclass
class Run:
    """What one run measured (one process's share, or all of them merged)."""

    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    proxy_cpu: float = 0.0  # seconds per bind + search
    slapd_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000


def _connect(url: str) -> Any:
    conn = ldap.initialize(url)
    conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
    conn.set_option(ldap.OPT_REFERRALS, 0)
    return conn


class _Driver:
    """One process's share: `parallel` connections kept busy with bind, then search."""

    def __init__(self, url: str, jobs: list[tuple[str, str]], per_login: bool) -> None:
        self.url, self.per_login = url, per_login
        self.queue = list(reversed(jobs))
        self.state: dict[int, tuple[Any, str, str, float, int]] = {}  # fd -> conn, stage, ...
        self.poller = select.poll()
        self.result = Run()

    def start(self, conn: Any) -> None:
        dn, password = self.queue.pop()
        t0 = time.perf_counter()
        if conn is None:
            conn = _connect(self.url)
        msgid = conn.simple_bind(dn, password)
        fd = conn.fileno()
        if fd not in self.state:
            self.poller.register(fd, select.POLLIN)
        self.state[fd] = (conn, "bind", dn, t0, msgid)

    def finish(self, fd: int, conn: Any) -> None:
        if self.queue and not self.per_login:
            self.start(conn)
            return
        del self.state[fd]
        self.poller.unregister(fd)
        if self.per_login:
            conn.unbind_ext()
            if self.queue:
                self.start(None)

    def step(self, fd: int) -> None:
        conn, stage, dn, t0, msgid = self.state[fd]
        try:
            kind, _data, _mid, _ctrls = conn.result3(msgid, 1, 0)
        except ldap.LDAPError:
            self.result.failed += 1
            self.finish(fd, conn)
            return
        if kind is None:
            return
        if stage == "bind":
            # The user reads their own entry (the test directory's ACL allows no more).
            search = conn.search_ext(dn, ldap.SCOPE_BASE, "(objectClass=*)", ["cn", "mail"])
            self.state[fd] = (conn, "search", dn, t0, search)
            return
        self.result.done += 1
        self.result.latencies.append(time.perf_counter() - t0)
        self.finish(fd, conn)


def drive(url: str, jobs: list[tuple[str, str]], parallel: int, per_login: bool) -> Run:
    """Bind then search for each (dn, password), `parallel` connections in flight."""
    driver = _Driver(url, jobs, per_login)
    conns = [] if per_login else [_connect(url) for _ in range(parallel)]
    started = time.perf_counter()
    for i in range(parallel):
        if driver.queue:
            driver.start(None if per_login else conns[i])
    while driver.state:
        for fd, _ in driver.poller.poll(1000):
            if fd in driver.state:
                driver.step(fd)
    driver.result.seconds = time.perf_counter() - started
    for conn in conns:
        conn.unbind_ext()
    return driver.result


def _share(args: tuple[str, list[tuple[str, str]], int, bool]) -> Run:
    return drive(*args)


def drive_all(
    pool: Any, url: str, jobs: list[tuple[str, str]], parallel: int, procs: int, *, per_login: bool
) -> Run:
    """`drive` in `procs` processes at once, each with its share of jobs and connections."""
    shares = [(url, jobs[i::procs], max(1, parallel // procs), per_login) for i in range(procs)]
    started = time.perf_counter()
    parts = pool.map(_share, shares)
    merged = Run(seconds=time.perf_counter() - started)
    for part in parts:
        merged.done += part.done
        merged.failed += part.failed
        merged.latencies += part.latencies
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pattern", nargs="+", default=["kept", "per-login"])
    parser.add_argument("--workers", type=int, default=1, help="the bridge's server.workers")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mfa-bench-ldap-"))
    users = [SlapdUser(f"user{i:06d}", f"pw-{i:06d}") for i in range(args.users)]
    secrets = {u.uid: new_secret() for u in users}
    slapd = Slapd(work / "slapd", users=users, stats_log=False)
    slapd.start()
    proxy_port = free_tcp_port()
    config = {
        "server": {"workers": args.workers},
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
        "ldap_proxy": {"listen": f"127.0.0.1:{proxy_port}", "max_connections_per_address": 1000},
        "log": {"level": "warn"},
    }
    bridge = Bridge(work / "bridge", config)
    runs: dict[tuple[str, str], list[Run]] = {}
    pool = multiprocessing.get_context("fork").Pool(args.procs)
    try:
        import_secrets(bridge, secrets, work)
        bridge.start()
        assert bridge.proc is not None
        assert slapd.pid is not None
        pids = {"proxy": bridge.proc.pid, "slapd": slapd.pid}
        urls = {"direct": slapd.url, "proxy": f"ldap://127.0.0.1:{proxy_port}"}
        for rep in range(args.reps + 1):  # the first round warms both paths up
            for pattern in args.pattern:
                next_step()
                step = int(time.time()) // STEP
                jobs = {
                    "direct": [(slapd.user_dn(u.uid), u.password) for u in users],
                    "proxy": [
                        (slapd.user_dn(u.uid), u.password + code_at_step(secrets[u.uid], step))
                        for u in users
                    ],
                }
                order = ["direct", "proxy"] if rep % 2 else ["proxy", "direct"]
                for name in order:
                    before = {k: cpu_seconds(pid) for k, pid in pids.items()}
                    run = drive_all(
                        pool,
                        urls[name],
                        jobs[name],
                        args.parallel,
                        args.procs,
                        per_login=pattern == "per-login",
                    )
                    count = max(1, run.done)
                    run.proxy_cpu = (cpu_seconds(pids["proxy"]) - before["proxy"]) / count
                    run.slapd_cpu = (cpu_seconds(pids["slapd"]) - before["slapd"]) / count
                    print(
                        f"rep {rep} {pattern:<9} {name:<6} {run.rate:7.0f} bind+search/s"
                        f"  p50 {run.p(50):6.2f} ms  p99 {run.p(99):6.2f} ms"
                        f"  proxy {run.proxy_cpu * 1e6:5.0f} us"
                        f"  slapd {run.slapd_cpu * 1e6:4.0f} us"
                        f"  failed {run.failed}",
                        flush=True,
                    )
                    if rep:
                        runs.setdefault((pattern, name), []).append(run)
    finally:
        pool.terminate()
        bridge.stop()
        slapd.stop()
    print(
        f"\n{args.users:,} users, {args.parallel} in flight from {args.procs} processes,"
        f" median of {args.reps}:"
    )
    for pattern in args.pattern:
        direct = statistics.median(r.rate for r in runs[(pattern, "direct")])
        proxied = runs[(pattern, "proxy")]
        proxy = statistics.median(r.rate for r in proxied)
        cpu = statistics.median(r.proxy_cpu for r in proxied) * 1e6
        print(
            f"  {pattern:<9} direct {direct:6.0f}/s  proxy {proxy:6.0f}/s  ratio "
            f"{proxy / direct:.2f}  proxy CPU {cpu:.0f} us per bind+search  failures "
            f"{sum(r.failed for r in proxied)}"
        )


if __name__ == "__main__":
    main()
