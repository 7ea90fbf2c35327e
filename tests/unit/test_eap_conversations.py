"""The table of unfinished EAP conversations: one State per round, expiry, bounds."""

from __future__ import annotations

from bridge.eap.conversations import Conversations


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_state_continues_its_conversation_once_and_from_its_client_only() -> None:
    table: Conversations[str] = Conversations(Clock())
    state = table.keep("10.0.0.1", "handshake")
    assert table.take(state, "10.0.0.2") is None  # another NAS: not its conversation
    assert table.take(state, "10.0.0.1") == "handshake"
    assert table.take(state, "10.0.0.1") is None  # each round gets a new State
    assert len(table) == 0


def test_conversations_not_continued_in_time_are_dropped_and_counted() -> None:
    clock = Clock()
    table: Conversations[str] = Conversations(clock, lifetime=30)
    old = table.keep("10.0.0.1", "old")
    clock.now += 20
    young = table.keep("10.0.0.1", "young")
    clock.now += 10
    assert table.take(old, "10.0.0.1") is None
    assert table.take(young, "10.0.0.1") == "young"
    assert table.counters["expired"] == 1


def test_a_flooding_client_crowds_out_only_its_own_oldest() -> None:
    table: Conversations[int] = Conversations(Clock(), per_client=3, total=5)
    other = table.keep("10.0.0.9", -1)
    states = [table.keep("10.0.0.1", i) for i in range(5)]
    assert len(table) == 4  # 3 of the flooder's, the other's one
    assert [table.take(s, "10.0.0.1") for s in states[:2]] == [None, None]
    assert table.take(other, "10.0.0.9") == -1
    assert table.counters["evicted-client"] == 2


def test_the_total_bound_drops_the_oldest_of_all() -> None:
    table: Conversations[int] = Conversations(Clock(), per_client=10, total=3)
    states = [table.keep(f"10.0.0.{i}", i) for i in range(4)]
    assert len(table) == 3
    assert table.take(states[0], "10.0.0.0") is None
    assert table.take(states[3], "10.0.0.3") == 3
    assert table.counters["evicted-total"] == 1


def test_states_are_random_and_distinct() -> None:
    table: Conversations[int] = Conversations(Clock())
    states = {table.keep("10.0.0.1", i) for i in range(50)}
    assert len(states) == 50
    assert all(len(s) == 16 for s in states)
