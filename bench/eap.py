"""EAP-TTLS/PAP logins: mfa-bridge beside FreeRADIUS 3.2's eap module, same slapd, one run.

    python3 bench/eap.py [--users 3000] [--reps 3] [--parallel 16] [--seconds 8]
                         [--tls 1.2] [--profile]

Both servers terminate EAP-TTLS (the same EC certificate) and decide the inner PAP
password+code as bench/run.py's PAP logins are decided: a search and a bind as the user
at slapd, the TOTP code against per-user secrets (FreeRADIUS: rlm_ldap and rlm_totp in
its inner-tunnel server). The supplicant is wpa_supplicant's eapol_test, one process per
login, `--parallel` of them at a time for `--seconds`, each login a user not used yet
in that TOTP step; only logins whose MPPE keys eapol_test confirmed count as accepted.
The servers alternate within a fresh 30-second step, and figures are medians over the
repetitions. eapol_test's own CPU (a process and a TLS client per login) shares the
machine, so the server CPU per login is the fairer comparison of the two servers.
`--profile` samples the bridge with py-spy during one more run and prints the share of
its CPU spent in the TLS handshake (bridge/eap/tls.py and OpenSSL under it).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography import x509  # noqa: E402

from bench.run import (  # noqa: E402
    SECRET,
    bridge_config,
    cpu_seconds,
    freeradius_for,
    next_step,
    population,
    publish,
    start_both,
)
from bridge.core.totp import code_at_step  # noqa: E402
from tests.certs import make_ca, make_server_cert  # noqa: E402
from tests.harness import Bridge, free_udp_port  # noqa: E402

STEP = 30


@dataclass
class Run:
    """One server's run: what eapol_test said, how long each login took, CPU used."""

    accepts: int = 0
    failures: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: float = 0.0  # seconds per login
    slapd_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.accepts / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies) or [float("nan")]
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def eapol_binary() -> str:
    path = shutil.which("eapol_test")
    if path is None:
        raise SystemExit("eapol_test not found (apt-get install eapoltest)")
    return path


