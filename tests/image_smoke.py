"""Smoke test of the container image (run by scripts/image-test, not collected by pytest).

    python3 -m tests.image_smoke IMAGE

Starts a throwaway slapd on the host, then the daemon inside IMAGE with `buildah run`
as the image's non-root user (sharing the host's network, the config mounted read-only
at /etc/mfa-bridge), and checks: the healthcheck inside the container, a grace login
over RADIUS from the host, `user enroll` through the container (the admin CLI as with
`podman exec`), a login with the code, a stop by SIGTERM within a few seconds, and after
a restart the enrollment still there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tests.harness import RadiusClient, code_for, free_udp_port
from tests.slapd import Slapd, SlapdUser

SECRET = "image-smoke-test-secret-0123"  # a throwaway test secret
STOP_SECONDS = 5.0


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=check)


class Container:
    """One working container of the image, with the config folder mounted."""

    def __init__(self, image: str, config_dir: Path) -> None:
        self.name = buildah("from", image).stdout.strip()
        self.config_dir = config_dir
        self.daemon: subprocess.Popen[str] | None = None

    def _run_args(self, *command: str) -> list[str]:
        return [
            "buildah",
            "run",
            "--isolation",
            "chroot",
            "--user",
            "mfa-bridge",
            "-v",
            f"{self.config_dir}:/etc/mfa-bridge:ro",
            self.name,
            "--",
            *command,
        ]

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """A command inside the container, as `podman exec` would run it."""
        return subprocess.run(self._run_args(*command), capture_output=True, text=True, check=False)

    def start(self, port: int, log: Path) -> None:
        with log.open("a") as out:
            self.daemon = subprocess.Popen(
                self._run_args("mfa-bridge", "run"), stdout=out, stderr=subprocess.STDOUT, text=True
            )
        client = RadiusClient(port, SECRET.encode())
        try:
            deadline = time.monotonic() + 30
            while client.status(timeout=0.3) is None:
                if self.daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the daemon did not start:\n{log.read_text()}")
        finally:
            client.close()

    def stop(self) -> float:
        """SIGTERM the daemon, as a container runtime stops PID 1; the seconds it took.

        buildah run does not pass SIGTERM on (it kills), so the signal goes to the
        daemon's own process, found by its command line inside the image.
        """
        assert self.daemon is not None
        pids = [
            pid
            for pid, args in descendants(self.daemon.pid)
            if args.startswith("/opt/mfa-bridge/bin/python3 /opt/mfa-bridge/bin/mfa-bridge run")
        ]
        check(len(pids) == 1, f"the daemon's process inside the container: {pids}")
        started = time.monotonic()
        os.kill(pids[0], signal.SIGTERM)
        self.daemon.wait(30)
        return time.monotonic() - started

    def remove(self) -> None:
        buildah("rm", self.name, check=False)


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `root`."""
    table = subprocess.run(
        ["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True
    ).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in table.splitlines():
        pid, ppid, args = line.split(None, 2)
        children.setdefault(int(ppid), []).append((int(pid), args))
    found, todo = [], [root]
    while todo:
        for pid, args in children.get(todo.pop(), []):
            found.append((pid, args))
            todo.append(pid)
    return found


def check(condition: bool, what: str) -> None:
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        raise SystemExit(1)


def main(image: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="mfa-image-"))
    slapd = Slapd(work / "slapd", users=[SlapdUser("alice", "alice-pw")], stats_log=False)
    slapd.start()
    port = free_udp_port()
    config: dict[str, Any] = {
        "directory": {
            "urls": [slapd.url],
            "bind_dn": slapd.service_dn,
            "bind_password": slapd.service_password,
            "user_base": slapd.people_dn,
        },
        "mfa": {"issuer": "image test"},
        "store": {"path": "/var/lib/mfa-bridge/state.db"},
        "radius": {
            "listen": f"127.0.0.1:{port}",
            "mode": "append",
            "reject_delay": 0,
            "clients": [{"address": "127.0.0.1", "secret": SECRET}],
        },
    }
    config_dir = work / "etc"
    config_dir.mkdir()
    (config_dir / "bridge.yaml").write_text(yaml.safe_dump(config))
    config_dir.chmod(0o755)
    (config_dir / "bridge.yaml").chmod(0o644)
    container = Container(image, config_dir)
    log = work / "daemon.log"
    try:
        whoami = container.run("id", "-un")
        check(whoami.stdout.strip() == "mfa-bridge", "runs as the non-root user mfa-bridge")
        docs = container.run("ls", "/opt/mfa-bridge/share/doc/mfa-bridge")
        check(
            docs.stdout.split() == ["LICENSE", "README.md"],
            "README and LICENSE where the systemd unit's Documentation= points",
        )
        container.start(port, log)
        health = container.run("mfa-bridge", "healthcheck")
        check(health.returncode == 0, f"healthcheck inside the container: {health.stdout.strip()}")
        client = RadiusClient(port, SECRET.encode())
        reply = client.login("alice", "alice-pw")
        check(
            reply is not None and reply.accepted and "14 days left" in reply.message,
            "a grace login from the host over RADIUS",
        )
        enrolled = container.run("mfa-bridge", "user", "enroll", "alice", "--json")
        check(enrolled.returncode == 0, "mfa-bridge user enroll through the container")
        secret = json.loads(enrolled.stdout)["secret"]
        reply = client.login("alice", "alice-pw" + code_for(secret))
        check(reply is not None and reply.accepted, "a login with the code activates alice")
        client.close()
        took = container.stop()
        check(took < STOP_SECONDS, f"stopped by SIGTERM in {took:.1f} s")
        audit = [line for line in log.read_text().splitlines() if line.startswith('{"time":')]
        check(len(audit) == 2, "two audit lines on the container's standard output")
        container.start(port, log)
        status = container.run("mfa-bridge", "user", "status", "alice", "--json")
        check(json.loads(status.stdout)["state"] == "active", "after a restart alice is active")
        container.stop()
    finally:
        if container.daemon is not None and container.daemon.poll() is None:
            container.daemon.terminate()  # buildah then kills what runs inside
            container.daemon.wait(30)
        container.remove()
        slapd.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
