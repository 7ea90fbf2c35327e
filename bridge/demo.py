"""An embedded demo directory: ldaptor's in-memory LDAP server, seeded from an LDIF file.

For trying the bridge with nothing else installed (``demo:`` in the config). The directory
lives in memory only and is read-only over the wire: add, delete, modify, rename and
password-modify requests are refused with unwillingToPerform (53), and ``userPassword`` is
never returned by a search (as with slapd's usual ACLs). Simple binds check
``userPassword``, plain text or ``{SSHA}``; anonymous binds (empty DN) succeed and may
search, as with a stock slapd. Listen on loopback only: this is not a production directory.

Nothing here uses the global reactor; the caller passes one in.
"""

from __future__ import annotations

import ipaddress
import uuid
from pathlib import Path
from typing import Any, Protocol

from ldaptor import interfaces
from ldaptor.entry import BaseLDAPEntry
from ldaptor.inmemory import InMemoryLDIFProtocol
from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldaperrors, ldifprotocol
from ldaptor.protocols.ldap.ldapserver import LDAPServer
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["DemoDirectory", "demo_directory_factory", "demo_service", "load_ldif"]

log = Logger(namespace="bridge.demo")

_HIDDEN_ATTRIBUTES = frozenset({"userpassword"})


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


class _ListeningPort(Protocol):
    """What is used here of IListeningPort (what listenTCP returns)."""

    def getHost(self) -> Any: ...  # noqa: N802 - Twisted's name

    def stopListening(self) -> Deferred[None] | None: ...  # noqa: N802 - Twisted's name


class _TCPReactor(Protocol):
    """What is used here of a reactor (IReactorTCP.listenTCP)."""

    def listenTCP(  # noqa: N802 - Twisted's name
        self, port: int, factory: ServerFactory, backlog: int = 50, interface: str = ""
    ) -> _ListeningPort: ...


# --- loading the LDIF ---------------------------------------------------------------------


class _Loader(InMemoryLDIFProtocol):  # type: ignore[misc]  # ldaptor is untyped
    """ldaptor's LDIF-to-tree loader, naming the entry when one cannot be placed.

    Entries get an `entryUUID` as a real directory gives them (RFC 4530), derived from
    the DN so that it stays the same across restarts: the bridge keys records by it.
    """

    def gotEntry(self, entry: Any) -> None:  # noqa: N802 - ldaptor's name
        """Add `entryUUID` unless the LDIF sets one, then load the entry."""
        if not any(_name(name).lower() == "entryuuid" for name in entry):
            dn = entry.dn.getText().lower()
            attributes = {_name(name): list(values) for name, values in entry.items()}
            attributes["entryUUID"] = [str(uuid.uuid5(uuid.NAMESPACE_URL, "ldap:///" + dn))]
            entry = BaseLDAPEntry(dn=entry.dn, attributes=attributes)
        super().gotEntry(entry)

    def addFailed(self, reason: Failure, entry: Any) -> None:  # noqa: N802 - ldaptor's name
        """Abort the load, saying which entry failed and why."""
        dn = entry.dn.getText()
        if isinstance(reason.value, ldaperrors.LDAPNoSuchObject):
            why = (
                f"its parent {entry.dn.up().getText()!r} is not an earlier entry (the first"
                f" entry, {self.db.dn.getText()!r}, is the root of the tree, and each parent"
                " must come before its children)"
            )
        else:
            why = reason.getErrorMessage()
        raise ValueError(f"entry {dn!r}: {why}")


def _feed(loader: _Loader, data: bytes) -> bool:
    """Parse all of `data` into `loader`; False when it held nothing but comments."""
    if not data.strip():
        return False
    loader.dataReceived(data if data.endswith(b"\n") else data + b"\n")
    pending = loader.lastLine
    if loader.mode == ldifprotocol.IN_ENTRY or (pending and not pending.startswith(b"#")):
        loader.dataReceived(b"\n")  # the last entry lacks its closing blank line
    if loader.mode == ldifprotocol.HEADER:
        return False
    loader.connectionLost(connectionDone)
    return True


def load_ldif(path: Path) -> Any:
    """The in-memory root entry (an ldaptor IConnectedLDAPEntry) built from an LDIF file."""
    loader = _Loader()
    try:
        parsed = _feed(loader, path.read_bytes().replace(b"\r\n", b"\n"))
    except OSError:
        raise
    except Exception as exc:  # ldaptor's parser raises many kinds (base64, DN syntax, ...)
        raise ValueError(f"{path}: not a valid LDIF file: {exc}") from exc
    outcome: list[Any] = []
    loader.completed.addBoth(outcome.append)
    if not parsed or not outcome:  # the Deferred only fires once a first entry was seen
        raise ValueError(f"{path}: no LDIF entries in the file")
    result = outcome[0]
    if not isinstance(result, Failure):
        return result
    raise ValueError(f"{path}: {result.getErrorMessage()}") from result.value


