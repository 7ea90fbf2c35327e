"""Several worker processes on one port (`server.workers`): every core, as FreeRADIUS's
threads use them (one Python interpreter runs one thread at a time).

The main process binds each listener (RADIUS, the LDAP proxy and its LDAPS port) once per
worker, with SO_REUSEPORT, keeps every socket open, serves from the first itself and
starts the other workers as child processes (`mfa-bridge run --worker N`), each handed
its own sockets as inherited descriptors. The kernel hashes a datagram's source address
and port to one socket of the group: a NAS's retransmissions and an EAP conversation stay
with the worker that holds the reply cache and the TLS state. The sockets outlive a worker
that dies, so the hash does not move when it is restarted; its datagrams wait meanwhile.
What logins share (codes spent, failures, locks, challenge State, rebinds, sessions) is
in the store, which instances already share.

Only the main process talks to systemd, serves the portal and the metrics (adding the
workers' counters, asked over a pipe at each scrape) and runs an upgrade of old records;
it passes SIGHUP and SIGTERM on. A worker whose main process has gone (its stdin closed)
stops.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from bridge.config import Config

log = Logger(namespace="bridge.workers")

# The descriptors a worker finds its sockets at (0-2 are stdio, 3 its answers).
ANSWERS_FD = 3
FIRST_SOCKET_FD = 4
SNAPSHOT_TIMEOUT = 2.0  # seconds a scrape waits for a worker's counters
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # after quick successive deaths
STEADY_SECONDS = 30.0  # a worker up this long starts the delays again from the first

Sample = tuple[str, dict[str, str], float]  # a counter's sample: name, labels, value


class ListenError(Exception):
    """A listening socket could not be had (the port is in use, or the address is wrong)."""


@dataclass(frozen=True)
class Sockets:
    """One worker's listening sockets, by listener name (`radius`, `ldap`, `ldaps`)."""

    by_name: dict[str, socket.socket]

    def descriptors(self) -> str:
        """How a worker is told where they are: `radius=4,ldap=5`."""
        names = sorted(self.by_name)
        return ",".join(f"{name}={FIRST_SOCKET_FD + i}" for i, name in enumerate(names))

    def child_fds(self) -> dict[int, int]:
        """The mapping spawnProcess takes: the worker's descriptor -> ours."""
        names = sorted(self.by_name)
        return {FIRST_SOCKET_FD + i: self.by_name[name].fileno() for i, name in enumerate(names)}

    def descriptors_here(self) -> dict[str, int]:
        """The main process's own: listener name -> descriptor, to adopt."""
        return {name: sock.fileno() for name, sock in self.by_name.items()}

    def close(self) -> None:
        for sock in self.by_name.values():
            sock.close()


def listeners_of(config: Config) -> dict[str, tuple[str, int, socket.SocketKind]]:
    """Each listener the workers share: name -> (host, port, socket type)."""
    found = {"radius": (config.radius.listen_host, config.radius.listen_port, socket.SOCK_DGRAM)}
    proxy = config.ldap_proxy
    if proxy is not None:
        found["ldap"] = (proxy.listen_host, proxy.listen_port, socket.SOCK_STREAM)
        if proxy.listen_tls is not None and proxy.tls is not None:
            host, port = proxy.listen_tls
            found["ldaps"] = (host, port, socket.SOCK_STREAM)
    return found


def bind_group(config: Config, count: int) -> list[Sockets]:
    """`count` sockets per listener, one group each: the first worker's first.

    The port is first bound alone, without SO_REUSEPORT, so that one held by another
    program (or another mfa-bridge) is an error here rather than a silent share. Without
    EAP, RADIUS requests are spread by their Request Authenticator (`spread_by_request`).
    """
    groups: list[dict[str, socket.socket]] = [{} for _ in range(count)]
    try:
        for name, (host, port, kind) in listeners_of(config).items():
            if port:
                _probe(name, host, port, kind)
            chosen = port
            for group in groups:
                group[name] = sock = _reuseport_socket(name, host, chosen, kind)
                chosen = sock.getsockname()[1]  # the port 0 picked, for the others
        if config.radius.eap is None:
            spread_by_request(groups[0]["radius"], count)
    except ListenError:
        for group in groups:
            for sock in group.values():
                sock.close()
        raise
    return [Sockets(group) for group in groups]


# Classic BPF, as <linux/filter.h> spells it: load the word at offset 4 of the datagram's
# payload (the first four octets of the Request Authenticator), take it modulo the number
# of sockets, and return that as the index of the socket in the group.
_SO_ATTACH_REUSEPORT_CBPF = 51
_LD_W_ABS, _ALU_MOD_K, _RET_A = 0x20, 0x94, 0x16


