"""The one place a login is decided: store + directory + clock around the pure policy.

Both protocol adapters call `Authenticator`, so a code used over one protocol is spent for
the other, and every decision is written to the audit log here, once, with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from bridge.audit import AuditLog
from bridge.core.credentials import normalize_username
from bridge.core.policy import Mode, Policy, Verdict, check_code, conclude, plan_attempt, rejected
from bridge.core.types import Decision, Reason, UserRecord
from bridge.directory import Binder, BindResult, BindStatus
from bridge.store import SqliteStore
from bridge.store.batching import WriteBatcher

_BIND_REJECTS = {
    BindStatus.BAD_PASSWORD: Reason.BAD_PASSWORD,
    BindStatus.UNKNOWN_USER: Reason.UNKNOWN_USER,
    BindStatus.UNAVAILABLE: Reason.DIRECTORY_DOWN,
}


class Authenticate(Protocol):
    """`Directory.authenticate`: find the user and check the password with one bind."""

    def __call__(
        self, username: str, password: str, bind: Binder | None = None
    ) -> Deferred[BindResult]:
        """The directory's answer; `bind` makes that bind instead of the directory's pool."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, for the audit log: protocol and client."""

    protocol: str
    client: str
    label: str = ""  # for the metrics: a configured client's name, never an address


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    """A decision and, for an accepted login, the password and DN the directory accepted."""

    decision: Decision
    password: str | None = field(default=None, repr=False)  # never in a repr or a log
    dn: str | None = None
    server: str | None = None


class Authenticator:
    """Decides logins; the adapters only translate between wire and `Decision`."""

    def __init__(
        self,
        store: SqliteStore,
        authenticate: Authenticate,
        policy: Policy,
        exempt_users: frozenset[str],
        clock: IReactorTime,
        *,
        audit: AuditLog,
        writes: WriteBatcher | None = None,
    ) -> None:
        self._store = store
        self._audit_log = audit
        self._writes = writes  # None: each login's write commits on its own, at once
        self._authenticate = authenticate
        self._policy = policy
        self._exempt_users = frozenset(
            name for name in map(normalize_username, exempt_users) if name
        )
        self._clock = clock

    def reconfigure(self, policy: Policy, exempt_users: frozenset[str]) -> None:
        """New MFA rules and exempt users, for logins that start from now on (SIGHUP)."""
        self._policy = policy
        self._exempt_users = frozenset(
            name for name in map(normalize_username, exempt_users) if name
        )

    def _now(self) -> int:
        return int(self._clock.seconds())

    def login(
        self, raw_username: str, field: str, mode: Mode, caller: Caller
    ) -> Deferred[Decision]:
        """Decide a login from a user name and a password field (maybe with a code)."""
        return self.login_outcome(raw_username, field, mode, caller).addCallback(
            lambda outcome: outcome.decision
        )

    def login_outcome(
        self,
        raw_username: str,
        field: str,
        mode: Mode,
        caller: Caller,
        bind: Binder | None = None,
    ) -> Deferred[LoginOutcome]:
        """`login`, also saying which password the directory accepted and for which DN.

        `bind` checks the password instead of the directory's pool: the LDAP proxy binds
        on the connection it keeps for the session, so the login costs one bind.
        """
        started = self._clock.seconds()
        username = normalize_username(raw_username)
        if username is None:
            decision = rejected(raw_username[:64], Reason.BAD_USERNAME)
            return succeed(LoginOutcome(self._audit(decision, caller, started)))
        if not field:
            decision = rejected(username, Reason.EMPTY_PASSWORD)
            return succeed(LoginOutcome(self._audit(decision, caller, started)))
        record = self._store.get(username)
        attempt = plan_attempt(record, field, mode, self._now(), self._policy)

        def bound(result: BindResult) -> LoginOutcome | Deferred[LoginOutcome]:
            if result.status is not BindStatus.OK:
                decision = rejected(username, _BIND_REJECTS[result.status], record)
                return LoginOutcome(self._audit(decision, caller, started))
            exempt = username in self._exempt_users or result.in_exempt_group

            def decide(current: UserRecord | None) -> tuple[UserRecord | None, Verdict]:
                verdict = conclude(
                    current,
                    username,
                    attempt,
                    exempt=exempt,
                    can_challenge=mode is not Mode.APPEND,
                    now=self._now(),
                    policy=self._policy,
                )
                return verdict.record, verdict

            if self._writes is None:
                return written(self._store.update_seen(username, record, decide), result)
            d = self._writes.update_seen(username, record, decide)
            return d.addCallback(written, result)

        def written(verdict: Verdict, result: BindResult) -> LoginOutcome:
            decision = self._audit(verdict.decision, caller, started)
            if not decision.accepted:
                return LoginOutcome(decision)
            return LoginOutcome(decision, attempt.password, result.dn, result.server)

        if bind is None:
            checked = self._authenticate(username, attempt.password)
        else:
            checked = self._authenticate(username, attempt.password, bind)
        return checked.addCallback(bound)

    def answer_challenge(self, username: str, code: str, caller: Caller) -> Decision:
        """Decide the code sent in answer to a challenge (the password was checked then)."""
        started = self._clock.seconds()

        def decide(current: UserRecord | None) -> tuple[UserRecord | None, Decision]:
            if current is None:
                return None, rejected(username, Reason.BAD_STATE)
            verdict = check_code(current, code, now=self._now(), policy=self._policy)
            return verdict.record, verdict.decision

        return self._audit(self._store.update(username, decide), caller, started)

    def refuse(self, raw_username: str, reason: Reason, caller: Caller) -> Decision:
        """Reject before any password check (malformed, unsupported, stale challenge)."""
        username = normalize_username(raw_username) or raw_username[:64]
        return self._audit(rejected(username, reason), caller, self._clock.seconds())

    @staticmethod
    def same_user(raw_username: str, username: str) -> bool:
        """Whether a name a client sent is the canonical `username`."""
        return normalize_username(raw_username) == username

    def _audit(self, decision: Decision, caller: Caller, started: float) -> Decision:
        latency = self._clock.seconds() - started
        self._audit_log.record(decision, caller.protocol, caller.client, latency, caller.label)
        return decision
