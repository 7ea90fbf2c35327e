"""Records of an earlier release, keyed by the name typed, attached to their entries.

Stores written before SPEC section 8 keep their rows in `legacy_users` until the
directory says which entry each name belongs to. A login attaches the rows under the
names it resolved (`Authenticator`); this attaches all of them once the directory first
answers, so a record under a spelling nobody types again is not left behind. Names the
directory does not know stay where they are, listed by `mfa-bridge user list`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults, succeed
from twisted.logger import Logger

from bridge.directory import BindResult, BindStatus, Directory
from bridge.store import SqliteStore

log = Logger(namespace="bridge.upgrade")

PARALLEL = 16  # searches in flight while attaching


def attach_all(store: SqliteStore, directory: Directory, clock: Any) -> Deferred[Any]:
    """Resolve every waiting name and attach its record; fires when all were tried."""
    names = store.legacy_names()
    if not names:
        return succeed(None)
    log.info(
        "store.upgrade: attaching {count} records to their directory entries", count=len(names)
    )
    limit = DeferredSemaphore(PARALLEL)
    outcomes: dict[str, BindStatus] = {}

    def attach(result: BindResult, name: str) -> None:
        outcomes[name] = result.status
        if result.identity is None:
            return
        attached = store.attach(result.identity, (name, result.identity.name), int(clock.seconds()))
        if attached is not None and len(attached.merged) > 1:
            log.warn("store.merged {summary}", summary=attached.summary())

    def one(name: str) -> Deferred[None]:
        return limit.run(directory.resolve, name).addCallback(attach, name)

    def report(_: object) -> None:
        left = store.legacy_names()
        down = sum(1 for status in outcomes.values() if status is BindStatus.UNAVAILABLE)
        log.info(
            "store.upgrade: {done} records attached, {left} still waiting"
            " ({down} for an unreachable directory; the others name no single entry:"
            " see `mfa-bridge user list`)",
            done=len(names) - len(left),
            left=len(left),
            down=down,
        )

    done = gatherResults([one(name) for name in names], consumeErrors=True)
    return done.addCallback(report).addErrback(
        lambda failure: log.failure("store.upgrade failed", failure)
    )
