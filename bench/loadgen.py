"""A RADIUS load generator: keeps P requests in flight, verifies every reply, times each.

One process, one UDP socket per 256 in-flight IDs; requests are pre-built (User-Password
hidden with the shared secret, Message-Authenticator signed) so the client spends its time
sending and checking, not encoding. Used by bench/run.py against any RADIUS server.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import select
import socket
import statistics
import struct
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    """What one run measured."""

    sent: int = 0
    accepts: int = 0
    rejects: int = 0
    others: int = 0
    lost: int = 0
    bad_replies: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return (self.accepts + self.rejects + self.others) / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def count(self, code: int) -> None:
        """Tally a reply by its code."""
        if code == 2:
            self.accepts += 1
        elif code == 3:
            self.rejects += 1
        else:
            self.others += 1

    def summary(self) -> str:
        return (
            f"{self.rate:8.0f} logins/s  p50 {self.percentile(50) * 1000:6.2f} ms"
            f"  p99 {self.percentile(99) * 1000:6.2f} ms  accepts {self.accepts}"
            f"  rejects {self.rejects}  lost {self.lost}  bad {self.bad_replies}"
        )


def _hide(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """User-Password hiding (RFC 2865 s5.2): NUL-padded to 16-octet blocks, at least one."""
    padded = password.ljust(max(16, -(-len(password) // 16) * 16), b"\x00")
    out = b""
    last = authenticator
    for i in range(0, len(padded), 16):
        pad = hashlib.md5(secret + last).digest()  # noqa: S324 - RFC 2865
        block = bytes(a ^ b for a, b in zip(padded[i : i + 16], pad, strict=True))
        out += block
        last = block
    return out


def build_request(ident: int, user: str, password: str, secret: bytes) -> tuple[bytes, bytes]:
    """An Access-Request with Message-Authenticator first; returns (bytes, authenticator)."""
    authenticator = os.urandom(16)
    attrs = bytes([80, 18]) + bytes(16)
    for attr_type, value in (
        (1, user.encode()),
        (2, _hide(password.encode(), secret, authenticator)),
    ):
        attrs += bytes([attr_type, len(value) + 2]) + value
    header = struct.pack("!BBH", 1, ident, 20 + len(attrs)) + authenticator
    mac = hmac.new(secret, header + attrs, hashlib.md5).digest()
    attrs = attrs[:2] + mac + attrs[18:]
    return header + attrs, authenticator


def reply_ok(reply: bytes, authenticator: bytes, secret: bytes) -> bool:
    """The Response Authenticator (RFC 2865 s3) matches."""
    expected = hashlib.md5(reply[:4] + authenticator + reply[20:] + secret).digest()  # noqa: S324
    return len(reply) >= 20 and hmac.compare_digest(expected, reply[4:20])


class _Flight:
    """The requests in flight: which socket and ID each uses, when it left."""

    def __init__(self, parallel: int, address: tuple[str, int], secret: bytes) -> None:
        count = max(1, -(-parallel // 256))
        self.sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
        for sock in self.sockets:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        self.free = [(s, i) for s in range(count) for i in range(256)][: max(parallel, 1) * 2]
        self.inflight: dict[tuple[int, int], tuple[float, bytes]] = {}
        self.address = address
        self.secret = secret

    def send(self, user: str, password: str) -> None:
        slot = self.free.pop()
        raw, authenticator = build_request(slot[1], user, password, self.secret)
        self.sockets[slot[0]].sendto(raw, self.address)
        self.inflight[slot] = (time.perf_counter(), authenticator)

    def receive(self, index: int, now: float, result: Result) -> None:
        """Read every reply waiting on socket `index` and account for it."""
        while True:
            try:
                reply = self.sockets[index].recv(4096)
            except BlockingIOError:
                return
            entry = self.inflight.pop((index, reply[1]), None)
            if entry is None:
                continue
            sent_at, authenticator = entry
            self.free.insert(0, (index, reply[1]))
            if not reply_ok(reply, authenticator, self.secret):
                result.bad_replies += 1
            else:
                result.latencies.append(now - sent_at)
                result.count(reply[0])

    def expire(self, now: float, timeout: float, result: Result) -> None:
        for slot, (sent_at, _) in list(self.inflight.items()):
            if now - sent_at > timeout:
                del self.inflight[slot]
                self.free.insert(0, slot)
                result.lost += 1

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def run(
    address: tuple[str, int],
    secret: bytes,
    logins: list[tuple[str, str]],
    parallel: int,
    timeout: float = 5.0,
) -> Result:
    """Send every login once, `parallel` in flight; returns the measurements."""
    flight = _Flight(parallel, address, secret)
    index_of = {sock.fileno(): n for n, sock in enumerate(flight.sockets)}
    poller = select.poll()
    for sock in flight.sockets:
        poller.register(sock, select.POLLIN)
    result = Result()
    queue = list(reversed(logins))
    started = time.perf_counter()
    while queue or flight.inflight:
        while queue and len(flight.inflight) < parallel:
            flight.send(*queue.pop())
            result.sent += 1
        events = poller.poll(50)
        now = time.perf_counter()
        for fd, _ in events:
            flight.receive(index_of[fd], now, result)
        flight.expire(now, timeout, result)
    result.seconds = time.perf_counter() - started
    flight.close()
    return result


def median_of(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
