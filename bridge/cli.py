"""The `mfa-bridge` command: the daemon and the admin's user commands.

This is the only module that reads the wall clock and imports the global reactor.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from bridge import __version__
from bridge.admin import Admin, AdminError, Changed, describe
from bridge.audit import admin_audit
from bridge.config import Config, ConfigError, default_config_path, load_config
from bridge.store import StoreError

if TYPE_CHECKING:
    from bridge.service import Daemon

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes in one line with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _days(text: str) -> int:
    """`--days N`: a whole number of days, 0 or more (anything else is bad usage)."""
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if days < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {days}")
    return days


def _parser() -> argparse.ArgumentParser:
    config = _Parser(add_help=False)
    config.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,  # not None: it would hide a --config given before
        help="config file (default: $MFA_BRIDGE_CONFIG or config/bridge.yaml)",
    )
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")

    parser = _Parser(prog="mfa-bridge", description="TOTP MFA for RADIUS and LDAP logins")
    parser.add_argument(
        "--config", type=Path, default=None, help="config file, before or after the command"
    )
    parser.add_argument("--version", action="version", version=f"mfa-bridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", parents=[config], help="run the daemon")
    run.add_argument(
        "--debug",
        action="store_true",
        help="trace every request (attributes with passwords masked, directory operations,"
        " decisions), as freeradius -X does",
    )
    # How the main process starts its workers (server.workers; bridge/workers.py).
    run.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    run.add_argument("--sockets", default="", help=argparse.SUPPRESS)
    commands.add_parser("check-config", parents=[config], help="validate the config file")
    health = commands.add_parser(
        "healthcheck", parents=[config], help="a Status-Server round trip to the local listener"
    )
    health.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (2)")
    doctor = commands.add_parser(
        "doctor", parents=[config], help="check the directory, TLS, a test user, the clock"
    )
    doctor.add_argument("--user", help="a user name that must be found in the directory")
    user = commands.add_parser("user", help="manage users' MFA state")
    actions = user.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for name, text in (
        ("enroll", "issue a new secret (QR code, URI, key): state pending"),
        ("status", "show state, deadline, days left, failures"),
        ("lock", "lock the user"),
        ("unlock", "clear the lock and failures"),
        ("reset", "forget the secret: back to grace"),
        ("delete", "forget the user's MFA record altogether (a new user at next login)"),
    ):
        sub = actions.add_parser(name, parents=[config, as_json], help=text)
        sub.add_argument("username")
        if name == "unlock":
            sub.add_argument("--days", type=_days, help="length of a fresh enrollment period")
    actions.add_parser("list", parents=[config, as_json], help="list known users")
    imp = actions.add_parser(
        "import",
        parents=[config, as_json],
        help="import 'username,secret' rows (CSV): base32, otpauth:// URIs or hex: seeds",
    )
    imp.add_argument("file", type=Path)
    imp.add_argument(
        "--replace", action="store_true", help="overwrite the secrets users already have"
    )
    store = commands.add_parser("store", help="back up and restore the store")
    store_actions = store.add_subparsers(dest="action", required=True, parser_class=_Parser)
    backup = store_actions.add_parser(
        "backup",
        parents=[config, as_json],
        help="write a consistent copy to a new SQLite file (while the daemon runs)",
    )
    backup.add_argument("file", type=Path)
    restore = store_actions.add_parser(
        "restore",
        parents=[config, as_json],
        help="load a backup into the configured store (SQLite or PostgreSQL)",
    )
    restore.add_argument("file", type=Path)
    restore.add_argument(
        "--replace", action="store_true", help="overwrite users already in the store"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config or default_config_path())
        if args.command == "check-config":
            from bridge.radius.replies import compile_replies  # noqa: PLC0415

            compile_replies(config.radius)  # names and types against the dictionary
            for warning in config.warnings:
                print(f"warning: {warning}", file=sys.stderr)
            from bridge.budget import ensure_descriptors  # noqa: PLC0415

            if (problem := ensure_descriptors(config)) is not None:
                print(f"warning: as this user, here: {problem}", file=sys.stderr)
            print("config OK")
            return EXIT_OK
        if args.command == "doctor":
            return _doctor(config, args.user)
        if args.command == "healthcheck":
            return _healthcheck(config, args.timeout)
        if args.command == "run":
            path = args.config or default_config_path()
            if args.worker:
                return _run_worker(config, path, args.worker, args.sockets, debug=args.debug)
            return _run(config, path, debug=args.debug)
        if args.command == "store":
            return _store(args, config)
        return _user(args, config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    except (AdminError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except sqlite3.Error as exc:  # e.g. "database is locked" after the busy timeout
        print(f"error: store: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _user(args: argparse.Namespace, config: Config) -> int:
    from bridge.directory import DirectoryLookup  # noqa: PLC0415 - keep --help fast
    from bridge.service import open_store, policy_from  # noqa: PLC0415

    store = open_store(config)
    directory = DirectoryLookup(config.directory, config.mfa.exempt_groups)
    audit = admin_audit(config.log.audit)
    admin = Admin(
        store,
        policy_from(config),
        config.mfa.issuer,
        frozenset(config.mfa.exempt_users),
        directory,
        audit=audit,
        actor=_actor(),
    )
    try:
        return _USER_ACTIONS[args.action](admin, args, int(time.time()))
    finally:
        for note in admin.notes:
            print(f"note: {note}", file=sys.stderr)
        directory.close()
        store.close()
        audit.close()


def _actor() -> str:
    """Who ran an admin command, for its audit line: the login behind sudo, if any."""
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"cli:{user}"


def _show(args: argparse.Namespace, view: Any, text: Callable[[], str]) -> int:
    print(json.dumps(view, ensure_ascii=False) if args.json else text())
    return EXIT_OK


def _line(view: dict[str, Any]) -> str:
    if view.get("unattached"):
        return f"{view['username']}: record of an earlier release, not yet matched to an entry"
    parts = [f"{view['username']}: {view['state']}"]
    if view.get("lock_reason") and view["state"] == "locked":
        parts.append(f"({view['lock_reason']})")
    if view.get("days_left") is not None:
        parts.append(f"{view['days_left']} days left, deadline {view['deadline']}")
    if view.get("failures"):
        parts.append(f"failures {view['failures']}")
    return " ".join(parts)


def _status(admin: Admin, args: argparse.Namespace, now: int) -> int:
    view = admin.status(args.username, now)
    return _show(args, view, lambda: _line(view))


def _list(admin: Admin, args: argparse.Namespace, now: int) -> int:
    views = admin.list(now)
    return _show(args, views, lambda: "\n".join(map(_line, views)) or "no users")


def _enroll(admin: Admin, args: argparse.Namespace, now: int) -> int:
    from bridge.qr import terminal_qr  # noqa: PLC0415

    enrollment = admin.enroll(args.username, now)
    view = describe(enrollment.record, enrollment.record.username, now)
    if args.json:
        print(
            json.dumps(
                {**view, "secret": enrollment.secret, "uri": enrollment.uri}, ensure_ascii=False
            )
        )
        return EXIT_OK
    sys.stdout.write(terminal_qr(enrollment.uri))
    print("\nScan the QR code with an authenticator app, or type the key by hand.")
    print(f"key: {enrollment.secret}")
    print(f"uri: {enrollment.uri}")
    print(_line(view))
    return EXIT_OK


def _changed(
    action: Callable[[Admin, argparse.Namespace, int], Changed],
) -> Callable[[Admin, argparse.Namespace, int], int]:
    """A `user` command that changes a record, then shows it (or that it was forgotten)."""

    def run(admin: Admin, args: argparse.Namespace, now: int) -> int:
        changed = action(admin, args, now)
        if changed.record is None:
            return _gone(args, changed.username)
        view = describe(changed.record, changed.username, now)
        return _show(args, view, lambda: _line(view))

    return run


def _gone(args: argparse.Namespace, username: str) -> int:
    view = {
        "username": username,
        "state": None,
        "deadline": None,
        "days_left": None,
        "failures": 0,
    }
    return _show(args, view, lambda: f"{username}: forgotten (enroll to set up MFA)")


def _import(admin: Admin, args: argparse.Namespace, now: int) -> int:
    count = admin.import_csv(args.file, now, replace=args.replace)
    return _show(args, {"imported": count}, lambda: f"imported {count} users (active)")


_USER_ACTIONS: dict[str, Callable[[Admin, argparse.Namespace, int], int]] = {
    "status": _status,
    "list": _list,
    "enroll": _enroll,
    "lock": _changed(lambda admin, args, now: admin.lock(args.username, now)),
    "unlock": _changed(lambda admin, args, now: admin.unlock(args.username, now, args.days)),
    "reset": _changed(lambda admin, args, now: admin.reset(args.username, now)),
    "delete": _changed(lambda admin, args, now: admin.delete(args.username, now)),
    "import": _import,
}


def _store(args: argparse.Namespace, config: Config) -> int:
    from bridge.store import open_store  # noqa: PLC0415 - keep --help fast
    from bridge.store.backup import backup, restore  # noqa: PLC0415

    store = open_store(config.store, config.directory.id_attribute)
    try:
        if args.action == "backup":
            count = backup(store, args.file)
            view: dict[str, Any] = {"file": str(args.file), "users": count}
            return _show(args, view, lambda: f"backed up {count} users to {args.file}")
        done = restore(store, args.file, replace=args.replace)
        audit = admin_audit(config.log.audit)
        audit.admin(
            "restore",
            "*",
            _actor(),
            source=str(args.file),
            added=done.added,
            replaced=done.replaced,
            kept=done.kept,
        )
        audit.close()
        view = {"added": done.added, "replaced": done.replaced, "kept": done.kept}
        kept = f", {done.kept} kept as they were (--replace overwrites)" if done.kept else ""
        text = f"restored {done.added} users, replaced {done.replaced}{kept}"
        return _show(args, view, lambda: text)
    finally:
        store.close()


def _doctor(config: Config, username: str | None) -> int:
    from bridge import doctor  # noqa: PLC0415

    findings = doctor.run(config, username)
    for finding in findings:
        print(f"{finding.level:<5} {finding.subject}: {finding.text}")
    failed = sum(f.level == "fail" for f in findings)
    print(f"{failed} problem{'s' if failed != 1 else ''} found" if failed else "all checks passed")
    return EXIT_ERROR if failed else EXIT_OK


def _healthcheck(config: Config, timeout: float) -> int:
    from bridge.health import HealthError, status_server  # noqa: PLC0415

    try:
        took = status_server(config, timeout)
    except HealthError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"healthy: Status-Server answered in {took * 1000:.1f} ms")
    return EXIT_OK


def _run(config: Config, path: Path, *, debug: bool = False) -> int:
    from twisted.internet import reactor  # noqa: PLC0415 - the one global reactor
    from twisted.logger import Logger  # noqa: PLC0415

    from bridge.budget import ensure_descriptors  # noqa: PLC0415
    from bridge.logs import start_logging  # noqa: PLC0415
    from bridge.service import reload_config  # noqa: PLC0415
    from bridge.systemd import Notifier  # noqa: PLC0415
    from bridge.workers import ListenError  # noqa: PLC0415

    start_logging(config.log, sys.stderr, debug=debug)  # stdout carries the audit lines
    log = Logger(namespace="bridge.cli")  # from here on, every line in log.format
    for warning in config.warnings:
        log.warn("config.warning {warning}", warning=warning)
    if (problem := ensure_descriptors(config)) is not None:
        log.error("start.failed cannot start: {problem}", problem=problem)
        return EXIT_ERROR
    try:
        daemon = _main_daemon(config, path, reactor, debug=debug)
    except ListenError as exc:
        log.error("start.failed cannot start: {problem}", problem=str(exc))  # noqa: TRY400
        return EXIT_ERROR
    notifier = Notifier()
    failed: list[str] = []

    def start() -> None:
        if not _started(daemon, reactor, failed):
            return
        reactor.addSystemEventTrigger("before", "shutdown", stop)
        notifier.start_watchdog(reactor)
        notifier.status("listening; waiting for the directory to answer")
        daemon.directory_service.reached.addCallback(
            lambda server: notifier.ready(f"serving; directory {server}")
        )

    def stop() -> Any:
        notifier.stopping()
        notifier.stop_watchdog()
        return daemon.service.stopService()

    def reload() -> None:
        notifier.reloading()
        reload_config(daemon, path)
        notifier.reloaded("serving; config reloaded")

    # A signal handler may run between any two bytecodes: hand the reload to the reactor.
    from_thread: Any = reactor
    signal.signal(signal.SIGHUP, lambda _signum, _frame: from_thread.callFromThread(reload))
    reactor.callWhenRunning(start)
    reactor.run()
    if failed:
        log.error("start.failed cannot start: {problem}", problem=failed[0])
        return EXIT_ERROR
    return EXIT_OK


def _started(daemon: Daemon, reactor: Any, failed: list[str]) -> bool:
    """Start the service tree; on an error (a port in use, a bad demo LDIF) note it in
    `failed`, stop what did start (the directory's threads) and the reactor."""
    try:
        daemon.service.startService()
    except Exception as exc:  # a port in use, a bad demo LDIF: said, and the run ends
        failed.append(str(exc))
        daemon.service.stopService()
        reactor.stop()
        return False
    return True


def _main_daemon(config: Config, path: Path, reactor: Any, *, debug: bool) -> Daemon:
    """The main process's daemon; with `server.workers` > 1, its sockets bound once per
    worker (ListenError when they cannot be) and its workers added."""
    from bridge.service import make_daemon  # noqa: PLC0415
    from bridge.workers import Workers, bind_group, worker_command  # noqa: PLC0415

    if config.server.workers == 1:
        return make_daemon(config, reactor)
    groups = bind_group(config, config.server.workers)
    daemon = make_daemon(config, reactor, adopt=groups[0].descriptors_here())
    command = worker_command(str(path), debug)
    daemon.add_workers(Workers(groups, command, reactor, daemon.drain_seconds + 5))
    return daemon


def _run_worker(config: Config, path: Path, number: int, sockets: str, *, debug: bool) -> int:
    """Worker `number` of a main process (bridge/workers.py), on the sockets it was handed."""
    from twisted.internet import reactor  # noqa: PLC0415 - the one global reactor
    from twisted.internet.stdio import StandardIO  # noqa: PLC0415
    from twisted.logger import Logger  # noqa: PLC0415

    from bridge.logs import start_logging  # noqa: PLC0415
    from bridge.service import make_daemon, reload_config  # noqa: PLC0415
    from bridge.workers import ANSWERS_FD, Control, inherited  # noqa: PLC0415

    start_logging(config.log, sys.stderr, debug=debug, worker=number)
    log = Logger(namespace="bridge.cli")
    daemon = make_daemon(config, reactor, adopt=inherited(sockets), number=number)
    metrics = daemon.metrics
    failed: list[str] = []

    def gone() -> None:
        if reactor.running:
            reactor.stop()

    def start() -> None:
        if not _started(daemon, reactor, failed):
            return
        reactor.addSystemEventTrigger("before", "shutdown", daemon.service.stopService)
        control = Control(metrics.samples if metrics is not None else list, gone)
        stdio: Any = StandardIO
        stdio(control, stdin=0, stdout=ANSWERS_FD, reactor=reactor)

    from_thread: Any = reactor
    signal.signal(
        signal.SIGHUP,
        lambda _signum, _frame: from_thread.callFromThread(reload_config, daemon, path),
    )
    # A terminal's Ctrl-C reaches the whole process group: the main process stops its
    # workers itself (SIGTERM, each once), so they leave SIGINT to it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reactor.callWhenRunning(start)
    reactor.run()
    if failed:
        log.error(
            "start.failed worker={worker} cannot start: {problem}", worker=number, problem=failed[0]
        )
        return EXIT_ERROR
    return EXIT_OK
