"""Log output: readable lines or JSON lines, filtered by level; never a secret."""

from __future__ import annotations

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
