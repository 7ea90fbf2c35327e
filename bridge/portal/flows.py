"""What the portal does, apart from HTTP: sign in, status, set up, reset.

Sign-in is an ordinary login through the shared Authenticator (append form: the code
field, when filled, follows the password), so the portal has the same state rules,
replay guard, lockout counters and audit lines as RADIUS and LDAP. Set-up and reset
change the store only at the moment a code from the new secret is entered.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from twisted.internet.defer import Deferred, succeed

from bridge.admin import describe
from bridge.audit import AuditLog
from bridge.auth import Authenticator, Caller, LoginOutcome
from bridge.core.credentials import is_code, normalize_username
from bridge.core.identity import name_key, name_keys
from bridge.core.policy import Mode, Policy, check_code
from bridge.core.selfservice import SetupResult, confirm_secret, may_set_up
from bridge.core.totp import encode_secret, new_secret, provisioning_uri
from bridge.core.types import Decision, Outcome, Reason, State, UserRecord
from bridge.portal.sessions import AttemptLimiter, Session, Sessions
from bridge.store import RecordStore
from bridge.store.worker import StoreWorker

PROOF_SECONDS = 300  # a proof of the old device is good for this long


class SignInResult(StrEnum):
    """How a sign-in ended, as far as the user may be told."""

    OK = "ok"
    CODE_REQUIRED = "code-required"  # right password, MFA is set up: the code is missing
    WRONG_CODE = "wrong-code"  # right password, wrong or used code
    LOCKED = "locked"  # right password, locked account
    NOT_ENROLLED = "not-enrolled"  # right password, the bridge requires enrollment first
    FAILED = "failed"  # anything else: nothing more is said
    LIMITED = "limited"  # too many attempts from this user or address


@dataclass(frozen=True, slots=True)
class SignIn:
    """The result of a sign-in, with the session when it succeeded."""

    result: SignInResult
    session: Session | None = None
    decision: Decision | None = None


@dataclass(frozen=True, slots=True)
class NewSecret:
    """A secret being set up: for the QR code and the key shown beneath it."""

    key: str
    uri: str


class Portal:
    """The portal's decisions over the shared Authenticator and store."""

    def __init__(
        self,
        authenticator: Authenticator,
        store: RecordStore,
        *,
        policy: Policy,
        issuer: str,
        exempt_users: frozenset[str],
        audit: AuditLog,
        clock: Callable[[], float],
        sessions: Sessions,
        per_user: AttemptLimiter,
        per_address: AttemptLimiter,
        worker: StoreWorker | None = None,
    ) -> None:
        self._auth = authenticator
        self._store = store
        # Where store calls run: sessions and records are read and written there (off
        # the reactor for PostgreSQL); limits and audit lines stay on the reactor.
        self._worker = worker or StoreWorker(None, threaded=False)
        self._policy = policy
        self._issuer = issuer
        self._exempt = name_keys(exempt_users)
        self._audit = audit
        self._clock = clock
        self.sessions = sessions
        self._per_user = per_user  # counts failures only: nobody can block a user's sign-in
        self._per_address = per_address  # counts every attempt

    def reconfigure(self, policy: Policy, issuer: str, exempt_users: tuple[str, ...]) -> None:
        """New MFA rules, issuer name and exempt users (SIGHUP)."""
        self._policy = policy
        self._issuer = issuer
        self._exempt = name_keys(exempt_users)

    def _now(self) -> int:
        return int(self._clock())

    def _allowed(self, username: str | None, client: str) -> bool:
        """Under both limits (an attempt from `client` is counted here)."""
        if not self._per_address.allow(client):
            return False
        return not self._over(username)

    def _over(self, username: str | None) -> bool:
        """Whether the per-user limit is reached (users counted by their name's key)."""
        key = name_key(username) if username is not None else None
        return key is not None and self._per_user.exceeded(key)

    def _failed(self, username: str | None) -> None:
        key = name_key(username) if username is not None else None
        if key is not None:
            self._per_user.count(key)

    def sign_in(self, raw_username: str, password: str, code: str, client: str) -> Deferred[SignIn]:
        """Check the password (and the code, when given) exactly as a login.

        Without a code the password is the whole field (an enrolled user is then asked
        for the code); a code is appended only for a user who has a secret, so the
        directory never sees a code as part of a password.
        """
        username = normalize_username(raw_username)
        if not self._allowed(username, client):
            return succeed(SignIn(SignInResult.LIMITED))
        code = code.strip()
        if code and not is_code(code, self._policy.totp.digits):
            self._failed(username)
            return succeed(SignIn(SignInResult.WRONG_CODE))
        caller = Caller("portal", client, client_address=client)
        if code:  # the code is used only if the entry has a secret (see plan_given)
            d = self._auth.login_outcome(raw_username, password, Mode.APPEND, caller, code=code)
        else:
            d = self._auth.login_outcome(raw_username, password, Mode.CHALLENGE, caller)
        return d.addCallback(self._signed_in, username)

    def _signed_in(self, outcome: LoginOutcome, username: str | None) -> SignIn | Deferred[SignIn]:
        decision = outcome.decision
        # Failures count against the name typed and against the person, whichever of
        # their names it was: once over, a right password gets no further under any name.
        # A wrong one is answered as any failure is, so the limit tells a caller nothing.
        if decision.password_ok and self._over(decision.username):
            return SignIn(SignInResult.LIMITED)
        if decision.accepted and outcome.identity is not None:
            exempt = decision.state_after is State.EXEMPT
            started = self._worker.run(self.sessions.start, outcome.identity, exempt)
            return started.addCallback(lambda session: SignIn(SignInResult.OK, session, decision))
        if decision.outcome is not Outcome.CHALLENGE:
            self._failed(username)
            if name_key(decision.username) != name_key(username or ""):
                self._failed(decision.username)  # the entry's name, when another was typed
        if not decision.password_ok:
            return SignIn(SignInResult.FAILED)
        if decision.reason is Reason.LOCKED or decision.lock_reason is not None:
            return SignIn(SignInResult.LOCKED, decision=decision)
        results = {
            Reason.CHALLENGED: SignInResult.CODE_REQUIRED,
            Reason.CODE_REQUIRED: SignInResult.CODE_REQUIRED,
            Reason.WRONG_CODE: SignInResult.WRONG_CODE,
            Reason.REPLAY: SignInResult.WRONG_CODE,
            Reason.NOT_ENROLLED: SignInResult.NOT_ENROLLED,
        }
        return SignIn(results.get(decision.reason, SignInResult.FAILED), decision=decision)

    def form_token(self, nonce: bytes, client: str) -> str:
        """The sign-in form's CSRF token for a cookie's nonce and a client address: a MAC
        under the store's key, so it holds across restarts and instances sharing the store."""
        return self._store.mac(b"csrf", nonce, client.encode()).hex()

    def session(self, session_id: str | None) -> Deferred[Session | None]:
        """The live session with this id (its idle timer restarted), or None."""
        return self._worker.run(self.sessions.get, session_id)

    def sign_out(self, session: Session) -> Deferred[None]:
        """End the session (an unfinished set-up is forgotten with it)."""
        return self._worker.run(self.sessions.end, session.id)

    def status(self, session: Session) -> Deferred[dict[str, Any]]:
        """State, deadline and days left of the signed-in user, as they stand now."""
        return self._worker.run(self._status, session)

    def _status(self, session: Session) -> dict[str, Any]:
        record = self._store.get(session.owner.entry_id)
        exempt = session.exempt or name_key(session.username) in self._exempt
        view = describe(record, session.username, self._now(), exempt=exempt)
        if record is None and not exempt:
            view["state"] = State.GRACE.value  # never stored: enrollment_days is 0
        return view

    def _proven(self, session: Session, record: UserRecord | None) -> bool:
        """The session proved, within PROOF_SECONDS, the secret the user has now."""
        if session.proven_for is None or record is None or record.secret is None:
            return False
        if self._clock() - session.proven_at >= PROOF_SECONDS:
            return False
        return hmac.compare_digest(session.proven_for, _digest(record.secret))

    def new_secret(self, session: Session) -> Deferred[NewSecret | SetupResult]:
        """The secret to set up (the same one until confirmed or signed out), or why not."""
        return self._worker.run(self._new_secret, session)

    def _new_secret(self, session: Session) -> NewSecret | SetupResult:
        record = self._store.get(session.owner.entry_id)
        allowed = may_set_up(record, self._now(), old_device_proven=self._proven(session, record))
        if allowed is not SetupResult.CONFIRMED:
            if session.new_secret is not None:
                session.new_secret = None
                self.sessions.save(session)
            return allowed
        if session.new_secret is None:
            session.new_secret = new_secret()
            self.sessions.save(session)
        uri = provisioning_uri(
            session.new_secret, session.username, self._issuer, self._policy.totp
        )
        return NewSecret(encode_secret(session.new_secret), uri)

    def confirm(self, session: Session, code: str, client: str) -> Deferred[SetupResult | None]:
        """The first code of the new secret; None when over the attempt limit."""
        secret = session.new_secret
        if secret is None:
            return succeed(SetupResult.WRONG_CODE)
        if not self._allowed(session.username, client):
            return succeed(None)
        code = code.strip()
        if not is_code(code, self._policy.totp.digits):
            self._failed(session.username)
            return succeed(SetupResult.WRONG_CODE)
        now = self._now()

        def change(record: UserRecord | None) -> tuple[UserRecord | None, tuple[Any, ...]]:
            after, result = confirm_secret(
                record,
                session.owner,
                secret,
                code,
                now=now,
                policy=self._policy,
                old_device_proven=self._proven(session, record),
            )
            return after, (result, record.state if record else None)

        def write() -> tuple[Any, ...]:
            result, before = self._store.update(session.owner.entry_id, change)
            if result is not SetupResult.WRONG_CODE:  # this secret and any proof are spent
                session.new_secret = None
                session.proven_for = None
                self.sessions.save(session)
            return result, before

        def decided(written: tuple[Any, ...]) -> SetupResult:
            result: SetupResult
            before: State | None
            result, before = written
            confirmed = result is SetupResult.CONFIRMED
            if result is SetupResult.WRONG_CODE:
                self._failed(session.username)
            rejected = _SETUP_REJECT.get(result, (Outcome.REJECT, Reason.WRONG_CODE))
            outcome, reason = (Outcome.ACCEPT, Reason.ACTIVATED) if confirmed else rejected
            after = State.ACTIVE if confirmed else before
            self._record(Decision(outcome, reason, session.username, before, after), client)
            return result

        return self._worker.run(write).addCallback(decided)

    def prove_device(self, session: Session, code: str, client: str) -> Deferred[Decision | None]:
        """A code from the current app before a reset; None when over the attempt limit.

        Decided as a login's code: a wrong or replayed one counts towards the lock. The
        proof holds for PROOF_SECONDS, and only for the secret it was made with.
        """
        if not self._allowed(session.username, client):
            return succeed(None)
        code = code.strip()
        if not is_code(code, self._policy.totp.digits):
            self._failed(session.username)
            return succeed(Decision(Outcome.REJECT, Reason.WRONG_CODE, session.username))
        now = self._now()

        def change(record: UserRecord | None) -> tuple[UserRecord | None, tuple[Any, ...]]:
            if record is None or record.secret is None:
                refused = Decision(Outcome.REJECT, Reason.NOT_ENROLLED, session.username)
                return record, (refused, None)
            verdict = check_code(record, code, now=now, policy=self._policy)
            return verdict.record, (verdict.decision, record.secret)

        def write() -> Decision:
            decision: Decision
            secret: bytes | None
            decision, secret = self._store.update(session.owner.entry_id, change)
            if decision.accepted and secret is not None:
                session.proven_for, session.proven_at = _digest(secret), self._clock()
                self.sessions.save(session)
            return decision

        def decided(decision: Decision) -> Decision:
            if not decision.accepted:
                self._failed(session.username)
            self._record(decision, client)
            return decision

        return self._worker.run(write).addCallback(decided)

    def _record(self, decision: Decision, client: str) -> None:
        self._audit.record(decision, "portal", client, 0.0, extra={"client_address": client})


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


_SETUP_REJECT = {
    SetupResult.WRONG_CODE: (Outcome.REJECT, Reason.WRONG_CODE),
    SetupResult.LOCKED: (Outcome.REJECT, Reason.LOCKED),
    SetupResult.PROOF_REQUIRED: (Outcome.REJECT, Reason.CODE_REQUIRED),
}
