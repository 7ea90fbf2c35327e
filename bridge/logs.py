"""Log output: readable lines or JSON lines, filtered by level; never a secret.

JSON lines are what a log shipper expects (SPEC 12): one object a line, `time` in ISO
8601 UTC, `level` (debug, info, warning, error), `event` (the message's leading dotted
name, `radius.drop`, or the emitter's namespace for Twisted's own), `message` as the
text format renders it, then the event's own fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable
from typing import Any, TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
    textFileLogObserver,
)
from zope.interface import implementer

from bridge.audit import utc_iso
from bridge.config import LogConfig

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


_PREDICATE = LogLevelFilterPredicate()  # one level for all namespaces; set at start-up
_LEVEL_NAMES = {
    LogLevel.debug: "debug",
    LogLevel.info: "info",
    LogLevel.warn: "warning",
    LogLevel.error: "error",
    LogLevel.critical: "error",
}
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_-]*(?:\.[a-z0-9_-]+)+")
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=repr).encode
_debugging = False
_forced_debug = False  # `run --debug`: a reload keeps the trace on


@implementer(ILogObserver)
class JsonLines:
    """Writes each event as one JSON object on a line of its own."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        self._out.write(json_line(event) + "\n")
        self._out.flush()


def json_line(event: LogEvent) -> str:
    """One event as the JSON object SPEC 12 describes."""
    text = event.get("log_format") or ""
    named = _EVENT_NAME.match(text)
    fields: dict[str, Any] = {
        "time": utc_iso(event.get("log_time", 0.0)),
        "level": _LEVEL_NAMES.get(event.get("log_level", LogLevel.info), "info"),
        "event": named.group(0) if named else event.get("log_namespace", "log"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in fields and not key.startswith("_"):
            fields[key] = value if isinstance(value, str | int | float | bool) else repr(value)
    failure = event.get("log_failure")
    if failure is not None:
        fields["traceback"] = failure.getTraceback()
    return _encode(fields)


def observer(
    config: LogConfig, out: TextIO, *, debug: bool = False, worker: int = 0
) -> ILogObserver:
    """An observer writing to `out` in the configured format, at the configured level
    (debug with `--debug`, whatever the config says); a worker's lines say which it is."""
    global _forced_debug  # noqa: PLW0603
    inner: ILogObserver = JsonLines(out) if config.format == "json" else textFileLogObserver(out)
    _forced_debug = debug
    set_level(config.level)
    if worker:
        inner = _Worker(inner, worker)
    return FilteringLogObserver(inner, [_PREDICATE])


@implementer(ILogObserver)
class _Worker:
    """Adds `worker` to each event (server.workers): a JSON field, and in the text
    format's brackets, `[bridge.service#info worker=2]`."""

    def __init__(self, inner: ILogObserver, number: int) -> None:
        self._inner = inner
        self._number = number

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level", LogLevel.info)
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{level.name}"
        self._inner(dict(event, worker=self._number, log_system=f"{system} worker={self._number}"))


def set_level(level: str) -> None:
    """Change the level of the daemon's messages while it runs (SIGHUP)."""
    global _debugging  # noqa: PLW0603 - the one switch every trace point reads
    level = "debug" if _forced_debug else level
    _PREDICATE.setLogLevelForNamespace("", _LEVELS[level])  # "": every namespace
    _debugging = level == "debug"


def debugging() -> bool:
    """Whether per-request traces are wanted: checked before building one, so a daemon
    not at debug level pays nothing for them."""
    return _debugging


def start_logging(config: LogConfig, out: TextIO, *, debug: bool = False, worker: int = 0) -> None:
    """Send Twisted's global log to `out` (once, at start-up)."""
    globalLogBeginner.beginLoggingTo(
        [observer(config, out, debug=debug, worker=worker)], redirectStandardIO=False
    )


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