def spread_by_request(sock: socket.socket, count: int) -> None:
    """Choose the worker of each RADIUS datagram by its Request Authenticator.

    The kernel's own choice hashes the source address and port: one NAS, one socket (a
    VPN concentrator) would all go to one worker. The authenticator is random for each
    request and the same in its retransmissions, so requests spread over every worker
    while a resend still reaches the one whose reply cache has it. EAP is not spread so:
    a conversation's rounds are new requests, and its TLS state lives in one worker.
    """
    program = [(_LD_W_ABS, 0, 0, 4), (_ALU_MOD_K, 0, 0, count), (_RET_A, 0, 0, 0)]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))
    fprog = struct.pack("HP", len(program), ctypes.addressof(code))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:  # a kernel without it: the source-address hash stays
        log.warn("workers.spread-unavailable error={error}", error=str(exc))


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _probe(name: str, host: str, port: int, kind: socket.SocketKind) -> None:
    with socket.socket(family_of(host), kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ListenError(f"{name}: cannot listen on {host or '*'}:{port}: {exc}") from exc


def _reuseport_socket(name: str, host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    sock = socket.socket(family_of(host), kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise ListenError(f"{name}: cannot listen on {host or '*'}:{port}: {exc}") from exc
    return sock


def inherited(descriptors: str) -> dict[str, int]:
    """`radius=4,ldap=5` (a worker's --sockets) -> {"radius": 4, "ldap": 5}."""
    found = {}
    for part in filter(None, descriptors.split(",")):
        name, _, number = part.partition("=")
        found[name] = int(number)
    return found


# --- the counters the workers report ------------------------------------------------------


def counter_samples(collect: Iterable[Any]) -> list[Sample]:
    """The samples that add up across processes: the bridge's counters and histograms
    (not their `_created` timestamps, nor the standard process_* of each process), from a
    registry's collect()."""
    return [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in collect
        if family.type in ("counter", "histogram") and not family.name.startswith("process_")
        for sample in family.samples
        if not sample.name.endswith("_created")
    ]


def sample_key(name: str, labels: Mapping[str, str]) -> tuple[str, str]:
    """A sample's identity across processes: its name and its labels, in order."""
    return name, json.dumps(dict(labels), sort_keys=True)


def add_samples(totals: dict[tuple[str, str], float], samples: Sequence[Sample]) -> None:
    for name, labels, value in samples:
        key = sample_key(name, labels)
        totals[key] = totals.get(key, 0.0) + value


# --- the main process's side ---------------------------------------------------------------


class _Worker(ProcessProtocol):
    """One running worker: its answers to scrapes arrive on its descriptor 3."""

    def __init__(self, slot: _Slot) -> None:
        self.slot = slot
        self.ended: Deferred[None] = Deferred()
        self._buffer = b""
        self._waiting: list[Deferred[list[Sample]]] = []

    def ask(self) -> Deferred[list[Sample]]:
        answer: Deferred[list[Sample]] = Deferred()
        self._waiting.append(answer)
        assert self.transport is not None
        self.transport.write(b"metrics\n")
        return answer

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803
        if childFD != ANSWERS_FD:
            return
        self._buffer += data
        while b"\n" in self._buffer and self._waiting:
            line, self._buffer = self._buffer.split(b"\n", 1)
            samples = [(str(n), dict(labels), float(v)) for n, labels, v in json.loads(line)]
            waiting = self._waiting.pop(0)
            if not waiting.called:  # a late answer: that scrape timed out and went on
                waiting.callback(samples)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        for waiting in self._waiting:
            if not waiting.called:
                waiting.errback(reason)
        self._waiting.clear()
        self.slot.ended(self, reason)
        self.ended.callback(None)


@dataclass
class _Slot:
    """Worker N across its restarts: its sockets, and what its past lives counted."""

    number: int
    sockets: Sockets
    pool: Workers
    process: _Worker | None = None
    started: float = 0.0
    quick_deaths: int = 0
    last: list[Sample] = field(default_factory=list)  # the running one's, at the last scrape
    retired: dict[tuple[str, str], float] = field(default_factory=dict)  # earlier lives'

    def ended(self, process: _Worker, reason: Failure) -> None:
        add_samples(self.retired, self.last)  # keep the sums from going backwards
        self.last = []
        self.process = None
        self.pool.ended(self, reason)


class Workers(Service):
    """Workers 1..N-1 of the main process: started, restarted when they die, signalled,
    and asked for their counters."""

    def __init__(
        self,
        sockets: Sequence[Sockets],
        command: Callable[[int, Sockets], list[str]],
        reactor: Any,
        stop_seconds: float,
    ) -> None:
        """`sockets`: the main process's first (kept open here), then one per worker."""
        self.own = sockets[0]
        self._reactor = reactor
        self._command = command
        self._stop_seconds = stop_seconds
        self.slots = [_Slot(n, s, self) for n, s in enumerate(sockets[1:], start=1)]
        self.stopping = False
        self.held = False  # started by release() (the main upgrades old records first)

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        Service.startService(self)
        if not self.held:
            self.release()

    def release(self) -> None:
        self.held = False
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        if self.stopping or slot.process is not None:
            return
        argv = self._command(slot.number, slot.sockets)
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))
        }
        fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2, ANSWERS_FD: "r"}
        fds.update(slot.sockets.child_fds())
        slot.process = _Worker(slot)
        slot.started = self._reactor.seconds()
        self._reactor.spawnProcess(slot.process, argv[0], argv, env=environ, childFDs=fds)
        log.info("worker.started worker={worker}", worker=slot.number)

    def ended(self, slot: _Slot, reason: Failure) -> None:
        if self.stopping:
            return
        status = "exited" if reason.check(ProcessDone) else str(reason.value)
        lived = self._reactor.seconds() - slot.started
        slot.quick_deaths = 0 if lived >= STEADY_SECONDS else slot.quick_deaths + 1
        delay = RESTART_DELAYS[min(slot.quick_deaths, len(RESTART_DELAYS) - 1)]
        log.error(
            "worker.died worker={worker} status={status}: restarting in {delay} s",
            worker=slot.number,
            status=status,
            delay=delay,
        )
        self._reactor.callLater(delay, self._spawn, slot)

    def signal(self, name: str) -> None:
        """Pass a signal on (HUP: re-read the config)."""
        for slot in self.slots:
            if slot.process is not None and slot.process.transport is not None:
                try:
                    slot.process.transport.signalProcess(name)
                except OSError as exc:  # gone between the check and the signal
                    if exc.errno != errno.ESRCH:
                        raise

    def stopService(self) -> Deferred[Any]:  # noqa: N802 - Twisted's name
        """SIGTERM to each (they answer what is in flight, then exit); SIGKILL to any
        still running after stop_seconds."""
        Service.stopService(self)
        self.stopping = True
        running = [s.process for s in self.slots if s.process is not None]
        self.signal("TERM")
        ended = DeferredList([p.ended for p in running])
        late = self._reactor.callLater(self._stop_seconds, self.signal, "KILL")

        def done(result: object) -> object:
            if late.active():
                late.cancel()
            for slot in self.slots:
                slot.sockets.close()
            self.own.close()  # the main's listeners hold duplicates of their own
            return result

        return ended.addBoth(done)

    def counters(self) -> Deferred[list[Sample]]:
        """Every worker's counters added up (a dead one's as it last reported)."""

        def ask(slot: _Slot) -> Deferred[None]:
            if slot.process is None:
                return succeed(None)
            answer = slot.process.ask()
            answer.addTimeout(SNAPSHOT_TIMEOUT, self._reactor)

            def got(samples: list[Sample]) -> None:
                slot.last = samples

            return answer.addCallbacks(got, lambda _: None)

        def total(_: object) -> list[Sample]:
            sums: dict[tuple[str, str], float] = {}
            for slot in self.slots:
                add_samples(sums, list(_as_samples(slot.retired)))
                add_samples(sums, slot.last)
            return list(_as_samples(sums))

        return DeferredList([ask(slot) for slot in self.slots]).addCallback(total)


def _as_samples(sums: dict[tuple[str, str], float]) -> Iterator[Sample]:
    for (name, labels), value in sums.items():
        yield name, json.loads(labels), value


def worker_command(config_path: str, debug: bool) -> Callable[[int, Sockets], list[str]]:
    """How the main process starts worker N: this same program, as a worker."""

    def command(number: int, sockets: Sockets) -> list[str]:
        argv = [sys.executable, "-m", "bridge", "--config", config_path, "run"]
        if debug:
            argv.append("--debug")
        return [*argv, "--worker", str(number), "--sockets", sockets.descriptors()]

    return command


# --- the worker's side ---------------------------------------------------------------------


class Control(LineOnlyReceiver):
    """A worker's line to its main process: `metrics` asks for the counters; the line
    closing means the main process has gone, and the worker stops."""

    delimiter = b"\n"

    def __init__(self, samples: Callable[[], list[Sample]], gone: Callable[[], None]) -> None:
        self._samples = samples
        self._gone = gone

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 - Twisted's name
        if line == b"metrics" and self.transport is not None:
            self.transport.write(json.dumps(self._samples()).encode() + b"\n")

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self._gone()
