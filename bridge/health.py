"""`mfa-bridge healthcheck`: one Status-Server round trip (RFC 5997) to the local listener.

For container HEALTHCHECKs and monitoring: it proves the daemon's event loop answers
RADIUS, using the secret of the `radius.clients` entry that covers the loopback address
it sends from, and verifies the reply's authenticators as a NAS would.
"""

from __future__ import annotations

import ipaddress
import socket
import time

from pyrad import packet

from bridge.config import Config
from bridge.radius import codec


class HealthError(Exception):
    """The check could not be made or failed; the message says which."""


def target(config: Config) -> tuple[str, int]:
    """Where to send: the listen address, with a wildcard replaced by loopback."""
    host = config.radius.listen_host
    if host in ("", "0.0.0.0"):  # noqa: S104 - reading the config, not binding
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, config.radius.listen_port


def secret_for(config: Config, source: str) -> bytes:
    """The shared secret of the client entry covering `source`."""
    address = ipaddress.ip_address(source)
    for client in sorted(config.radius.clients, key=lambda c: -c.network.prefixlen):
        if address in client.network:
            return client.secret
    raise HealthError(
        f"no radius.clients entry covers {source}: add one for the health check"
        f" (address: {source}) with its own secret"
    )


def status_server(config: Config, timeout: float = 2.0) -> float:
    """Round-trip seconds of a verified Status-Server answer; HealthError otherwise."""
    host, port = target(config)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    secret = secret_for(config, host)
    request = packet.AuthPacket(code=packet.StatusServer, secret=secret, dict=codec.DICTIONARY)
    request.add_message_authenticator()
    raw = request.RequestPacket()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        started = time.monotonic()
        try:
            sock.sendto(raw, (host, port))
            while True:
                data = sock.recv(4096)
                if len(data) >= 20 and data[1] == request.id:
                    break
        except TimeoutError as exc:
            raise HealthError(f"no answer from {host}:{port} within {timeout:g} s") from exc
        except OSError as exc:
            raise HealthError(f"{host}:{port}: {exc.strerror or exc}") from exc
        took = time.monotonic() - started
    reply = request.CreateReply(packet=data)
    if not request.VerifyReply(reply, data, enforce_ma=True):
        raise HealthError(f"{host}:{port}: the reply does not verify (wrong secret?)")
    if reply.code != packet.AccessAccept:
        raise HealthError(f"{host}:{port}: answered code {reply.code}, not Access-Accept")
    return took
