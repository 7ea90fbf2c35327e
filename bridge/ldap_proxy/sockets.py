"""The proxy's TCP details: its small messages go out at once."""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def no_delay(transport: Any) -> None:
    """TCP_NODELAY where the transport has it: LDAP is request/response in small messages."""
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        setter(True)


def write_now(transport: Any, data: bytes) -> None:
    """Write `data`, sending it at once when the connection is plain TCP with nothing
    queued before it; what the socket does not take now, and everything on TLS, is
    queued by Twisted as usual.

    Twisted queues every write and registers the socket for writability until the next
    reactor turn sends it: two epoll changes and a turn for each of the four small
    messages a bind + search takes through the proxy (bench/RESULTS.md).
    """
    if _idle_plain_tcp(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # full, or failed: Twisted's own write meets it and closes if need be
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _idle_plain_tcp(transport: Any) -> bool:
    """A connected, unencrypted TCP connection with no bytes waiting to be sent."""
    return (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and bool(transport.connected)
        and not transport.disconnecting
        and not getattr(transport, "_writeDisconnected", True)
        and not getattr(transport, "_aborting", True)
        and getattr(transport, "_tempDataLen", 1) == 0
        and transport.offset == len(transport.dataBuffer)
    )
