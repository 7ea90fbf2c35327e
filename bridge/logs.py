"""Log output: readable lines or JSON lines, filtered by level; never a secret."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)

from bridge.config import LogConfig

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


_PREDICATE = LogLevelFilterPredicate()  # one level for all namespaces; set at start-up


def observer(config: LogConfig, out: TextIO) -> ILogObserver:
    """An observer writing to `out` in the configured format, at the configured level."""
    inner = (
        jsonFileLogObserver(out, recordSeparator="")
        if config.format == "json"
        else textFileLogObserver(out)
    )
    _PREDICATE.setLogLevelForNamespace("", _LEVELS[config.level])  # "": every namespace
    return FilteringLogObserver(inner, [_PREDICATE])


def set_level(level: str) -> None:
    """Change the level of the daemon's messages while it runs (SIGHUP)."""
    _PREDICATE.setLogLevelForNamespace("", _LEVELS[level])


def start_logging(config: LogConfig, out: TextIO) -> None:
    """Send Twisted's global log to `out` (once, at start-up)."""
    globalLogBeginner.beginLoggingTo([observer(config, out)], redirectStandardIO=False)


class Throttle:
    """At most one log line per key (a cause and a client) and `interval` seconds.

    Floods of malformed packets or refused connections are counted, not logged line by
    line: a log that grows with an attack's rate is a second attack.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        interval: float = 60.0,
        limit: int = 4096,
        most: int = 100,
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._limit = limit
        self._most = most  # lines per interval in all, however many keys a flood brings
        self._last: dict[Hashable, float] = {}
        self._window = float("-inf")
        self._written = 0

    def allow(self, key: Hashable) -> bool:
        """Whether a line for `key` may be written now (and, if so, note that it was)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        if now - self._window >= self._interval:
            self._window, self._written = now, 0
        if self._written >= self._most:
            return False
        if len(self._last) >= self._limit:
            self._last.clear()
        self._last[key] = now
        self._written += 1
        return True
