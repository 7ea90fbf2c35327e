"""The LDAP proxy's way into the shared login decision.

The password part (the field minus the code when a code was used, the whole field for
grace and exempt users) is checked by a bind the proxy makes itself, on the upstream
connection the session then keeps: the login's one bind is also the session's identity.
The Authenticator says which DN that bind was for (`login_outcome`).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from bridge.auth import Authenticator, Caller, ClientRules, LoginOutcome, Rebind
from bridge.core.policy import Mode
from bridge.core.types import Decision, Reason
from bridge.directory import Binder

LoginResult = LoginOutcome


class LdapLogin:
    """`Authenticator.login_outcome` in append mode: the proxy's one way to decide a bind."""

    def __init__(
        self,
        authenticator: Authenticator,
        rebind_seconds: int = 0,
        rules: ClientRules | None = None,
    ) -> None:
        self._authenticator = authenticator
        self.rebind_seconds = rebind_seconds  # ldap_proxy.rebind_seconds (0: off)
        self.rules = rules  # ldap_proxy.allowed_groups, as a RADIUS client's (SPEC 11)

    def __call__(
        self, username: str, field: str, caller: Caller, bind: Binder
    ) -> Deferred[LoginResult]:
        """Decide the login, the password checked by `bind`; the result says the DN.

        An app may bind again with the password+code it was accepted with, from the same
        address, for rebind_seconds (SPEC 6): the password is still bound each time.
        """
        rebind = Rebind(caller.client, self.rebind_seconds) if self.rebind_seconds else None
        return self._authenticator.login_outcome(
            username, field, Mode.APPEND, caller, bind, rebind=rebind, rules=self.rules
        )

    def refuse(self, raw_username: str, reason: Reason, caller: Caller) -> Decision:
        """Audit a bind refused before any password check (a DN that names no user)."""
        return self._authenticator.refuse(raw_username, reason, caller)