# --- the server ---------------------------------------------------------------------------


def _name(attribute: object) -> str:
    if isinstance(attribute, bytes):
        return attribute.decode("utf-8", "replace")
    return str(attribute)


class _ReadOnlyLDAPServer(LDAPServer):  # type: ignore[misc]  # ldaptor is untyped
    """ldaptor's LDAPServer that refuses every change and never returns passwords."""

    def _refuse(self, request: Any, controls: Any, reply: Any) -> None:
        """Refuse a change: the tree stays as the LDIF file made it."""
        raise ldaperrors.LDAPUnwillingToPerform("the demo directory is read-only")

    handle_LDAPAddRequest = _refuse  # noqa: N815 - ldaptor's name
    handle_LDAPDelRequest = _refuse  # noqa: N815 - ldaptor's name
    handle_LDAPModifyRequest = _refuse  # noqa: N815 - ldaptor's name
    handle_LDAPModifyDNRequest = _refuse  # noqa: N815 - ldaptor's name

    def handle_LDAPExtendedRequest(  # noqa: N802 - ldaptor's name
        self, request: Any, controls: Any, reply: Any
    ) -> Any:
        """Refuse password changes; other extended requests go to ldaptor."""
        if request.requestName == pureldap.LDAPPasswordModifyRequest.oid:
            self._refuse(request, controls, reply)
        return super().handle_LDAPExtendedRequest(request, controls, reply)

    def handle_LDAPSearchRequest(  # noqa: N802 - ldaptor's name
        self, request: Any, controls: Any, reply: Any
    ) -> Any:
        """Search as ldaptor does, with hidden attributes left out of every entry."""

        def _filtered(response: Any) -> Any:
            if isinstance(response, pureldap.LDAPSearchResultEntry):
                response = pureldap.LDAPSearchResultEntry(
                    objectName=response.objectName,
                    attributes=[
                        (key, values)
                        for key, values in response.attributes
                        if _name(key).lower() not in _HIDDEN_ATTRIBUTES
                    ],
                )
            return reply(response)

        return super().handle_LDAPSearchRequest(request, controls, _filtered)


class _DirectoryFactory(ServerFactory):
    """Builds read-only LDAP server connections over one in-memory tree."""

    protocol = _ReadOnlyLDAPServer
    noisy = False  # no "Starting factory" lines; DemoDirectory logs demo.ready instead

    def __init__(self, root: Any) -> None:
        self.root = root

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        """The name in Twisted's own log lines ("demo-directory starting on 10389")."""
        return "demo-directory"

    def __conform__(self, interface: object) -> Any:
        """Adapt to IConnectedLDAPEntry (how ldaptor's server finds the tree)."""
        if interface is interfaces.IConnectedLDAPEntry:
            return self.root
        return None


def demo_directory_factory(root: Any) -> ServerFactory:
    """A factory for LDAP server connections that serve the in-memory tree `root`."""
    return _DirectoryFactory(root)


# --- the service --------------------------------------------------------------------------


class DemoDirectory(Service):
    """Loads the LDIF and listens on host:port while running; `.port` is the bound port."""

    def __init__(self, ldif: Path, host: str, port: int, reactor: _TCPReactor) -> None:
        self.ldif = ldif
        self.host = host
        self.requested_port = port
        self._reactor = reactor
        self._listening: _ListeningPort | None = None

    @property
    def port(self) -> int | None:
        """The TCP port listened on (useful after asking for port 0); None when stopped."""
        if self._listening is None:
            return None
        port: int = self._listening.getHost().port
        return port

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        """Load the LDIF, then listen; a bad file or a busy port raises here."""
        factory = demo_directory_factory(load_ldif(self.ldif))
        self._listening = self._reactor.listenTCP(self.requested_port, factory, interface=self.host)
        super().startService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        log.info(
            "demo.ready ldif={ldif} listen={host}:{port} (in memory, read-only)",
            ldif=str(self.ldif),
            host=self.host,
            port=self.port,
        )
        if not _is_loopback(self.host):
            log.warn(
                "demo.exposed: the demo directory listens on {host}, not loopback; its"
                " passwords are published, so keep it to 127.0.0.1 or ::1",
                host=self.host,
            )

    def stopService(self) -> Deferred[None] | None:  # noqa: N802 - Twisted's name
        """Stop listening (established connections are left to close by themselves)."""
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted: untyped
        listening, self._listening = self._listening, None
        if listening is None:
            return None
        return listening.stopListening()


def demo_service(ldif: Path, host: str, port: int, reactor: _TCPReactor) -> DemoDirectory:
    """A Service running the demo directory from `ldif` on host:port (0 = any free port)."""
    return DemoDirectory(ldif, host, port, reactor)
