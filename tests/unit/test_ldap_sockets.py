"""The proxy's writes: sent at once on an idle plain TCP connection, queued otherwise."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol

from bridge.ldap_proxy.sockets import write_now


class Reactor:
    """What a connection asks of its reactor when it queues: to be told it may write."""

    def __init__(self) -> None:
        self.writers: list[Any] = []

    def addWriter(self, writer: Any) -> None:  # noqa: N802 - Twisted's name
        if writer not in self.writers:  # as a real reactor: once
            self.writers.append(writer)

    def removeWriter(self, writer: Any) -> None:  # noqa: N802 - Twisted's name
        self.writers.remove(writer)

    def removeReader(self, reader: Any) -> None:  # noqa: N802 - Twisted's name
        pass  # reading is not what these tests look at


@pytest.fixture
def pair() -> Iterator[tuple[tcp.Connection, socket.socket, Reactor]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    reactor = Reactor()
    connection = tcp.Connection(ours, Protocol(), reactor)
    connection.connected = True
    yield connection, peer, reactor
    ours.close()
    peer.close()


def received(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += peer.recv(size - len(data))
    return data


def drained(connection: tcp.Connection, peer: socket.socket, reactor: Reactor, size: int) -> bytes:
    """What the peer reads, `connection` writing what it queued as the reactor would."""
    data = b""
    while len(data) < size:
        data += peer.recv(65536)
        if reactor.writers:
            connection.doWrite()
    return data


def test_an_idle_connection_sends_at_once(pair: Any) -> None:
    connection, peer, reactor = pair
    write_now(connection, b"bind response")
    assert received(peer, 13) == b"bind response"
    assert reactor.writers == []  # no reactor turn, no epoll change


def test_bytes_already_queued_go_first(pair: Any) -> None:
    connection, peer, reactor = pair
    connection.write(b"first ")  # queued until the reactor says the socket is writable
    write_now(connection, b"second")
    assert reactor.writers == [connection]
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)  # nothing overtook the queue
    connection.doWrite()
    peer.setblocking(True)
    assert received(peer, 12) == b"first second"


def test_what_a_full_socket_does_not_take_is_queued_in_order(pair: Any) -> None:
    connection, peer, reactor = pair
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    write_now(connection, big)
    assert reactor.writers == [connection]
    write_now(connection, b"after")
    assert drained(connection, peer, reactor, len(big) + 5) == big + b"after"


def test_bytes_left_from_a_partial_send_go_first(pair: Any) -> None:
    connection, peer, reactor = pair
    big = bytes(range(256)) * 4096
    connection.write(big)
    connection.doWrite()  # the socket took part of it: the rest waits in dataBuffer
    assert 0 < connection.offset < len(connection.dataBuffer)
    write_now(connection, b"after")
    assert drained(connection, peer, reactor, len(big) + 5) == big + b"after"


def test_a_closing_or_aborted_connection_is_left_to_twisted(pair: Any) -> None:
    connection, peer, reactor = pair
    connection.write(b"last words")
    connection.loseConnection()  # disconnecting: what is written must still come before
    write_now(connection, b" and more")
    connection.doWrite()
    assert received(peer, 19) == b"last words and more"
    other, peer2 = socket.socketpair()
    other.setblocking(False)
    aborted = tcp.Connection(other, Protocol(), reactor)
    aborted.connected = True
    aborted._aborting = True  # abortConnection: nothing more may be sent
    write_now(aborted, b"x")
    peer2.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer2.recv(10)
    other.close()
    peer2.close()


def test_tls_and_other_transports_are_left_to_twisted(pair: Any) -> None:
    connection, peer, _reactor = pair
    connection.TLS = True  # after startTLS the bytes must pass through the TLS layer

    written: list[bytes] = []

    class Layer:
        def write(self, data: bytes) -> None:
            written.append(data)

    connection.protocol = Layer()
    write_now(connection, b"secret")
    assert written == [b"secret"]
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)
    other = Layer()
    write_now(other, b"x")
    assert written == [b"secret", b"x"]
