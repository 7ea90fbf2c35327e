"""Drive a real `mfa-bridge run` subprocess and talk RADIUS to it (tests and benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyotp
import yaml
from pyrad import packet
from pyrad.dictionary import Dictionary

from bridge.radius import codec

REPO = Path(__file__).resolve().parent.parent
DICTIONARY: Dictionary = codec.DICTIONARY


def free_udp_port() -> int:
    """A UDP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_tcp_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def code_for(secret_b32: str, offset_steps: int = 0) -> str:
    """The code an authenticator app shows now (or `offset_steps` steps from now)."""
    code: str = pyotp.TOTP(secret_b32).at(time.time() + 30 * offset_steps)
    return code


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition` (a log line, a datagram) until it holds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class RadiusReply:
    """A decoded reply: code, Reply-Message text, State, raw bytes."""

    def __init__(self, raw: bytes, request: packet.AuthPacket) -> None:
        self.raw = raw
        self.packet = request.CreateReply(packet=raw)
        self.code: int = self.packet.code
        self.valid = request.VerifyReply(self.packet, raw, enforce_ma=True)
        messages = self.packet.get("Reply-Message", [])
        self.message = "".join(m if isinstance(m, str) else m.decode() for m in messages)
        states = self.packet.get("State", [])
        self.state: bytes | None = states[0] if states else None

    @property
    def accepted(self) -> bool:
        return bool(self.code == packet.AccessAccept)

    @property
    def challenged(self) -> bool:
        return bool(self.code == packet.AccessChallenge)

    @property
    def rejected(self) -> bool:
        return bool(self.code == packet.AccessReject)


class RadiusClient:
    """A minimal NAS: builds Access-Requests with pyrad and waits for the reply."""

    def __init__(
        self,
        port: int,
        secret: bytes = b"testing123",
        host: str = "127.0.0.1",
        source: str = "127.0.0.1",
    ) -> None:
        self.address = (host, port)
        self.secret = secret
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))

    def close(self) -> None:
        self.sock.close()

    def request(
        self,
        user: str,
        password: str | None = None,
        *,
        state: bytes | None = None,
        ma: bool = True,
        **attrs: Any,
    ) -> packet.AuthPacket:
        """An Access-Request (not sent yet)."""
        req = packet.AuthPacket(code=packet.AccessRequest, secret=self.secret, dict=DICTIONARY)
        req["User-Name"] = user
        if password is not None:
            req["User-Password"] = req.PwCrypt(password)
        if state is not None:
            req["State"] = state
        for key, value in attrs.items():
            req[key.replace("_", "-")] = value
        if ma:
            req.add_message_authenticator()
        return req

    def send_raw(self, raw: bytes) -> None:
        self.sock.sendto(raw, self.address)

    def receive(self, timeout: float = 5.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(8192)
        except TimeoutError:
            return None
        return data

    def exchange(self, req: packet.AuthPacket, timeout: float = 5.0) -> RadiusReply | None:
        """Send and wait for the reply to this request; None on timeout."""
        raw = req.RequestPacket()
        self.send_raw(raw)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            data = self.receive(left)
            if data is None:
                return None
            if data[1] == req.id:
                return RadiusReply(data, req)
        return None

    def login(self, user: str, password: str, **kw: Any) -> RadiusReply | None:
        return self.exchange(self.request(user, password, **kw))

    def status(self, timeout: float = 2.0) -> RadiusReply | None:
        req = packet.AuthPacket(code=packet.StatusServer, secret=self.secret, dict=DICTIONARY)
        req.add_message_authenticator()
        return self.exchange(req, timeout)


class Bridge:
    """`mfa-bridge run` as a subprocess with a config written from a dict."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config = config
        self.config_path = workdir / "bridge.yaml"
        self.log_path = workdir / "bridge.log"
        self.port = int(config["radius"]["listen"].rsplit(":", 1)[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, allow_unicode=True))

    def cli(
        self, *args: str, check: bool = False, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `mfa-bridge ARGS --config <ours>`."""
        self.write_config()
        return subprocess.run(
            [sys.executable, "-m", "bridge", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            check=check,
            cwd=REPO,
            input=stdin,
            timeout=60,
        )

    def start(
        self,
        timeout: float = 15.0,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        *,
        own_group: bool = False,
    ) -> None:
        """Start the daemon (with `env` added to its environment, `args` after `run`; in a
        process group of its own, as a terminal would run it, with `own_group`); wait for
        Status-Server."""
        self.write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", *args, "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            start_new_session=own_group,
        )
        log.close()
        client = RadiusClient(
            self.port, self.config["radius"]["clients"][0].get("secret", "testing123").encode()
        )
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mfa-bridge exited {self.proc.returncode}:\n{self.log()}")
                if client.status(timeout=0.2) is not None:
                    return
            raise RuntimeError(f"mfa-bridge did not answer within {timeout}s:\n{self.log()}")
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def reload(self) -> None:
        """Write the config as it now stands and send SIGHUP."""
        assert self.proc is not None
        self.write_config()
        self.proc.send_signal(signal.SIGHUP)

    def wait_for_directory(self, timeout: float = 10.0) -> None:
        """Until the daemon's directory connections are all open (each a service bind):
        Status-Server is answered before, so a test counting binds waits for this."""
        deadline = time.monotonic() + timeout
        while "directory.ready" not in self.log():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the directory was not ready within {timeout}s")
            time.sleep(0.02)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def audit(self) -> list[dict[str, Any]]:
        """The daemon's audit lines so far (JSON on its stdout), oldest first."""
        lines = (line for line in self.log().splitlines() if line.startswith('{"time":'))
        return [json.loads(line) for line in lines]

    def audit_reasons(self, protocol: str | None = None) -> list[str]:
        """The reason of each audited decision (of one protocol, if given), oldest first."""
        return [a["reason"] for a in self.audit() if protocol in (None, a["protocol"])]

    def radclient(
        self, lines: str, command: str = "auth", secret: str = "testing123", *extra: str
    ) -> subprocess.CompletedProcess[str]:
        """Feed attribute lines to the real `radclient`."""
        return subprocess.run(
            [
                "radclient",
                "-x",
                "-t",
                "3",
                "-r",
                "1",
                *extra,
                f"127.0.0.1:{self.port}",
                command,
                secret,
            ],
            input=lines,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )


def scrape_metrics(address: str) -> dict[str, float]:
    """The metrics page at `address` (host:port) as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as page:
        text = page.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
