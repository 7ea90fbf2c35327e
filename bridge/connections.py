"""Open connections of a listener, counted in all and per client address, against limits.

The LDAP proxy's factory and the portal's site each keep one: a connection beyond either
limit is refused (the factory builds no protocol, so Twisted closes it at once), which a
client sees as "busy", never as a wrong password.
"""

from __future__ import annotations

from collections.abc import Callable


class ConnectionCounter:
    """How many connections are open, in all and by address; how many were refused."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open_total = 0
        self.open_by_address: dict[str, int] = {}
        self.refused = 0

    def admit(self, host: str, *, shared: bool = False) -> tuple[str | None, Callable[[], None]]:
        """(why it is refused, or None) and, when admitted, the call that frees its place.

        `shared`: the address speaks for many clients (a trusted reverse proxy), so only
        the total limit applies to it.
        """
        if self.open_total >= self.total:
            reason: str | None = "max-connections"
        elif not shared and self.open_by_address.get(host, 0) >= self.per_address:
            reason = "max-connections-per-address"
        else:
            reason = None
        if reason is not None:
            self.refused += 1
            return reason, _nothing
        self.open_total += 1
        self.open_by_address[host] = self.open_by_address.get(host, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.open_total -= 1
            left = self.open_by_address.get(host, 1) - 1
            if left > 0:
                self.open_by_address[host] = left
            else:
                self.open_by_address.pop(host, None)

        return None, release


def _nothing() -> None:
    return None