def login(port: int, user: str, password: str, *, ca: Path, tls: str, work: Path) -> bool:
    """One eapol_test conversation; True when accepted with the MPPE keys confirmed."""
    conf = work / f"{user}.conf"
    conf.write_text(
        "network={\n  key_mgmt=WPA-EAP\n  eap=TTLS\n"
        f'  identity="{user}"\n  anonymous_identity="anonymous"\n'
        f'  password="{password}"\n  ca_cert="{ca}"\n  phase2="auth=PAP"\n'
        f'  phase1="tls_disable_tlsv1_3={1 if tls == "1.2" else 0}"\n}}\n'
    )
    command = [eapol_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)]
    command += ["-s", SECRET, "-t", "10", "-r", "0"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return done.stdout.rstrip().endswith("SUCCESS") and "MPPE keys OK: 1" in done.stdout


def drive(
    port: int,
    users: list[tuple[str, str]],
    *,
    parallel: int,
    seconds: float,
    ca: Path,
    tls: str,
    work: Path,
) -> Run:
    """`parallel` supplicants logging in users one after another for `seconds`."""
    run = Run()
    queue = iter(users)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def supplicant() -> None:
        while time.monotonic() < deadline:
            with lock:
                picked = next(queue, None)
            if picked is None:
                return
            started = time.monotonic()
            ok = login(port, picked[0], picked[1], ca=ca, tls=tls, work=work)
            took = time.monotonic() - started
            with lock:
                if ok:
                    run.accepts += 1
                    run.latencies.append(took)
                else:
                    run.failures += 1

    began = time.monotonic()
    threads = [threading.Thread(target=supplicant) for _ in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.seconds = time.monotonic() - began
    return run


def measured(pid: int, slapd_pid: int, go: Any) -> Run:
    server0, slapd0 = cpu_seconds(pid), cpu_seconds(slapd_pid)
    run: Run = go()
    count = max(1, run.accepts + run.failures)
    run.server_cpu = (cpu_seconds(pid) - server0) / count
    run.slapd_cpu = (cpu_seconds(slapd_pid) - slapd0) / count
    return run


def handshake_share(pid: int, go: Any, seconds: float, work: Path) -> str:
    """py-spy's samples of the bridge during `go()`: the share under bridge/eap/tls.py."""
    spy = shutil.which("py-spy")
    if spy is None:
        return "py-spy not installed: handshake share not measured"
    raw = work / "profile.txt"
    command = [spy, "record", "-p", str(pid), "-r", "200", "-d", str(int(seconds) + 2)]
    command += ["-f", "raw", "-o", str(raw), "--nonblocking"]
    recorder = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    go()
    recorder.wait(60)  # it writes the profile when its duration is over
    total = tls = inner = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        if "bridge/eap/tls.py" in stack:
            tls += int(count)
        if "login_outcome" in stack or "bridge/directory.py" in stack:
            inner += int(count)
    if not total:
        return "py-spy took no samples"
    return (
        f"bridge CPU samples: {100 * tls / total:.0f} % in the TLS handshake and records"
        f" (bridge/eap/tls.py, OpenSSL), {100 * inner / total:.0f} % deciding the inner"
        f" password (Authenticator, directory); {total} samples"
    )


def main() -> None:  # noqa: PLR0915 - one run, top to bottom
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--tls", choices=("1.2", "1.3"), default="1.2")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mfa-bench-eap-"))
    confs = work / "supplicants"
    confs.mkdir()
    ca = make_ca(work, "Bench Wi-Fi CA")
    certificate, key = make_server_cert(ca, work, "radius", [x509.DNSName("radius.bench")])
    users, secrets, slapd = population(work, args.users)
    eap = {"certificate": str(certificate), "key": str(key), "ca": str(ca.path)}
    radius = freeradius_for(slapd, secrets, work, {**eap, "tls_max": args.tls})
    config = bridge_config(slapd, work / "bridge", free_udp_port())
    config["radius"]["eap"] = {"certificate": str(certificate), "key": str(key)}
    bridge = Bridge(work / "bridge", config)
    out: list[str] = []
    try:
        servers = start_both(radius, bridge, secrets, work)
        assert slapd.pid is not None

        def logins_now() -> list[tuple[str, str]]:
            step = int(time.time()) // STEP
            return [(u.uid, u.password + code_at_step(secrets[u.uid], step)) for u in users]

        def go(port: int) -> Run:
            return drive(
                port,
                logins_now(),
                parallel=args.parallel,
                seconds=args.seconds,
                ca=ca.path,
                tls=args.tls,
                work=confs,
            )

        next_step()
        for port, _pid in servers.values():  # warm-up: pools, caches
            drive(
                port,
                logins_now(),
                parallel=args.parallel,
                seconds=2.0,
                ca=ca.path,
                tls=args.tls,
                work=confs,
            )
        runs: dict[str, list[Run]] = {name: [] for name in servers}
        for rep in range(args.reps):
            next_step()
            order = list(servers) if rep % 2 == 0 else list(reversed(servers))
            for name in order:
                port, pid = servers[name]
                run = measured(pid, slapd.pid, lambda port=port: go(port))
                runs[name].append(run)
                print(
                    f"rep {rep} {name:<10} {run.rate:7.1f} logins/s  p50"
                    f" {run.percentile(50) * 1000:6.1f} ms  p99 {run.percentile(99) * 1000:6.1f}"
                    f" ms  server CPU {run.server_cpu * 1000:5.2f} ms/login"
                    f"  accepts {run.accepts}  failures {run.failures}",
                    flush=True,
                )
        out += [
            f"# EAP-TTLS/PAP run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}; TLS {args.tls}, {args.parallel} eapol_test at a"
            f" time for {args.seconds:.0f} s, {args.reps} repetitions (medians); the"
            " supplicants, both servers and slapd share the machine.",
            "",
            "| server | logins/s | p50 ms | p99 ms | server CPU ms/login | slapd CPU ms/login"
            " | failures |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        figures = {}
        for name, samples in runs.items():
            fig = [
                statistics.median(s.rate for s in samples),
                statistics.median(s.percentile(50) * 1000 for s in samples),
                statistics.median(s.percentile(99) * 1000 for s in samples),
                statistics.median(s.server_cpu * 1000 for s in samples),
                statistics.median(s.slapd_cpu * 1000 for s in samples),
            ]
            figures[name] = fig
            failures = sum(s.failures for s in samples)
            out.append(
                f"| {name} | {fig[0]:.0f} | {fig[1]:.1f} | {fig[2]:.1f} | {fig[3]:.2f}"
                f" | {fig[4]:.2f} | {failures} |"
            )
        ratios = [b / f for b, f in zip(figures["mfa-bridge"], figures["freeradius"], strict=True)]
        out.append("| ratio | " + " | ".join(f"{r:.2f}" for r in ratios) + " | |")
        if args.profile:
            next_step()
            port, pid = servers["mfa-bridge"]
            out += ["", "- " + handshake_share(pid, lambda: go(port), args.seconds, work)]
    finally:
        bridge.stop()
        radius.stop()
        slapd.stop()
    publish(out, "eap-latest.md")


if __name__ == "__main__":
    main()
