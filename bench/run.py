"""mfa-bridge against FreeRADIUS 3.2 doing the same job, on this machine, in one run.

    python3 bench/run.py [--users 8000] [--reps 3] [--parallel 1 16 64]
                         [--cache-ttl 0 300] [--workers 1] [--big 100000]

Both servers check PAP logins whose password ends in a 6-digit TOTP code: the password by
binding to the same throwaway slapd as the user (after a search as a service account),
the code against the same per-user secrets. One load generator (bench/loadgen.py) keeps P
requests in flight, sends each user once per run with a fresh code, verifies every
Response Authenticator and counts lost replies. Each run has a fresh 30-second TOTP step
of its own (FreeRADIUS's rlm_totp accepts only the current step, and the bridge accepts
each user's step once), the order of the servers alternates between repetitions, and
each figure is the median over the repetitions. Two bridges run beside FreeRADIUS by
default: one with `directory.cache_ttl: 0` (cold: every login searches for the user's
DN, as FreeRADIUS does, as a user's first login of the day would) and one with the
default (warm: the DN remembered from the warm-up pass). `--big N` then times
`mfa-bridge user import` of N secrets and the daemon's resident memory after N users and
N logins.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.freeradius import FreeRadius  # noqa: E402
from bench.loadgen import Result, run  # noqa: E402
from bridge.core.totp import code_at_step, encode_secret, new_secret  # noqa: E402
from tests.harness import Bridge, free_udp_port  # noqa: E402
from tests.slapd import Slapd, SlapdUser  # noqa: E402

SECRET = "bench-radius-secret-0123456789"  # noqa: S105 - a throwaway test secret
STEP = 30
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) and its children (the
    bridge's workers), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / TICK
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_seconds(int(child)) for child in children)


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Sample:
    """One run of one server at one P."""

    result: Result
    server_cpu: float  # seconds per login
    slapd_cpu: float


def next_step() -> None:
    """Sleep to the start of the next TOTP step: each run gets codes no run has used."""
    time.sleep(STEP - time.time() % STEP + 0.05)


def logins_now(users: list[SlapdUser], secrets: dict[str, bytes]) -> list[tuple[str, str]]:
    """Each user once, password + the code of the current step."""
    step = int(time.time()) // STEP
    return [(u.uid, u.password + code_at_step(secrets[u.uid], step)) for u in users]


def measure(
    address: tuple[str, int], pid: int, slapd_pid: int, logins: list[tuple[str, str]], parallel: int
) -> Sample:
    server0, slapd0 = cpu_seconds(pid), cpu_seconds(slapd_pid)
    result = run(address, SECRET.encode(), logins, parallel)
    count = max(1, len(logins))
    return Sample(
        result,
        (cpu_seconds(pid) - server0) / count,
        (cpu_seconds(slapd_pid) - slapd0) / count,
    )


def median(samples: list[Sample], pick: Any) -> float:
    return statistics.median(pick(s) for s in samples)


def report(parallel: int, samples: dict[str, list[Sample]]) -> list[str]:
    """Rows for each server at `parallel` (FreeRADIUS first), and each bridge's ratios
    to FreeRADIUS."""
    rows = []
    figures = {}
    for name, taken in samples.items():
        fig = {
            "rate": median(taken, lambda s: s.result.rate),
            "p50": median(taken, lambda s: s.result.percentile(50) * 1000),
            "p99": median(taken, lambda s: s.result.percentile(99) * 1000),
            "cpu": median(taken, lambda s: s.server_cpu * 1e6),
            "slapd": median(taken, lambda s: s.slapd_cpu * 1e6),
            "lost": sum(s.result.lost + s.result.bad_replies for s in taken),
            "rejects": sum(s.result.rejects for s in taken),
        }
        figures[name] = fig
        rows.append(
            f"| {parallel:>3} | {name:<12} | {fig['rate']:>8.0f} | {fig['p50']:>7.2f} "
            f"| {fig['p99']:>7.2f} | {fig['cpu']:>7.0f} | {fig['slapd']:>7.0f} "
            f"| {fig['lost']:>4} | {fig['rejects']:>4} |"
        )
    f = figures["freeradius"]
    for name, b in figures.items():
        if name == "freeradius":
            continue
        ratios = [b[k] / f[k] for k in ("rate", "p50", "p99", "cpu", "slapd")]
        label = "ratio" + name.removeprefix("mfa-bridge")
        rows.append(
            f"| {parallel:>3} | {label:<12} | {ratios[0]:>8.2f} | {ratios[1]:>7.2f} "
            f"| {ratios[2]:>7.2f} | {ratios[3]:>7.2f} | {ratios[4]:>7.2f} |      |      |"
        )
    return rows


def bridge_config(
    slapd: Slapd, work: Path, port: int, *, workers: int = 1, cache_ttl: int = 300
) -> dict[str, Any]:
    return {
        "server": {"workers": workers},
        "directory": {
            "urls": [slapd.url],
            "bind_dn": slapd.service_dn,
            "bind_password": slapd.service_password,
            "user_base": slapd.people_dn,
            "pool_size": 32,  # as FreeRADIUS's rlm_ldap pool below (max = 32)
            "cache_ttl": cache_ttl,  # 0: every login searches for the DN, as FreeRADIUS does
        },
        "mfa": {"issuer": "bench", "enrollment_days": 14},
        "store": {"path": str(work / "state.db")},
        "radius": {
            "listen": f"127.0.0.1:{port}",
            "mode": "append",
            "reject_delay": 0,
            "clients": [{"address": "127.0.0.1", "secret": SECRET}],
        },
        "log": {"level": "warn"},
    }


def import_secrets(bridge: Bridge, secrets: dict[str, bytes], work: Path) -> float:
    """`mfa-bridge user import` of every secret; returns the seconds it took."""
    csv = work / "secrets.csv"
    csv.write_text(
        "username,secret\n" + "".join(f"{u},{encode_secret(k)}\n" for u, k in secrets.items())
    )
    started = time.perf_counter()
    result = bridge.cli("user", "import", str(csv))
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return took


def population(work: Path, count: int) -> tuple[list[SlapdUser], dict[str, bytes], Slapd]:
    """`count` users with TOTP secrets, in a throwaway slapd (started)."""
    users = [SlapdUser(f"user{i:06d}", f"pw-{i:06d}") for i in range(count)]
    secrets = {u.uid: new_secret() for u in users}
    slapd = Slapd(work / "slapd", users=users, stats_log=False)
    slapd.start()
    return users, secrets, slapd


def freeradius_for(
    slapd: Slapd, secrets: dict[str, bytes], work: Path, eap: dict[str, str] | None = None
) -> FreeRadius:
    """FreeRADIUS doing the bridge's job against `slapd`, with the same secrets."""
    return FreeRadius(
        work / "freeradius",
        port=free_udp_port(),
        secret=SECRET,
        ldap_url=slapd.url,
        bind_dn=slapd.service_dn,
        bind_password=slapd.service_password,
        base_dn=slapd.people_dn,
        secrets={u: encode_secret(k) for u, k in secrets.items()},
        eap=eap,
    )


