"""One instance on PostgreSQL against the same on SQLite; then two instances on one database.

    python3 bench/shared_store.py [--users 2000] [--reps 3] [--parallel 16]

RADIUS PAP logins with password + code (bench/loadgen.py, P in flight, every reply
verified), users active with imported secrets, the same throwaway slapd. Runs alternate
between the SQLite and the PostgreSQL instance within fresh TOTP steps; figures are
medians, and the ratio is given both as the ratio of the two medians and as the median
of each repetition's ratio (its two runs back to back, at one speed of the VM). Then
two instances share one PostgreSQL database and each is sent the same logins (same
user, same code) at once, with P in flight each: the total rate, and how many of the
codes were accepted twice (the shared replay guard must make that 0).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.loadgen import Result, run  # noqa: E402
from bench.run import (  # noqa: E402
    SECRET,
    bridge_config,
    cpu_seconds,
    import_secrets,
    logins_now,
    next_step,
)
from bridge.core.totp import new_secret  # noqa: E402
from tests.harness import Bridge, free_udp_port  # noqa: E402
from tests.postgres import Postgres  # noqa: E402
from tests.slapd import Slapd, SlapdUser  # noqa: E402


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL server process on the machine (the bench's own)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().split(" ", 2)[1] == "(postgres)":
                total += cpu_seconds(int(stat.parent.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total


def _drive(args: tuple[int, list[tuple[str, str]], int]) -> Result:
    port, logins, parallel = args
    return run(("127.0.0.1", port), SECRET.encode(), logins, parallel)


def one_instance(
    bridges: dict[str, Bridge],
    users: list[SlapdUser],
    secrets: dict[str, bytes],
    args: argparse.Namespace,
) -> None:
    """The same instance on SQLite and on PostgreSQL, alternated in fresh TOTP steps."""
    rates: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    cpu: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    lost = 0
    for rep in range(args.reps + 1):  # the first round warms both up
        next_step()
        order = ["sqlite", "postgresql"] if rep % 2 else ["postgresql", "sqlite"]
        for name in order:
            bridge = bridges[name]
            assert bridge.proc is not None
            before, server_before = cpu_seconds(bridge.proc.pid), postgres_cpu()
            result = run(
                ("127.0.0.1", bridge.port),
                SECRET.encode(),
                logins_now(users, secrets),
                args.parallel,
            )
            used = (cpu_seconds(bridge.proc.pid) - before) / max(1, len(users))
            server = (postgres_cpu() - server_before) / max(1, len(users))
            print(
                f"rep {rep} {name:<10} {result.summary()}  CPU {used * 1e6:.0f} us/login,"
                f" PostgreSQL's {server * 1e6:.0f} us"
            )
            if rep:
                rates[name].append(result.rate)
                cpu[name].append(used)
                lost += result.lost + result.bad_replies
    sqlite_rate = statistics.median(rates["sqlite"])
    pg_rate = statistics.median(rates["postgresql"])
    # Each repetition runs both instances back to back in one TOTP step, so their ratio
    # is taken at one speed of the machine; the medians above may come from two speeds.
    pairs = zip(rates["postgresql"], rates["sqlite"], strict=True)
    paired = statistics.median(pg / lite for pg, lite in pairs)
    print(
        f"\none instance, P={args.parallel}, median of {args.reps}: SQLite {sqlite_rate:.0f}"
        f" logins/s ({statistics.median(cpu['sqlite']) * 1e6:.0f} us CPU each),"
        f" PostgreSQL {pg_rate:.0f}/s ({statistics.median(cpu['postgresql']) * 1e6:.0f} us),"
        f" ratio of the medians {pg_rate / sqlite_rate:.2f}, median of the repetitions'"
        f" ratios {paired:.2f}; lost {lost}"
    )


def two_instances(
    pool: Any,
    pair: tuple[Bridge, Bridge],
    users: list[SlapdUser],
    secrets: dict[str, bytes],
    args: argparse.Namespace,
) -> None:
    """Two instances on one database sent the same codes at once: each accepted once."""
    for rep in range(args.reps):
        next_step()
        logins = logins_now(users, secrets)
        started = time.perf_counter()
        both = pool.map(_drive, [(b.port, logins, args.parallel) for b in pair])
        seconds = time.perf_counter() - started
        answered = sum(r.accepts + r.rejects for r in both)
        accepts = sum(r.accepts for r in both)
        print(
            f"two instances, rep {rep}: {answered / seconds:.0f} logins/s in total,"
            f" {len(logins)} codes sent to both: {accepts} accepted (each once:"
            f" {accepts == len(logins)}), {answered - accepts} refused,"
            f" lost {sum(r.lost for r in both)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mfa-bench-pg-"))
    users = [SlapdUser(f"user{i:06d}", f"pw-{i:06d}") for i in range(args.users)]
    secrets = {u.uid: new_secret() for u in users}
    slapd = Slapd(work / "slapd", users=users, stats_log=False)
    slapd.start()
    postgres = Postgres(work / "postgres")
    postgres.start()
    url = postgres.url("mfa")
    key = work / "shared.key"

    def on_postgres(name: str) -> Bridge:
        config: dict[str, Any] = bridge_config(slapd, work / name, free_udp_port())
        config["store"] = {"url": url, "key_file": str(key)}
        return Bridge(work / name, config)

    sqlite = Bridge(work / "sqlite", bridge_config(slapd, work / "sqlite", free_udp_port()))
    first, second = on_postgres("pg1"), on_postgres("pg2")
    bridges = {"sqlite": sqlite, "postgresql": first}
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        import_secrets(sqlite, secrets, work)
        import_secrets(first, secrets, work)
        for bridge in (sqlite, first, second):
            bridge.start()
        one_instance(bridges, users, secrets, args)
        two_instances(pool, (first, second), users, secrets, args)
    finally:
        pool.terminate()
        for bridge in (sqlite, first, second):
            bridge.stop()
        postgres.stop()
        slapd.stop()


if __name__ == "__main__":
    main()
