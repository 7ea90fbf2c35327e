"""Values the login decision is made of: users' MFA state, outcomes and their reasons."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum


class State(StrEnum):
    """A user's MFA state (SPEC section 2); `exempt` is derived, never stored."""

    GRACE = "grace"
    PENDING = "pending"
    ACTIVE = "active"
    LOCKED = "locked"
    EXEMPT = "exempt"


class LockReason(StrEnum):
    """Why a user is locked; shown to admins, and to the user only after a correct password."""

    ENROLLMENT_EXPIRED = "enrollment-expired"
    FAILURES = "failures"
    ADMIN = "admin"


class Outcome(StrEnum):
    """What the caller is told."""

    ACCEPT = "accept"
    REJECT = "reject"
    CHALLENGE = "challenge"


class Reason(StrEnum):
    """Why a login ended as it did: for the audit log, never for an unauthenticated caller."""

    ACCEPTED = "accepted"  # password and a fresh code
    ACTIVATED = "activated"  # pending user's first code: now active
    GRACE = "grace"  # password only, inside the enrollment period
    EXEMPT = "exempt"  # exempt user or group: password only
    REBIND = "rebind"  # an app's bind again with a password+code it was just accepted with
    REMEMBERED = "remembered"  # a device accepted with a code lately: the password alone
    MFA_OFF = "mfa-off"  # a client with `mfa: off`: the password alone decides
    CHALLENGED = "challenged"  # correct password, code asked for
    EMPTY_PASSWORD = "empty-password"  # noqa: S105 - a reason, not a password
    BAD_USERNAME = "bad-username"
    UNKNOWN_USER = "unknown-user"
    BAD_PASSWORD = "bad-password"  # noqa: S105 - a reason, not a password
    DIRECTORY_DOWN = "directory-down"
    STORE_DOWN = "store-down"  # the shared database cannot be reached: fail closed
    WRONG_CODE = "wrong-code"
    REPLAY = "replay"
    CODE_REQUIRED = "code-required"  # append mode, enrolled user sent no code
    NOT_ENROLLED = "not-enrolled"  # enrollment_days 0 and no secret
    LOCKED = "locked"
    NOT_ALLOWED = "not-allowed"  # right password, not in the client's allowed_groups
    BAD_STATE = "bad-state"  # challenge State unknown, expired, reused or misbound
    UNSUPPORTED = "unsupported"  # CHAP, an EAP method not offered, no password
    EAP_ERROR = "eap-error"  # malformed EAP or TLS, a failed handshake, a conversation lost
    NO_ENTRY_ID = "no-entry-id"  # the entry lacks directory.id_attribute: fail closed
    UPGRADING = "upgrading"  # records of an earlier release are being attached: wait
    INTERNAL_ERROR = "internal-error"  # the store or the code failed: fail closed


@dataclass(frozen=True, slots=True)
class Identity:
    """The directory entry a login name resolved to: the one owner of an MFA record.

    Every name the user filter matches for one entry (uid, mail, UPN, case and space
    variants) resolves to the same `entry_id`, so they share one record (SPEC section 8).
    """

    entry_id: str  # directory.id_attribute in a stable text form: the record's key
    name: str  # directory.name_attribute: the user's name in lists, logs and the app
    dn: str


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What the bridge stores about one user; times are integer Unix seconds."""

    username: str  # the entry's name when last seen (shown; the key is `entry_id`)
    state: State
    deadline: int | None = None  # end of the password-only period; None: no such period
    failures: int = 0
    last_step: int | None = None  # newest TOTP step accepted: the replay guard
    secret: bytes | None = None  # raw TOTP key (decrypted); None before enrollment
    lock_reason: LockReason | None = None
    confirmed: bool = False  # the secret was proven by a code (or imported): unlock -> active
    created: int = 0
    updated: int = 0
    version: int = 0  # the store's row version, for compare-and-set writes
    step_key: bytes | None = field(default=None, repr=False, kw_only=True)  # whose guard
    entry_id: str = field(kw_only=True)  # the directory entry the record belongs to

    def evolve(self, **changes: object) -> UserRecord:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one login and what the adapters need to answer it."""

    outcome: Outcome
    reason: Reason
    username: str
    state_before: State | None = None
    state_after: State | None = None
    days_left: int | None = None  # set for grace-style accepts: the notice to show
    lock_reason: LockReason | None = None
    password_ok: bool = False  # only then may the caller learn state or lock
    login: str | None = None  # the name typed, when it is not the entry's name (audit)

    @property
    def accepted(self) -> bool:
        """True when the caller is let in."""
        return self.outcome is Outcome.ACCEPT
