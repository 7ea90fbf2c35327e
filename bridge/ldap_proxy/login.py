"""What the LDAP proxy needs from a login beyond the Decision: the password and the DN.

After an accepted login the proxy binds upstream as the user for the rest of the
session, with the password *part* (the field minus the code when a code was used, the
whole field for grace and exempt users) and the DN the directory search found; the
Authenticator says both (`login_outcome`).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from bridge.auth import Authenticator, Caller, LoginOutcome
from bridge.core.policy import Mode
from bridge.core.types import Decision, Reason

LoginResult = LoginOutcome


class LdapLogin:
    """`Authenticator.login_outcome` in append mode: the proxy's one way to decide a bind."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def __call__(self, username: str, field: str, caller: Caller) -> Deferred[LoginResult]:
        """Decide the login; an accepted result carries the password part and the DN."""
        return self._authenticator.login_outcome(username, field, Mode.APPEND, caller)

    def refuse(self, raw_username: str, reason: Reason, caller: Caller) -> Decision:
        """Audit a bind refused before any password check (a DN that names no user)."""
        return self._authenticator.refuse(raw_username, reason, caller)
