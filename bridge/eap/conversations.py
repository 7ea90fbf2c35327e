"""Unfinished EAP conversations: found by the State of their last round, bounded.

An EAP-TTLS or PEAP login takes several Access-Request/Access-Challenge rounds (the TLS
handshake, then the inner password). Between rounds the conversation waits here under
the State attribute sent with the challenge; each round gets a fresh State, so an old
one cannot be played again. A conversation that is not continued within `lifetime`
seconds is dropped (and counted), and one client address can hold at most
`per_client` unfinished ones, `total` in all: a flood of handshakes costs bounded
memory and crowds out only the flooder's oldest ones. A handshake waiting between rounds
holds about 70 KB of OpenSSL state: 2,048 of them are some 140 MB. At ~0.1 s a login,
256 at once from one access point or controller is some 2,500 logins a second.

The TLS state of a conversation lives in this process: the NAS keeps one conversation on
one server (it sends each round to the server that sent the State), so instances need
not share it.
"""

from __future__ import annotations

import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Held(Generic[T]):
    client: str
    expires: float
    value: T = field(repr=False)


class Conversations(Generic[T]):
    """Conversations by State, oldest first; `T` is what a method keeps between rounds."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        lifetime: float = 30.0,
        per_client: int = 256,
        total: int = 2048,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._clock = clock
        self._lifetime = lifetime
        self._per_client = per_client
        self._total = total
        self._random = random_bytes
        self._held: OrderedDict[bytes, _Held[T]] = OrderedDict()
        self._by_client: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()  # expired, evicted-client, evicted-total

    def __len__(self) -> int:
        return len(self._held)

    def keep(self, client: str, value: T) -> bytes:
        """Keep `value` for the client's next round; returns the State to send with it."""
        self._expire()
        if self._by_client[client] >= self._per_client:
            self._evict(lambda held: held.client == client, "evicted-client")
        if len(self._held) >= self._total:
            self._evict(lambda _held: True, "evicted-total")
        state = self._random(16)
        self._held[state] = _Held(client, self._clock() + self._lifetime, value)
        self._by_client[client] += 1
        return state

    def take(self, state: bytes, client: str) -> T | None:
        """The conversation continued with `state` from `client` (forgotten as it is
        taken: the next round gets a new State); None if unknown, expired or another's."""
        self._expire()
        held = self._held.get(state)
        if held is None or held.client != client:
            return None
        self._forget(state, held)
        return held.value

    def _expire(self) -> None:
        now = self._clock()
        while self._held:
            state, held = next(iter(self._held.items()))
            if held.expires > now:
                return
            self._forget(state, held)
            self.counters["expired"] += 1

    def _evict(self, which: Callable[[_Held[T]], bool], counter: str) -> None:
        """Drop the oldest conversation that `which` selects."""
        for state, held in self._held.items():
            if which(held):
                self._forget(state, held)
                self.counters[counter] += 1
                return

    def _forget(self, state: bytes, held: _Held[T]) -> None:
        del self._held[state]
        self._by_client[held.client] -= 1
        if not self._by_client[held.client]:
            del self._by_client[held.client]
