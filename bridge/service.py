"""Wire the parts into one Twisted service tree: store, directory, listeners."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from twisted.application.internet import SSLServer, TCPServer, UDPServer
from twisted.application.service import MultiService, Service
from twisted.logger import Logger

from bridge.audit import open_audit
from bridge.auth import Authenticator
from bridge.config import Config, ConfigError, PortalConfig
from bridge.core.policy import Policy
from bridge.core.totp import TotpParams
from bridge.directory import BindStatus, Directory
from bridge.ldap_proxy.login import LdapLogin
from bridge.ldap_proxy.server import LdapProxyFactory, Settings
from bridge.ldap_proxy.tls import TlsSetupError, server_tls_options
from bridge.ldap_proxy.upstream import Opener
from bridge.portal.flows import Portal
from bridge.portal.sessions import AttemptLimiter, Sessions
from bridge.portal.web import make_site
from bridge.radius.server import RadiusProtocol
from bridge.store import SqliteStore
from bridge.store.batching import WriteBatcher

log = Logger(namespace="bridge.service")


def policy_from(config: Config) -> Policy:
    """The state machine's settings from the `mfa` section."""
    mfa = config.mfa
    return Policy(
        enrollment_days=mfa.enrollment_days,
        max_failures=mfa.max_failures,
        totp=TotpParams(digits=6, step=mfa.step, window=mfa.window),
    )


def open_store(config: Config) -> SqliteStore:
    """The store named by the `store` section (created on first use)."""
    return SqliteStore.open(config.store.path, config.store.key_file)


class DirectoryService(Service):
    """Runs the directory's thread pool, and says at start-up whether a server answers."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        """Start the workers and probe the servers once."""
        Service.startService(self)
        self.directory.start()
        self.directory.probe().addCallback(self._probed)

    def _probed(self, result: Any) -> None:
        if result.status is BindStatus.OK:
            log.info("directory.ready server={server}", server=result.server)
        else:
            log.error(
                "directory.unavailable: no server answered; logins are rejected until one does"
            )

    def stopService(self) -> None:  # noqa: N802
        """Stop the workers and close connections."""
        Service.stopService(self)
        self.directory.stop()


class ClosingService(Service):
    """Closes a file (the audit log) when the daemon stops."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def stopService(self) -> None:  # noqa: N802
        """Close the file."""
        Service.stopService(self)
        self.stream.close()


class StoreService(Service):
    """Commits queued writes and closes the store when the daemon stops."""

    def __init__(self, store: SqliteStore, writes: WriteBatcher) -> None:
        self.store = store
        self.writes = writes

    def stopService(self) -> None:  # noqa: N802
        """Commit what is queued, then close the database."""
        Service.stopService(self)
        self.writes.flush()
        self.store.close()


def make_service(config: Config, reactor: Any, stdout: TextIO = sys.stdout) -> MultiService:
    """The whole daemon as a MultiService; children start in the order they are added."""
    top = MultiService()
    try:
        public_url = config.portal.public_url if config.portal is not None else None
        audit, audit_file = open_audit(config.log.audit, stdout, public_url)
    except OSError as exc:
        raise ConfigError([f"log.audit: cannot open {config.log.audit}: {exc.strerror}"]) from exc
    if audit_file is not None:
        top.addService(ClosingService(audit_file))
    if config.demo is not None:
        from bridge.demo import demo_service  # noqa: PLC0415 - only the demo needs ldaptor's server

        demo = config.demo
        top.addService(demo_service(demo.ldif, demo.listen_host, demo.listen_port, reactor))
    store = open_store(config)
    writes = WriteBatcher(store, reactor)
    top.addService(StoreService(store, writes))
    directory = Directory(config.directory, config.mfa.exempt_groups, reactor)
    top.addService(DirectoryService(directory))
    authenticator = Authenticator(
        store,
        directory.authenticate,
        policy_from(config),
        frozenset(config.mfa.exempt_users),
        reactor,
        audit=audit,
        writes=writes,
    )
    radius = RadiusProtocol(config.radius, authenticator, reactor, setup_url=public_url)
    udp = UDPServer(
        config.radius.listen_port, radius, interface=config.radius.listen_host, reactor=reactor
    )
    top.addService(udp)
    top.radius = radius  # type: ignore[attr-defined]
    if config.ldap_proxy is not None:
        top.addService(ldap_proxy_service(config, LdapLogin(authenticator), reactor))
    if config.portal is not None:
        portal = Portal(
            authenticator,
            store,
            policy=policy_from(config),
            issuer=config.mfa.issuer,
            exempt_users=frozenset(config.mfa.exempt_users),
            audit=audit,
            clock=reactor.seconds,
            sessions=Sessions(
                reactor.seconds, config.portal.session_idle, config.portal.session_max
            ),
            per_user=AttemptLimiter(
                reactor.seconds, config.portal.max_attempts_per_user, config.portal.attempt_window
            ),
            per_address=AttemptLimiter(
                reactor.seconds,
                config.portal.max_attempts_per_address,
                config.portal.attempt_window,
            ),
        )
        top.addService(portal_service(config.portal, portal, reactor))
    return top


def portal_service(config: PortalConfig, portal: Portal, reactor: Any) -> Service:
    """The portal's listener: HTTPS with `portal.tls`, else HTTP (loopback, or allowed)."""
    secure = config.tls is not None or (config.public_url or "").startswith("https://")
    site = make_site(portal, secure=secure)
    if config.tls is None:
        return TCPServer(config.listen_port, site, interface=config.listen_host, reactor=reactor)
    try:
        options = server_tls_options(config.tls)
    except TlsSetupError as exc:
        raise ConfigError([f"portal.tls: {exc}"]) from exc
    return SSLServer(
        config.listen_port, site, options, interface=config.listen_host, reactor=reactor
    )


def ldap_proxy_service(config: Config, login: LdapLogin, reactor: Any) -> MultiService:
    """The LDAP bind proxy's listeners (SPEC section 6): plain TCP, and LDAPS if configured.

    Both share one factory, so the connection limits count both. A certificate or key
    that cannot be used is a config error: the daemon does not start.
    """
    proxy = config.ldap_proxy
    assert proxy is not None  # only called when the section is present
    try:
        settings = Settings.from_config(proxy, config.directory)
    except TlsSetupError as exc:
        raise ConfigError([f"ldap_proxy.tls: {exc}"]) from exc
    factory = LdapProxyFactory(settings, login, Opener(config.directory, reactor), reactor)
    listeners = MultiService()
    plain = TCPServer(proxy.listen_port, factory, interface=proxy.listen_host, reactor=reactor)
    plain.setServiceParent(listeners)
    if proxy.listen_tls is not None and settings.tls is not None:
        host, port = proxy.listen_tls
        ldaps = SSLServer(port, factory, settings.tls, interface=host, reactor=reactor)
        ldaps.setServiceParent(listeners)
    return listeners
