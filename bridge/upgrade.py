"""Records of an earlier release, keyed by the name typed, attached to their entries.

Stores written before SPEC section 8 keep their rows in `legacy_users` until the
directory says which entry each name belongs to. Until every waiting name has had its
answer, a login could find its entry without a record while its record still waits
under another of its names (the mail, say): it would start a fresh enrollment period,
the very bypass SPEC 8 closes. So logins are refused (reason `upgrading`) until the
pass is done, which takes seconds once the directory answers. Names the directory does
not know stay where they are, listed by `mfa-bridge user list`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import DeferredSemaphore, gatherResults
from twisted.logger import Logger

from bridge.directory import BindResult, BindStatus, Directory
from bridge.store import RecordStore

log = Logger(namespace="bridge.upgrade")

PARALLEL = 16  # searches in flight while attaching
RETRY_SECONDS = 5.0  # names the directory could not answer for are asked again


class Upgrade:
    """Attaches every waiting record, asking again for names the directory could not
    answer; `on_done` is called once every name has had an answer."""

    def __init__(
        self, store: RecordStore, directory: Directory, clock: Any, on_done: Callable[[], None]
    ) -> None:
        self._store = store
        self._directory = directory
        self._clock = clock
        self._on_done = on_done
        self._started = False
        self._waiting = 0  # names waiting when the upgrade started
        self.attached = 0  # records attached by it

    def start(self) -> None:
        """Begin (once the directory has answered); later calls do nothing."""
        if self._started:
            return
        self._started = True
        names = self._store.legacy_names()
        self._waiting = len(names)
        log.info("store.upgrade: attaching {count} old records to their entries", count=len(names))
        self._pass(names)

    def _pass(self, names: list[str]) -> None:
        limit = DeferredSemaphore(PARALLEL)
        unanswered: list[str] = []

        def attach(result: BindResult, name: str) -> None:
            if result.status is BindStatus.UNAVAILABLE:
                unanswered.append(name)
            if result.identity is None:
                return
            now = int(self._clock.seconds())
            attached = self._store.attach(result.identity, (name, result.identity.name), now)
            if attached is not None and len(attached.merged) > 1:
                log.warn("store.merged {summary}", summary=attached.summary())

        def one(name: str) -> Any:
            return limit.run(self._directory.resolve, name).addCallback(attach, name)

        def finished(_: object) -> None:
            if unanswered:
                self._clock.callLater(RETRY_SECONDS, self._pass, unanswered)
                return
            left = self._store.legacy_names()
            self.attached = self._waiting - len(left)
            log.info(
                "store.upgrade: done, {attached} records attached; {left} name no directory"
                " entry answers to, kept (see `mfa-bridge user list`)",
                attached=self.attached,
                left=len(left),
            )
            self._on_done()

        def failed(failure: Any) -> None:  # a bug or the store failing: logins stay refused
            log.failure("store.upgrade failed; logins stay refused until a restart", failure)

        done = gatherResults([one(name) for name in names], consumeErrors=True)
        done.addCallback(finished).addErrback(failed)
