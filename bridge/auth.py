"""The one place a login is decided: store + directory + clock around the pure policy.

Both protocol adapters call `Authenticator`, so a code used over one protocol is spent for
the other, and every decision is written to the audit log here, once, with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.audit import AuditLog
from bridge.core.credentials import normalize_username
from bridge.core.identity import name_key, name_keys
from bridge.core.policy import (
    Access,
    Attempt,
    Mode,
    Policy,
    Verdict,
    check_code,
    conclude,
    conclude_rebind,
    plan_attempt,
    plan_given,
    rejected,
)
from bridge.core.totp import guard_tag
from bridge.core.types import Decision, Identity, Outcome, Reason, UserRecord
from bridge.directory import Binder, BindResult, BindStatus, Plan
from bridge.ldapdn import DnKey, dn_key
from bridge.logs import Throttle, debugging
from bridge.store import RecordStore, StoreUnavailableError
from bridge.store.batching import StoreBatcher
from bridge.store.records import ChallengeRow
from bridge.store.worker import StoreWorker

log = Logger(namespace="bridge.auth")

RECENT_SECONDS = 10  # an accepted bind is known in memory until its rebind row is written

_CALLER_FIELDS = (
    "outer_identity",
    "nas_identifier",
    "nas_ip",
    "calling_station_id",
    "client_address",
)
_CODE_ACCEPTS = frozenset({Reason.ACCEPTED, Reason.ACTIVATED})  # a code was just spent

_BIND_REJECTS = {
    BindStatus.BAD_PASSWORD: Reason.BAD_PASSWORD,
    BindStatus.UNKNOWN_USER: Reason.UNKNOWN_USER,
    BindStatus.NO_ENTRY_ID: Reason.NO_ENTRY_ID,
    BindStatus.UNAVAILABLE: Reason.DIRECTORY_DOWN,
}


class Authenticate(Protocol):
    """`Directory.authenticate`: find the user's entry, then check the password with one bind."""

    def __call__(
        self, username: str, plan: Plan, bind: Binder | None = None
    ) -> Deferred[BindResult]:
        """The directory's answer; `plan` chooses the password once the entry is known."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, for the audit log: protocol and client."""

    protocol: str
    client: str
    label: str = ""  # for the metrics: a configured client's name, never an address
    outer_identity: str | None = None  # EAP: the identity outside the tunnel
    nas_identifier: str | None = None  # RADIUS: what the NAS says about itself
    nas_ip: str | None = None
    calling_station_id: str | None = None  # RADIUS: the device (a MAC, a phone's IP)
    client_address: str | None = None  # the IP address the request came from

    def audit_fields(self) -> dict[str, str]:
        """The fields of the audit line beyond protocol and client (SPEC 12), when known."""
        return {
            name: value for name in _CALLER_FIELDS if (value := getattr(self, name)) is not None
        }


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    """A decision and, past the password check, whose it is and which password worked."""

    decision: Decision
    password: str | None = field(default=None, repr=False)  # never in a repr or a log
    identity: Identity | None = None  # the entry, for an accept or a challenge
    server: str | None = None
    groups: frozenset[DnKey] = frozenset()  # the configured groups it is in, for replies

    @property
    def dn(self) -> str | None:
        """The DN the directory accepted the password for."""
        return self.identity.dn if self.identity is not None else None


@dataclass(frozen=True, slots=True)
class ClientRules:
    """What a RADIUS client allows (SPEC 11), applied to each login through it."""

    name: str  # the client's configured name: remembered devices are per client
    allowed_groups: frozenset[DnKey] = frozenset()  # empty: every user
    mfa: bool = True
    remember_seconds: int = 0

    @classmethod
    def of(
        cls, name: str, allowed_groups: tuple[str, ...], mfa: bool = True, remember: int = 0
    ) -> ClientRules:
        """The rules of a configured client, its allowed groups given as DNs."""
        allowed = frozenset(key for dn in allowed_groups if (key := dn_key(dn)) is not None)
        return cls(name, allowed, mfa, remember)

    def allows(self, groups: frozenset[DnKey]) -> bool:
        """Whether a member of `groups` may log in through this client."""
        return not self.allowed_groups or bool(self.allowed_groups & groups)


