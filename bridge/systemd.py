"""systemd's notify protocol: READY, RELOADING, STOPPING, STATUS and the watchdog.

Messages are datagrams to the socket in $NOTIFY_SOCKET (a path, or an abstract name
starting with "@"); without it (not started by systemd with Type=notify) every call is a
no-op. The watchdog is fed at half the interval systemd asks for in $WATCHDOG_USEC, by a
timer of the reactor: if the event loop stops turning, the pings stop and systemd
restarts the service.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="bridge.systemd")


class Notifier:
    """Tells systemd how the daemon is doing (when systemd is listening)."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._pid = environ.get("WATCHDOG_PID")
        usec = environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        if self._pid is not None and self._pid != str(os.getpid()):
            self.watchdog_interval = None  # the watchdog is meant for another process
        self._pinger: LoopingCall | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` fields in one datagram; False when nobody listens."""
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warn("systemd.notify-failed error={error}", error=str(exc))
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", "STATUS=reloading the config")

    def reloaded(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def start_watchdog(self, clock: IReactorTime) -> None:
        """Ping at half the watchdog interval while the reactor runs."""
        if self.watchdog_interval is None or not self._address or self._pinger is not None:
            return
        self._pinger = LoopingCall(self.send, "WATCHDOG=1")
        self._pinger.clock = clock
        self._pinger.start(self.watchdog_interval / 2, now=True)

    def stop_watchdog(self) -> None:
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._pinger = None
