"""The log throttle (bridge/logs.py): floods are counted, not written line by line."""

from __future__ import annotations

from bridge.logs import Throttle


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_per_interval() -> None:
    """A key is allowed once an interval; another key has its own turn."""
    clock = Clock()
    throttle = Throttle(clock, interval=60)
    assert throttle.allow(("drop", "a")) is True
    assert throttle.allow(("drop", "a")) is False
    assert throttle.allow(("drop", "b")) is True
    clock.now = 60
    assert throttle.allow(("drop", "a")) is True


def test_a_flood_of_new_keys_is_capped_in_all() -> None:
    """10,000 different keys (addresses, say) in one minute: at most `most` lines."""
    clock = Clock()
    throttle = Throttle(clock, interval=60, most=100)
    allowed = sum(throttle.allow(("drop", str(i))) for i in range(10_000))
    assert allowed == 100
    clock.now = 61
    assert throttle.allow(("drop", "new")) is True