@dataclass(frozen=True, slots=True)
class Rebind:
    """An LDAP client whose bind, repeated with the same password+code from the same
    address within `seconds`, is accepted again (SPEC 6: apps that bind again)."""

    client: str
    seconds: int


@dataclass(frozen=True, slots=True)
class _Ask:
    """What a login asks, as the password's plan needs it."""

    username: str
    typed: str = field(repr=False)  # the password field, maybe with a code
    mode: Mode
    code: str | None = field(default=None, repr=False)  # a code in a field of its own
    bind: Binder | None = None  # binds instead of the directory's pool (the LDAP proxy)


@dataclass(slots=True)
class _Plan:
    """What the login chose once the directory had found the entry."""

    identity: Identity
    record: UserRecord | None
    attempt: Attempt
    recent: bool = False  # planned on the store's recent record, not one just read


class Authenticator:
    """Decides logins; the adapters only translate between wire and `Decision`.

    A login resolves the name typed to its directory entry first: the record read, the
    code checked and the state changed are the entry's (SPEC section 8), whichever of its
    names was typed.
    """

    def __init__(
        self,
        store: RecordStore,
        authenticate: Authenticate,
        policy: Policy,
        exempt_users: frozenset[str],
        clock: IReactorTime,
        *,
        audit: AuditLog,
        writes: StoreBatcher | None = None,
        worker: StoreWorker | None = None,
    ) -> None:
        self._store = store
        self._worker = worker or StoreWorker(clock, threaded=False)  # where store calls run
        # Off the reactor, the records read before binds are read in the store's turns,
        # with its writes (no legacy records there: those are SQLite's, read inline).
        self._reads = writes if writes is not None and writes.threaded else None
        if self._worker.threaded and self._reads is None:
            raise ValueError("a threaded store needs its batcher: reads are batched there")
        self._audit_log = audit
        self._writes = writes  # None: each login's write commits on its own, at once
        self._authenticate = authenticate
        self._policy = policy
        self._exempt_users = name_keys(exempt_users)
        self._clock = clock
        self.upgrading = False  # records of an earlier release still wait: refuse logins
        # LDAP binds accepted with a code, until their rebind rows are committed.
        self._accepted_binds = _Recent(limit=65_536)
        self._throttle = Throttle(clock.seconds)  # log lines about the store being down
        self.stopping = False  # shutting down: the directory is being closed under logins
        self.in_flight = 0  # logins started and not yet decided (see StoreBatcher)
        # The configured groups of an entry (Directory.memberships_of), for an accept
        # decided after its bind: a challenge's answer. None: no group is configured.
        self.memberships: Callable[[Identity], Deferred[BindResult]] | None = None

    def reconfigure(self, policy: Policy, exempt_users: frozenset[str]) -> None:
        """New MFA rules and exempt users, for logins that start from now on (SIGHUP)."""
        self._policy = policy
        self._exempt_users = name_keys(exempt_users)

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
        *,
        code: str | None = None,
        rebind: Rebind | None = None,
        rules: ClientRules | None = None,
        device: str | None = None,
    ) -> Deferred[LoginOutcome]:
        """`login`, also saying whose entry it was and which password the directory took.

        `bind` checks the password instead of the directory's pool: the LDAP proxy binds
        on the connection it keeps for the session, so the login costs one bind. `code`
        is a code given in a field of its own (the portal), `field` then the password.
        `rebind`: the LDAP proxy's client, which may repeat a bind it was accepted with.
        `rules`: the RADIUS client's (SPEC 11); `device` its Calling-Station-Id, by which
        a device is remembered when the client's `remember_seconds` says so.
        """
        started = self._clock.seconds()
        username = normalize_username(raw_username)
        early = self._refused_early(raw_username, username, field)
        if early is not None:
            return succeed(LoginOutcome(self._audit(early, caller, started)))
        assert username is not None  # refused early otherwise
        planned: list[_Plan] = []
        ask = _Ask(username, field, mode, code, bind)

        def bound(result: BindResult) -> LoginOutcome | Deferred[LoginOutcome]:
            if result.status is BindStatus.BAD_PASSWORD and planned and planned[-1].recent:
                return self._plan_again(result, planned, ask).addCallback(bound)
            if result.status is not BindStatus.OK or not planned:
                chosen = planned[-1] if planned else None
                name = result.identity.name if result.identity is not None else username
                decision = rejected(
                    name,
                    _BIND_REJECTS.get(result.status, Reason.INTERNAL_ERROR),
                    chosen.record if chosen else None,
                )
                return LoginOutcome(self._audit(decision, caller, started, username))
            chosen = planned[-1]
            identity = chosen.identity
            exempt = name_key(identity.name) in self._exempt_users or result.in_exempt_group

            macs: list[bytes | None] = []  # the bind's keyed hash, from the last decision
            devices: list[bytes | None] = []  # the device's, likewise

            def decide(current: UserRecord | None) -> tuple[UserRecord | None, Verdict]:
                # Decided here, on the record as written (after the password was bound), so
                # parallel binds of one app see each other, and a new key ends a rebind.
                mac = None
                if rebind is not None and chosen.attempt.code is not None and not exempt:
                    mac = self._rebind_mac(identity, rebind.client, current, field)
                macs[:] = [mac]
                if (
                    # a bind repeated after the client stopped allowing the user: refused
                    (rules is None or rules.allows(result.groups))
                    and mac is not None
                    and current is not None
                    and self._rebinds(mac, identity)
                ):
                    verdict = conclude_rebind(current, identity, self._now())
                    return verdict.record, verdict
                device_mac = self._device_mac(identity, rules, device, current)
                devices[:] = [device_mac]
                verdict = conclude(
                    current,
                    identity,
                    chosen.attempt,
                    exempt=exempt,
                    can_challenge=mode is not Mode.APPEND,
                    now=self._now(),
                    policy=self._policy,
                    access=self._access(rules, result.groups, identity, device_mac),
                )
                if verdict.decision.reason in _CODE_ACCEPTS:
                    for key in (mac, device_mac):
                        if key is not None:
                            self._accepted_binds.put(key, self._now() + RECENT_SECONDS)
                return verdict.record, verdict

            if self._writes is None:
                verdict = self._store.update_seen(identity.entry_id, chosen.record, decide)
                return written(verdict, chosen, result, macs, devices)
            # A bind or a device to recognise is looked up in the store: in its turn.
            looks_up = rebind is not None or (rules is not None and bool(device))
            d = self._writes.update_seen(
                identity.entry_id, chosen.record, decide, early=not looks_up
            )
            return d.addCallback(written, chosen, result, macs, devices)

        def written(
            verdict: Verdict,
            chosen: _Plan,
            result: BindResult,
            macs: list[bytes | None],
            devices: list[bytes | None],
        ) -> LoginOutcome:
            decision = self._audit(verdict.decision, caller, started, username)
            if decision.reason in _CODE_ACCEPTS:  # a code spent: remember the bind, the device
                if rebind is not None and rebind.seconds > 0 and macs and macs[0]:
                    self._remember(macs[0], chosen.identity, rebind.seconds)
                if rules is not None and devices and devices[0]:
                    self._remember(devices[0], chosen.identity, rules.remember_seconds)
            if decision.accepted:
                password = chosen.attempt.password
                return LoginOutcome(
                    decision, password, chosen.identity, result.server, result.groups
                )
            if decision.outcome is Outcome.CHALLENGE:
                return LoginOutcome(decision, identity=chosen.identity, server=result.server)
            return LoginOutcome(decision)

        self.in_flight += 1
        checked = self._bind(ask, self._planner(ask, planned))
        outcome: Deferred[LoginOutcome] = checked.addCallback(bound)
        outcome.addErrback(self._store_down, username, caller, started)
        return outcome.addBoth(self._decided)

    def _bind(self, ask: _Ask, plan: Plan) -> Deferred[BindResult]:
        if ask.bind is None:
            return self._authenticate(ask.username, plan)
        return self._authenticate(ask.username, plan, ask.bind)

    def _plan_again(
        self, result: BindResult, planned: list[_Plan], ask: _Ask
    ) -> Deferred[BindResult]:
        """A password chosen on a recent record was refused: the record may have changed
        since (a key enrolled or reset by another instance, the CLI). Read it; bind again
        only if it makes the choice different, so a wrong password costs one bind."""
        first = planned[-1]
        assert self._reads is not None  # recent records are a threaded store's

        def compare(record: UserRecord | None) -> BindResult | Deferred[BindResult]:
            attempt = self._attempt(record, ask)
            if attempt.password == first.attempt.password:
                planned[-1] = _Plan(first.identity, record, first.attempt)
                return result
            return self._bind(ask, self._planner(ask, planned, fresh=True))

        return self._reads.get(first.identity.entry_id).addCallback(compare)

    def _decided(self, result: LoginOutcome | Failure) -> LoginOutcome | Failure:
        self.in_flight -= 1
        return result

    def _planner(self, ask: _Ask, planned: list[_Plan], *, fresh: bool = False) -> Plan:
        """What the directory calls once it has found the entry: read its record, choose
        the password to bind with (noting the choice in `planned`). On a threaded store
        the record this instance last read or wrote will do, unless `fresh`: the choice
        only picks a password, and what is decided after the bind is checked against
        the row's version (`store/recent.py`)."""

        def plan(identity: Identity) -> str | Deferred[str]:
            def choose(record: UserRecord | None, recent: bool = False) -> str:
                attempt = self._attempt(record, ask)
                planned.append(_Plan(identity, record, attempt, recent))
                return attempt.password

            if self._reads is None:
                return choose(self._record_for(identity, ask.username, self._now()))
            recent = None if fresh else self._store.recent(identity.entry_id)
            if recent is not None:
                return choose(recent, recent=True)
            return self._reads.get(identity.entry_id).addCallback(choose)

        return plan

    def _attempt(self, record: UserRecord | None, ask: _Ask) -> Attempt:
        """The password (and code) to try, as the record says (`policy.plan_attempt`)."""
        if ask.code is None:
            return plan_attempt(record, ask.typed, ask.mode, self._now(), self._policy)
        return plan_given(record, ask.typed, ask.code)

    def _refused_early(self, raw: str, username: str | None, field: str) -> Decision | None:
        """A login refused before the directory is asked, or None."""
        if username is None:
            return rejected(raw[:64], Reason.BAD_USERNAME)
        if not field:
            return rejected(username, Reason.EMPTY_PASSWORD)
        if self.upgrading:  # see bridge/upgrade.py: a record may still wait under another name
            return rejected(username, Reason.UPGRADING)
        return None

    def _rebinds(self, mac: bytes, identity: Identity) -> bool:
        """Whether this bind was accepted with a code in time: moments ago in this process
        (its row may not be written yet), or before, by any instance sharing the store."""
        now = self._now()
        if self._accepted_binds.get(mac, now) > now:
            return True
        return self._store.knows_rebind(mac, identity.entry_id, now)

    def _rebind_mac(
        self, identity: Identity, client: str, record: UserRecord | None, field: str
    ) -> bytes | None:
        """What a bind is remembered by: entry, client, the key's tag and the field (hashed)."""
        if record is None or record.secret is None:
            return None
        parts = (identity.entry_id, client, guard_tag(record.secret).hex(), field)
        return self._store.mac(b"rebind", *(part.encode() for part in parts))

    def _access(
        self,
        rules: ClientRules | None,
        groups: frozenset[DnKey],
        identity: Identity,
        device_mac: bytes | None,
    ) -> Access:
        """What the client allows this user: its groups, its MFA, a remembered device."""
        if rules is None:
            return Access()
        remembered = device_mac is not None and self._rebinds(device_mac, identity)
        return Access(allowed=rules.allows(groups), mfa=rules.mfa, remembered=remembered)

    def _device_mac(
        self,
        identity: Identity,
        rules: ClientRules | None,
        device: str | None,
        record: UserRecord | None,
    ) -> bytes | None:
        """What a device is remembered by: entry, client, device and the key's tag (hashed);
        None when the client remembers no devices or the login names none."""
        if rules is None or rules.remember_seconds <= 0 or not device:
            return None
        if record is None or record.secret is None:
            return None
        parts = (identity.entry_id, rules.name, device.lower(), guard_tag(record.secret).hex())
        return self._store.mac(b"device", *(part.encode() for part in parts))

    def _remember(self, mac: bytes, identity: Identity, seconds: int) -> None:
        """An LDAP bind accepted with a fresh code: the same one may come again, for a while."""
        now = self._now()
        if self._writes is None:
            self._store.remember_rebind(mac, identity.entry_id, now + seconds, now)
        else:
            self._writes.remember_rebind(mac, identity.entry_id, now + seconds, now)

    def _record_for(self, identity: Identity, typed: str, now: int) -> UserRecord | None:
        """The entry's record, with any record from before SPEC 8 under its names merged in."""
        if self._store.has_legacy:
            attached = self._store.attach(identity, (typed, identity.name), now)
            if attached is not None:
                if len(attached.merged) > 1:
                    log.warn("store.merged {summary}", summary=attached.summary())
                return attached.record
        return self._store.get(identity.entry_id)

    def issue_challenge(
        self, state: bytes, username: str, owner: Identity, client: str, seconds: float
    ) -> None:
        """Remember an Access-Challenge's State (in the store: any instance may get the
        answer) for `seconds`: its user, whose entry it is and the client asked."""
        row = ChallengeRow(
            state,
            username,
            owner.entry_id,
            owner.name,
            owner.dn,
            client,
            self._clock.seconds() + seconds,
        )
        if self._writes is None:
            self._store.remember_challenge(row, self._clock.seconds())
        else:
            self._writes.remember_challenge(row)

    def answer_state(
        self,
        state: bytes,
        raw_username: str,
        client: str,
        code: str,
        caller: Caller,
        *,
        rules: ClientRules | None = None,
        device: str | None = None,
    ) -> Deferred[LoginOutcome]:
        """Decide the answer to a challenge: a State issued (by any instance sharing the
        store), not yet answered, unexpired, for this client and this user. An accept
        names the entry and its groups (for the reply attributes); a device is
        remembered as after an appended code."""
        started = self._clock.seconds()

        def answer(challenge: ChallengeRow | None) -> LoginOutcome | Deferred[LoginOutcome]:
            if (
                challenge is None
                or challenge.client != client
                or not self.same_user(raw_username, challenge.username)
            ):
                return LoginOutcome(self.refuse(raw_username, Reason.BAD_STATE, caller))
            owner = Identity(challenge.entry_id, challenge.name, challenge.dn)
            devices: list[bytes | None] = []
            check = self._check(owner, code, rules, device, devices)
            decided = self._worker.run(self._store.update, owner.entry_id, check)
            decided.addCallback(self._audit, caller, started, challenge.username)
            return decided.addCallback(self._answered, owner, rules, devices)

        queued = self._writes.take_queued_challenge(state) if self._writes else None
        if queued is not None:
            taken: Deferred[ChallengeRow | None] = succeed(
                queued if queued.expires > started else None
            )
        else:
            taken = self._worker.run(self._store.take_challenge, state, started)
        decided: Deferred[LoginOutcome] = taken.addCallback(answer)
        decided.addErrback(self._store_down, raw_username, caller, started)
        return decided

    def _answered(
        self,
        decision: Decision,
        owner: Identity,
        rules: ClientRules | None,
        devices: list[bytes | None],
    ) -> LoginOutcome | Deferred[LoginOutcome]:
        """A challenge's answer decided: remember the device, find the groups to reply with."""
        if not decision.accepted:
            return LoginOutcome(decision)
        if rules is not None and devices and devices[0]:
            self._remember(devices[0], owner, rules.remember_seconds)
        if self.memberships is None:
            return LoginOutcome(decision, identity=owner)

        def grouped(result: BindResult) -> LoginOutcome:
            return LoginOutcome(decision, identity=owner, groups=result.groups)

        def unknown(failure: Failure) -> LoginOutcome:  # the accept stands; no group replies
            log.failure("auth.groups-after-challenge", failure)
            return LoginOutcome(decision, identity=owner)

        return self.memberships(owner).addCallbacks(grouped, unknown)

    def _store_down(
        self, failure: Failure, username: str, caller: Caller, started: float
    ) -> LoginOutcome:
        """The store could not be reached: the login is rejected, never decided without it."""
        return LoginOutcome(self._store_down_decision(failure, username, caller, started))

    def _store_down_decision(
        self, failure: Failure, username: str, caller: Caller, started: float
    ) -> Decision:
        failure.trap(StoreUnavailableError)
        if self._throttle.allow("store.unavailable"):
            log.warn(
                "store.unavailable error={error} (logins are rejected until it answers;"
                " once a minute)",
                error=failure.getErrorMessage(),
            )
        decision = rejected(normalize_username(username) or username[:64], Reason.STORE_DOWN)
        return self._audit(decision, caller, started)

    def _check(
        self,
        owner: Identity,
        code: str,
        rules: ClientRules | None,
        device: str | None,
        devices: list[bytes | None],
    ) -> Callable[[UserRecord | None], tuple[UserRecord | None, Decision]]:
        """The decision on a code given in answer to a challenge (the password was checked).
        The device's keyed hash goes to `devices`, from the record as written."""

        def decide(current: UserRecord | None) -> tuple[UserRecord | None, Decision]:
            if current is None:
                return None, rejected(owner.name, Reason.BAD_STATE)
            verdict = check_code(current, code, now=self._now(), policy=self._policy)
            devices[:] = [self._device_mac(owner, rules, device, verdict.record)]
            return verdict.record, verdict.decision

        return decide

    def refuse(self, raw_username: str, reason: Reason, caller: Caller) -> Decision:
        """Reject before any password check (malformed, unsupported, stale challenge)."""
        username = normalize_username(raw_username) or raw_username[:64]
        return self._audit(rejected(username, reason), caller, self._clock.seconds())

    @staticmethod
    def same_user(raw_username: str, username: str) -> bool:
        """Whether a name a client sent is the name `username` it sent before."""
        return normalize_username(raw_username) == username

    def _audit(
        self, decision: Decision, caller: Caller, started: float, typed: str | None = None
    ) -> Decision:
        if (
            typed is not None
            and typed != decision.username
            and decision.login is None
            and name_key(typed) != name_key(decision.username)
        ):
            decision = replace(decision, login=typed)
        if (
            self.stopping
            and decision.reason is Reason.DIRECTORY_DOWN
            and caller.protocol == "radius"
        ):
            return decision  # RADIUS has stopped: the closing directory decided nothing sent
        latency = self._clock.seconds() - started
        if debugging():
            log.debug(
                "auth.decision {protocol} {client} user={user}: {outcome} ({reason})"
                " state {before} -> {after} in {ms:.1f} ms",
                protocol=caller.protocol,
                client=caller.client,
                user=decision.username,
                outcome=decision.outcome.value,
                reason=decision.reason.value,
                before=decision.state_before.value if decision.state_before else "none",
                after=decision.state_after.value if decision.state_after else "none",
                ms=latency * 1000,
            )
        self._audit_log.record(
            decision,
            caller.protocol,
            caller.client,
            latency,
            caller.label,
            extra=caller.audit_fields(),
        )
        return decision


class _Recent:
    """A bounded map of keys to expiry times (the oldest dropped first when full)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: dict[bytes, float] = {}

    def get(self, key: bytes, default: float) -> float:
        return self._items.get(key, default)

    def put(self, key: bytes, expires: float) -> None:
        if len(self._items) >= self._limit:
            for old in list(self._items)[: self._limit // 4]:
                del self._items[old]
        self._items[key] = expires