def start_both(
    radius: FreeRadius, bridge: Bridge, secrets: dict[str, bytes], work: Path
) -> dict[str, tuple[int, int]]:
    """FreeRADIUS started, the secrets imported and the bridge started: {name: (port, pid)}."""
    radius.check()
    radius.start()
    import_secrets(bridge, secrets, work)
    bridge.start()
    assert radius.proc is not None
    assert bridge.proc is not None
    return {
        "freeradius": (radius.port, radius.proc.pid),
        "mfa-bridge": (bridge.port, bridge.proc.pid),
    }


def bridge_name(cache_ttl: int, variants: int) -> str:
    if variants == 1:
        return "mfa-bridge"
    return "mfa-bridge cold" if cache_ttl == 0 else "mfa-bridge warm"


def side_by_side(args: argparse.Namespace, work: Path, out: list[str]) -> None:
    users, secrets, slapd = population(work, args.users)
    radius = freeradius_for(slapd, secrets, work)
    bridges = {}
    for ttl in args.cache_ttl:
        home = work / f"bridge-{ttl}"
        config = bridge_config(slapd, home, free_udp_port(), workers=args.workers, cache_ttl=ttl)
        bridges[bridge_name(ttl, len(args.cache_ttl))] = Bridge(home, config)
    try:
        radius.check()
        radius.start()
        assert radius.proc is not None
        started = {"freeradius": (radius.port, radius.proc.pid)}
        for name, bridge in bridges.items():
            import_secrets(bridge, secrets, work)
            bridge.start()
            assert bridge.proc is not None
            started[name] = (bridge.port, bridge.proc.pid)
        assert slapd.pid is not None
        servers = {name: (("127.0.0.1", port), pid) for name, (port, pid) in started.items()}
        # One warm-up pass each (connection pools, caches), as a NAS would see after start.
        next_step()
        for address, pid in servers.values():
            measure(address, pid, slapd.pid, logins_now(users, secrets), 16)
        samples: dict[tuple[str, int], list[Sample]] = {}
        for rep in range(args.reps):
            for parallel in args.parallel:
                order = list(servers) if (rep + parallel) % 2 == 0 else list(reversed(servers))
                for name in order:
                    next_step()  # each server its own step: every user's code is fresh
                    address, pid = servers[name]
                    sample = measure(address, pid, slapd.pid, logins_now(users, secrets), parallel)
                    samples.setdefault((name, parallel), []).append(sample)
                    print(
                        f"rep {rep} P={parallel:<3} {name:<16} {sample.result.summary()}",
                        flush=True,
                    )
        out += [
            "| P | server | logins/s | p50 ms | p99 ms | server CPU µs/login "
            "| slapd CPU µs/login | lost | rejects |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        names = ["freeradius", *bridges]
        for parallel in args.parallel:
            out += report(parallel, {name: samples[(name, parallel)] for name in names})
    finally:
        for bridge in bridges.values():
            bridge.stop()
        radius.stop()
        slapd.stop()


def big(args: argparse.Namespace, work: Path, out: list[str]) -> None:
    """Import time for N secrets, and RSS after N users and N logins."""
    count = args.big
    users = [SlapdUser(f"big{i:06d}", f"pw-{i:06d}") for i in range(count)]
    secrets = {u.uid: new_secret() for u in users}
    slapd = Slapd(work / "big-slapd", users=users, stats_log=False)
    slapd.start()
    bridge = Bridge(work / "big-bridge", bridge_config(slapd, work / "big-bridge", free_udp_port()))
    try:
        took = import_secrets(bridge, secrets, work)
        out.append(f"- `mfa-bridge user import` of {count:,} secrets: {took:.2f} s")
        bridge.start()
        assert bridge.proc is not None
        started = time.perf_counter()
        result = Result()
        for start in range(0, count, 5000):
            chunk = logins_now(users[start : start + 5000], secrets)
            part = run(("127.0.0.1", bridge.port), SECRET.encode(), chunk, 64)
            result.accepts += part.accepts
            result.rejects += part.rejects
            result.lost += part.lost
        out.append(
            f"- {count:,} logins at P=64 in {time.perf_counter() - started:.0f} s "
            f"({result.accepts:,} accepted, {result.lost} lost); daemon RSS afterwards: "
            f"{rss_mb(bridge.proc.pid):.0f} MB"
        )
    finally:
        bridge.stop()
        slapd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--big", type=int, default=100_000, help="0 to skip")
    parser.add_argument("--workers", type=int, default=1, help="the bridge's server.workers")
    parser.add_argument(
        "--cache-ttl",
        type=int,
        nargs="+",
        default=[0, 300],
        help="directory.cache_ttl of each bridge run beside FreeRADIUS (0: every login cold)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mfa-bench-"))
    out = [
        f"# Benchmark run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; {args.users:,} users, {args.reps} repetitions "
        f"(medians), servers alternated within each TOTP step; client, servers and slapd "
        f"share the machine. Bridge: server.workers {args.workers}; directory.cache_ttl "
        f"{' and '.join(map(str, args.cache_ttl))} (0: cold, every login searches).",
        "",
    ]
    side_by_side(args, work, out)
    if args.big:
        out.append("")
        big(args, work, out)
    publish(out, "latest.md")


def publish(out: list[str], name: str) -> None:
    """Print the report and keep it in bench/out/`name`."""
    text = "\n".join(out) + "\n"
    print("\n" + text)
    target = REPO / "bench" / "out"
    target.mkdir(exist_ok=True)
    (target / name).write_text(text)


if __name__ == "__main__":
    main()
