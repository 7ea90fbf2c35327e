"""Wire the parts into one Twisted service tree: store, directory, listeners."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from twisted.application.internet import SSLServer, TCPServer, UDPServer
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from bridge.audit import AuditLog, open_audit
from bridge.auth import Authenticator, ClientRules
from bridge.certificates import TlsSetupError
from bridge.config import (
    Config,
    ConfigError,
    EapConfig,
    LdapProxyConfig,
    PortalConfig,
    RadiusConfig,
    load_config,
)
from bridge.core.policy import Policy
from bridge.core.totp import TotpParams
from bridge.directory import BindStatus, Directory
from bridge.ldap_proxy.login import LdapLogin
from bridge.ldap_proxy.server import LdapProxyFactory, Settings
from bridge.ldap_proxy.tls import server_tls_options
from bridge.ldap_proxy.upstream import Opener
from bridge.logs import set_level
from bridge.metrics import Metrics, metrics_site
from bridge.portal.flows import Portal
from bridge.portal.sessions import AttemptLimiter, Sessions
from bridge.portal.web import Limits, make_site
from bridge.radius.eap import EapResponder, eap_context
from bridge.radius.replies import Replies, compile_replies
from bridge.radius.server import RadiusProtocol
from bridge.store import RecordStore, reactor_link
from bridge.store import open_store as open_configured_store
from bridge.store.batching import StoreBatcher
from bridge.store.worker import StoreWorker
from bridge.upgrade import Upgrade
from bridge.workers import Workers, family_of

log = Logger(namespace="bridge.service")


def policy_from(config: Config) -> Policy:
    """The state machine's settings from the `mfa` section."""
    mfa = config.mfa
    return Policy(
        enrollment_days=mfa.enrollment_days,
        max_failures=mfa.max_failures,
        totp=TotpParams(digits=6, step=mfa.step, window=mfa.window),
    )


def open_store(config: Config) -> RecordStore:
    """The store named by the `store` section (created on first use)."""
    return open_configured_store(config.store, config.directory.id_attribute)


PROBE_RETRY_SECONDS = 5.0


class DirectoryService(Service):
    """Runs the directory's thread pool, and probes the servers until one has answered.

    `reached` fires once a server has answered (systemd's READY waits for it); while none
    does, logins are rejected and the probe is repeated every few seconds.
    """

    def __init__(self, directory: Directory, clock: Any) -> None:
        self.directory = directory
        self._clock = clock
        self.reached: Deferred[str] = Deferred()
        self._retry: Any = None
        self._failed_once = False

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        """Start the workers and probe the servers."""
        Service.startService(self)
        self.directory.start()
        self._probe()

    def _probe(self) -> None:
        self._retry = None
        if self.running:
            self.directory.probe().addCallback(self._probed)

    def _probed(self, result: Any) -> None:
        if result.status is BindStatus.OK:
            log.info("directory.ready server={server}", server=result.server)
            if not self.reached.called:
                self.reached.callback(result.server)
            return
        if not self._failed_once:
            self._failed_once = True
            log.error(
                "directory.unavailable: no server answered; logins are rejected until one"
                " does (trying again every {seconds:g} s)",
                seconds=PROBE_RETRY_SECONDS,
            )
        if self.running:
            self._retry = self._clock.callLater(PROBE_RETRY_SECONDS, self._probe)

    def stopService(self) -> None:  # noqa: N802
        """Stop the workers and close connections."""
        Service.stopService(self)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self.directory.stop()


class ClosingService(Service):
    """Closes the audit file when the daemon stops."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def stopService(self) -> None:  # noqa: N802
        """Close the file."""
        Service.stopService(self)
        self.audit.close()


class StoreService(Service):
    """Commits queued writes and closes the store when the daemon stops."""

    def __init__(
        self,
        store: RecordStore,
        writes: StoreBatcher,
        worker: StoreWorker,
        link: Any = None,  # link.StatementLink: imported with psycopg, only when used
    ) -> None:
        self.store = store
        self.writes = writes
        self.worker = worker
        self.link = link

    def stopService(self) -> Deferred[None]:  # noqa: N802
        """Commit what is queued, then close the database."""
        Service.stopService(self)

        def close(result: object) -> None:
            if self.link is not None:
                self.link.close()
            self.worker.stop()
            self.store.close()
            if isinstance(result, Failure):
                log.failure("store.close", result)

        return self.writes.flush().addBoth(close)


class OrderedService(MultiService):
    """Stops its children one after another, the last added first, each once the one
    before it has stopped: listeners drain before the directory and the store close."""

    def __init__(self) -> None:
        MultiService.__init__(self)

    def addService(self, service: IService) -> None:  # noqa: N802 - Twisted's name
        """Add a child (typed here: Twisted's own is not)."""
        MultiService.addService(self, service)

    def startService(self) -> None:  # noqa: N802
        """Start the children in the order they were added."""
        MultiService.startService(self)

    def stopService(self) -> Deferred[None]:  # noqa: N802 - Twisted's name
        """Stop each child in turn; one that fails is logged and the next still stops."""
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_in_turn())

    async def _stop_in_turn(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("service.stop-failed child={child}", child=type(child).__name__)


class OnStop(Service):
    """Runs `action` when the daemon stops, at its place in the order."""

    def __init__(self, action: Callable[[], None]) -> None:
        self._action = action

    def stopService(self) -> None:  # noqa: N802
        """Do it."""
        Service.stopService(self)
        self._action()


class RadiusListener(UDPServer):
    """The RADIUS port; at shutdown it drains (answers the logins in flight) first.

    With `adopt`, a socket already bound (a worker's, see bridge/workers.py) is used.
    """

    def __init__(
        self,
        config: RadiusConfig,
        protocol: RadiusProtocol,
        reactor: Any,
        drain_seconds: float,
        adopt: int | None = None,
    ) -> None:
        UDPServer.__init__(
            self, config.listen_port, protocol, interface=config.listen_host, reactor=reactor
        )
        self._protocol = protocol
        self._reactor = reactor
        self._drain_seconds = drain_seconds
        self._adopt = adopt
        self._family = family_of(config.listen_host)

    def _getPort(self) -> Any:  # noqa: N802 - Twisted's name
        if self._adopt is None:
            return UDPServer._getPort(self)
        return self._reactor.adoptDatagramPort(self._adopt, self._family, self._protocol)

    def stopService(self) -> Deferred[None]:  # noqa: N802
        """Take no new request, answer those in flight (for at most drain_seconds), close."""
        drained = self._protocol.drain()
        drained.addTimeout(self._drain_seconds, self._reactor, onTimeoutCancel=lambda *_: None)
        return drained.addCallback(lambda _: UDPServer.stopService(self))


class AdoptedTcp(TCPServer):
    """A TCP listener on a socket already bound (a worker's); `tls` wraps it for LDAPS."""

    def __init__(self, descriptor: int, host: str, factory: Any, reactor: Any, tls: Any) -> None:
        TCPServer.__init__(self, 0, factory, reactor=reactor)
        self._descriptor = descriptor
        self._family = family_of(host)
        self._factory = factory if tls is None else TLSMemoryBIOFactory(tls, False, factory)
        self._reactor = reactor

    def _getPort(self) -> Any:  # noqa: N802 - Twisted's name
        return self._reactor.adoptStreamPort(self._descriptor, self._family, self._factory)


class Daemon:
    """The whole daemon: its service tree (`service`), and the parts a reload reconfigures.

    `number` 0 is the main process; a worker (1 and up, see bridge/workers.py) answers
    RADIUS and the LDAP proxy on the sockets it was handed (`adopt`, by listener name)
    and leaves the demo directory, the portal, the metrics page and upgrades to the main.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        stdout: TextIO,
        *,
        adopt: Mapping[str, int] | None = None,
        number: int = 0,
    ) -> None:
        self.service = OrderedService()  # children start in the order added, stop in reverse
        self.started_with = config  # what a reload compares with for restart-only settings
        self.number = number
        self.workers: Workers | None = None  # the main's, when server.workers > 1
        adopt = adopt or {}
        public_url = config.portal.public_url if config.portal is not None else None
        try:
            self.audit = open_audit(config.log.audit, stdout, public_url)
        except OSError as exc:
            problem = f"log.audit: cannot open {config.log.audit}: {exc.strerror}"
            raise ConfigError([problem]) from exc
        if self.audit.path is not None:
            self.service.addService(ClosingService(self.audit))
        if config.demo is not None and number == 0:
            from bridge.demo import demo_service  # noqa: PLC0415 - only the demo needs it

            demo = config.demo
            self.service.addService(
                demo_service(demo.ldif, demo.listen_host, demo.listen_port, reactor)
            )
        self.store = open_store(config)
        self.store_worker = worker = StoreWorker(reactor, threaded=self.store.remote)
        link = reactor_link(self.store, reactor, worker)
        writes = StoreBatcher(self.store, reactor, worker, link)
        self.service.addService(StoreService(self.store, writes, worker, link))
        replies = compile_replies(config.radius)
        self.directory = Directory(
            config.directory, config.mfa.exempt_groups, reactor, groups=groups_of(config, replies)
        )
        self.directory_service = DirectoryService(self.directory, reactor)
        self.service.addService(self.directory_service)
        # Stopped after the listeners, before the directory closes under what is left.
        self.service.addService(OnStop(lambda: setattr(self.authenticator, "stopping", True)))
        self.authenticator = Authenticator(
            self.store,
            self.directory.authenticate,
            policy_from(config),
            frozenset(config.mfa.exempt_users),
            reactor,
            audit=self.audit,
            writes=writes,
            worker=worker,
        )
        writes.logins_in_flight = lambda: self.authenticator.in_flight
        if self.store.has_legacy:  # records of an earlier release: attach them first
            self.authenticator.upgrading = True
            if number == 0:  # the main upgrades, and starts its workers after
                upgrade = Upgrade(self.store, self.directory, reactor, self._upgraded)
                self.directory_service.reached.addCallback(_then, upgrade.start)
        if self.directory.has_groups:
            self.authenticator.memberships = self.directory.memberships_of
        self.radius = RadiusProtocol(
            config.radius,
            self.authenticator,
            reactor,
            setup_url=public_url,
            eap=self._eap(config.radius.eap, reactor),
            replies=replies,
        )
        # The longest a login waits: a search and a bind at each server, in turn.
        drain_seconds = 2 * config.directory.timeout * len(config.directory.urls) + 1.0
        self.drain_seconds = drain_seconds
        self.service.addService(
            RadiusListener(
                config.radius, self.radius, reactor, drain_seconds, adopt=adopt.get("radius")
            )
        )
        if config.ldap_proxy is not None:
            self.service.addService(
                ldap_proxy_service(
                    config,
                    LdapLogin(
                        self.authenticator,
                        config.ldap_proxy.rebind_seconds,
                        ldap_rules(config.ldap_proxy),
                    ),
                    reactor,
                    adopt,
                )
            )
        self.metrics = self._metrics(config, reactor)
        self.portal: Portal | None = None
        if config.portal is not None and number == 0:
            self.portal = make_portal(
                config, self.authenticator, self.store, self.audit, reactor, worker
            )
            self.service.addService(portal_service(config.portal, self.portal, reactor))

    def _metrics(self, config: Config, reactor: Any) -> Metrics | None:
        """The counters (`metrics.listen`); the main process serves the page."""
        if config.metrics is None:
            return None
        metrics = Metrics()
        self.audit.observers.append(metrics.decision)
        self.directory.on_latency = metrics.directory_seconds.observe
        self.directory.on_failover = lambda url: metrics.directory_failovers.labels(url).inc()
        metrics.watch_radius(self.radius.counters)
        if self.radius.eap is not None:
            metrics.watch_eap(self.radius.eap.counters, self.radius.eap.conversation_counters)
        if self.number == 0:
            metrics.watch_store(self.store, reactor.seconds, self.store_worker)
            listen = config.metrics
            self.service.addService(
                TCPServer(
                    listen.listen_port,
                    metrics_site(metrics),
                    interface=listen.listen_host,
                    reactor=reactor,
                )
            )
        return metrics

    def _eap(self, config: EapConfig | None, reactor: Any) -> EapResponder | None:
        """EAP for Wi-Fi when `radius.eap` is configured; a bad certificate stops the start."""
        if config is None:
            return None
        try:
            return EapResponder(eap_context(config), self.authenticator, reactor)
        except TlsSetupError as exc:
            raise ConfigError([f"radius.eap: {exc}"]) from exc

    def _upgraded(self) -> None:
        self.authenticator.upgrading = False
        if self.workers is not None:
            self.workers.release()

    def add_workers(self, workers: Workers) -> None:
        """The main process's workers: started with it (after an upgrade, if one runs),
        stopped before its own listeners, their counters added to its metrics."""
        self.workers = workers
        if self.authenticator.upgrading:
            workers.held = True
        self.service.addService(workers)
        if self.metrics is not None:
            self.metrics.add_workers(workers.counters)

    def reload(self, new: Config, replies: Replies | None = None) -> list[str]:
        """Apply what can change while running; returns the changed settings that cannot.

        RADIUS clients, secrets, mode and timings, the MFA rules and exemptions, the
        portal's URL in messages and the log level take effect for the next request;
        logins in flight finish with the settings they started with.
        """
        started = self.started_with
        # The TOTP step numbers the replay guard remembers: never changed under it.
        policy = policy_from(replace(new, mfa=replace(new.mfa, step=started.mfa.step)))
        public_url = new.portal.public_url if new.portal is not None else None
        replies = replies if replies is not None else compile_replies(new.radius)
        self.radius.reconfigure(new.radius, setup_url=public_url, replies=replies)
        if new.radius.eap is not None and self.radius.eap is not None:
            try:  # a renewed certificate, for the tunnels that start from now on
                self.radius.eap.use(eap_context(new.radius.eap))
            except TlsSetupError as exc:
                log.warn("reload.eap-certificate: {error}; the current one stays", error=exc)
        self.authenticator.reconfigure(policy, frozenset(new.mfa.exempt_users))
        self.directory.set_groups(new.mfa.exempt_groups, groups_of(new, replies))
        self.authenticator.memberships = (
            self.directory.memberships_of if self.directory.has_groups else None
        )
        self.audit.setup_url = public_url
        self.audit.reopen()  # logrotate moves the file and sends SIGHUP
        if self.portal is not None:
            self.portal.reconfigure(policy, new.mfa.issuer, new.mfa.exempt_users)
        return restart_needed(started, new)


def _then(result: Any, action: Callable[[], None]) -> Any:
    """A Deferred callback that does `action` and passes the result on unchanged."""
    action()
    return result


def restart_needed(old: Config, new: Config) -> list[str]:
    """The settings that differ between `old` and `new` and only a restart applies."""
    changed = []
    if (old.radius.listen_host, old.radius.listen_port) != (
        new.radius.listen_host,
        new.radius.listen_port,
    ):
        changed.append("radius.listen")
    for section in ("server", "directory", "store", "ldap_proxy", "metrics", "demo"):
        if getattr(old, section) != getattr(new, section):
            changed.append(section)
    if _but_the_url(old.portal) != _but_the_url(new.portal):
        changed.append("portal")
    if old.log.audit != new.log.audit:
        changed.append("log.audit")
    if old.log.format != new.log.format:
        changed.append("log.format")
    if old.mfa.step != new.mfa.step:
        changed.append("mfa.step")
    if (old.radius.eap is None) != (new.radius.eap is None):
        changed.append("radius.eap")
    return changed


def groups_of(config: Config, replies: Replies) -> tuple[str, ...]:
    """The groups a login looks up besides the exempt ones: the clients' allowed groups
    and the reply rules' (SPEC 11); one lookup per user serves them all."""
    allowed = [dn for client in config.radius.clients for dn in client.allowed_groups]
    if config.ldap_proxy is not None:
        allowed += config.ldap_proxy.allowed_groups
    return tuple(dict.fromkeys((*allowed, *replies.groups)))


def ldap_rules(proxy: LdapProxyConfig) -> ClientRules | None:
    """The LDAP proxy's allowed groups (SPEC 11), as a RADIUS client's are applied."""
    return ClientRules.of("ldap-proxy", proxy.allowed_groups) if proxy.allowed_groups else None


def _but_the_url(portal: PortalConfig | None) -> PortalConfig | None:
    return replace(portal, public_url=None) if portal is not None else None


def reload_config(daemon: Daemon, path: Path) -> bool:
    """Re-read the config file (SIGHUP); a config with errors is logged and not used."""
    try:
        new = load_config(path)
        replies = compile_replies(new.radius)
    except ConfigError as exc:
        problems = exc.problems
    else:
        problems = ()
    if problems:
        for problem in problems:
            log.error("config.reload-rejected problem={problem}", problem=problem)
        log.error("config.reload-rejected: the running config stays in force")
        return False
    pending = daemon.reload(new, replies)
    set_level(new.log.level)
    if daemon.workers is not None:
        daemon.workers.signal("HUP")  # each re-reads the file itself
    if pending:
        log.warn(
            "config.reload-partial restart-needed={settings}: these changes take effect"
            " at the next restart",
            settings=", ".join(pending),
        )
    log.info("config.reloaded")
    return True


def make_daemon(
    config: Config,
    reactor: Any,
    stdout: TextIO = sys.stdout,
    *,
    adopt: Mapping[str, int] | None = None,
    number: int = 0,
) -> Daemon:
    """The whole daemon, not yet started (`daemon.service.startService()`)."""
    return Daemon(config, reactor, stdout, adopt=adopt, number=number)


def make_portal(  # noqa: PLR0917 - the daemon's parts, in the order it builds them
    config: Config,
    authenticator: Authenticator,
    store: RecordStore,
    audit: AuditLog,
    reactor: Any,
    worker: StoreWorker,
) -> Portal:
    """The portal's logic with its sessions and attempt limits."""
    portal = config.portal
    assert portal is not None  # only called when the section is present
    clock = reactor.seconds
    return Portal(
        authenticator,
        store,
        policy=policy_from(config),
        issuer=config.mfa.issuer,
        exempt_users=frozenset(config.mfa.exempt_users),
        audit=audit,
        clock=clock,
        sessions=Sessions(clock, portal.session_idle, portal.session_max, store),
        per_user=AttemptLimiter(clock, portal.max_attempts_per_user, portal.attempt_window),
        per_address=AttemptLimiter(clock, portal.max_attempts_per_address, portal.attempt_window),
        worker=worker,
    )


def portal_service(config: PortalConfig, portal: Portal, reactor: Any) -> Service:
    """The portal's listener: HTTPS with `portal.tls`, else HTTP (loopback, or allowed)."""
    secure = config.tls is not None or (config.public_url or "").startswith("https://")
    limits = Limits(
        max_connections=config.max_connections,
        max_connections_per_address=config.max_connections_per_address,
        request_timeout=config.request_timeout,
        idle_timeout=config.idle_timeout,
        failure_delay=config.failure_delay,
    )
    site = make_site(
        portal,
        secure=secure,
        trusted_proxies=config.trusted_proxies,
        limits=limits,
        reactor=reactor,
    )
    if config.tls is None:
        return TCPServer(config.listen_port, site, interface=config.listen_host, reactor=reactor)
    try:
        options = server_tls_options(config.tls)
    except TlsSetupError as exc:
        raise ConfigError([f"portal.tls: {exc}"]) from exc
    return SSLServer(
        config.listen_port, site, options, interface=config.listen_host, reactor=reactor
    )


def ldap_proxy_service(
    config: Config, login: LdapLogin, reactor: Any, adopt: Mapping[str, int] | None = None
) -> MultiService:
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
    adopt = adopt or {}
    listeners = MultiService()
    if "ldap" in adopt:
        plain: TCPServer = AdoptedTcp(adopt["ldap"], proxy.listen_host, factory, reactor, None)
    else:
        plain = TCPServer(proxy.listen_port, factory, interface=proxy.listen_host, reactor=reactor)
    listeners.addService(plain)
    if proxy.listen_tls is not None and settings.tls is not None:
        host, port = proxy.listen_tls
        if "ldaps" in adopt:
            ldaps: TCPServer | SSLServer = AdoptedTcp(
                adopt["ldaps"], host, factory, reactor, settings.tls
            )
        else:
            ldaps = SSLServer(port, factory, settings.tls, interface=host, reactor=reactor)
        listeners.addService(ldaps)
    return listeners
