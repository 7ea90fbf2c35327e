"""A private, throw-away OpenLDAP ``slapd`` for integration tests and benchmarks.

No pytest in here: the benchmark uses it too.  Typical use::

    with Slapd(tmp_path, users=[SlapdUser("alice", "pw")], groups={"vpn": ["alice"]}) as d:
        d.url, d.user_dn("alice"), d.bind_count()

slapd runs in the foreground (``-d``) as a direct child process, so ``stop``, ``pause``
(SIGSTOP: a hung directory) and ``resume`` act on exactly that process.  Its stderr, which
with ``-d stats`` carries one ``BIND dn=... method=...`` line per bind request, goes to
``<workdir>/slapd.log``; :meth:`Slapd.bind_count` counts those lines.

Every started instance is also stopped when it is garbage-collected or at interpreter
exit, and on Linux slapd is asked (``PR_SET_PDEATHSIG``) to die with the thread that
started it, so a killed test run leaves no slapd behind.  Start it from a thread that
outlives it (normally the main thread).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["Slapd", "SlapdError", "SlapdUser", "escape_dn_value", "find_program", "ssha"]

SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
START_TIMEOUT = 10.0

_BIND_LINE = re.compile(rb' BIND dn=".*" method=\d+\s*$', re.MULTILINE)


class SlapdError(RuntimeError):
    """slapd could not be prepared, started, or changed."""


@dataclass
class SlapdUser:
    """An ``inetOrgPerson`` under ``ou=people``; ``cn`` (and ``sn``) default to the uid."""

    uid: str
    password: str
    cn: str | None = None
    mail: str | None = None
    aliases: tuple[str, ...] = ()  # more `uid` values for the same entry


# --------------------------------------------------------------------------- helpers


def ssha(password: str, salt: bytes | None = None) -> str:
    """``{SSHA}`` hash as slapd checks it: base64(sha1(password + salt) + salt)."""
    salt = secrets.token_bytes(8) if salt is None else salt
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def escape_dn_value(value: str) -> str:
    """Escape an attribute value for use in a string DN (RFC 4514, section 2.4)."""
    out = []
    for i, ch in enumerate(value):
        if ch in '"+,;<>\\=' or (ch == "#" and i == 0) or (ch == " " and i in (0, len(value) - 1)):
            out.append("\\" + ch)
        elif ch == "\0":
            out.append("\\00")
        else:
            out.append(ch)
    return "".join(out)


def _ldif_line(attr: str, value: str) -> str:
    """One LDIF attribute line, base64 (``::``) unless the value is a SAFE-STRING."""
    safe = value == "" or (
        value.isascii()
        and value[0] not in " :<"
        and not value.endswith(" ")
        and not any(c in value for c in "\0\r\n")
    )
    if safe:
        return f"{attr}: {value}"
    return f"{attr}:: {base64.b64encode(value.encode()).decode('ascii')}"


def _ldif_entry(dn: str, attrs: Iterable[tuple[str, str]]) -> str:
    return "\n".join([_ldif_line("dn", dn), *(_ldif_line(a, v) for a, v in attrs)]) + "\n"


def _free_port(consecutive: int = 1) -> int:
    """A TCP port on 127.0.0.1 that is free now (and, if asked, the ones after it too)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port + consecutive - 1 > 65535:
            continue
        try:
            for extra in range(1, consecutive):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + extra))
        except OSError:
            continue
        return port
    raise SlapdError(f"no {consecutive} consecutive free TCP port(s) found")


def find_program(name: str) -> str:
    """Absolute path of an OpenLDAP program; /usr/sbin is searched even when not on PATH."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise SlapdError(f"{name} not found (Debian: apt-get install slapd ldap-utils)")
    return path


def _tool_env() -> dict[str, str]:
    # Ignore ldap.conf/.ldaprc and LDAP* variables: they could point the tools elsewhere.
    return {**os.environ, "LDAPNOINIT": "1"}


def _pdeathsig_preexec() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


_PREEXEC = _pdeathsig_preexec()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """Stop slapd for good: SIGTERM (and SIGCONT, in case it is paused), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
        proc.send_signal(signal.SIGCONT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------- Slapd


class Slapd:
    """One private slapd: its config, mdb database, pid file and log live in ``workdir``."""

    admin_password = "admin-secret-pw"  # the rootdn's; bypasses every ACL
    service_password = "bridge-service-pw"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        users: Iterable[SlapdUser] = (),
        groups: Mapping[str, Iterable[str]] = {},
        suffix: str = "dc=example,dc=org",
        tls: tuple[Path, Path] | None = None,
        stats_log: bool = True,
    ) -> None:
        """``groups`` maps a group cn to member uids; ``tls`` is (certificate, key).

        ``stats_log=False`` runs without per-operation logging (for benchmarks); then
        :meth:`bind_count` is unavailable.
        """
        self.workdir = Path(workdir).resolve()
        self.tls = tls
        self.stats_log = stats_log
        self.port = port if port is not None else _free_port(2 if tls else 1)
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.ldaps_url: str | None = f"ldaps://127.0.0.1:{self.port + 1}" if tls else None
        self.suffix = suffix
        self.admin_dn = f"cn=admin,{suffix}"
        self.service_dn = f"cn=bridge,ou=services,{suffix}"
        self.people_dn = f"ou=people,{suffix}"
        self.groups_dn = f"ou=groups,{suffix}"
        self.users: dict[str, SlapdUser] = {}
        for user in users:
            if user.uid in self.users:
                raise ValueError(f"duplicate uid {user.uid!r}")
            self.users[user.uid] = user
        self.groups: dict[str, list[str]] = {cn: list(uids) for cn, uids in groups.items()}

        self.conf_path = self.workdir / "slapd.conf"
        self.ldif_path = self.workdir / "data.ldif"
        self.db_dir = self.workdir / "db"
        self.log_path = self.workdir / "slapd.log"
        self.pid_path = self.workdir / "slapd.pid"

        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], Slapd] | None = None
        self._loaded = False
        self._bind_count = 0  # BIND lines in slapd.log up to byte _counted_upto
        self._counted_upto = 0

    # ------------------------------------------------------------------ names

    def user_dn(self, uid: str) -> str:
        return f"uid={escape_dn_value(uid)},{self.people_dn}"

    def group_dn(self, cn: str) -> str:
        return f"cn={escape_dn_value(cn)},{self.groups_dn}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ content

    def _user_ldif(self, user: SlapdUser) -> str:
        cn = user.cn if user.cn is not None else user.uid
        return _ldif_entry(
            self.user_dn(user.uid),
            [
                ("objectClass", "inetOrgPerson"),
                ("uid", user.uid),
                *(("uid", alias) for alias in user.aliases),
                *((("mail", user.mail),) if user.mail else ()),
                ("cn", cn),
                ("sn", cn),
                ("userPassword", ssha(user.password)),
            ],
        )

    def _group_ldif(self, cn: str, uids: Iterable[str]) -> str:
        # groupOfNames needs at least one member: an empty group holds the empty DN.
        members = [self.user_dn(uid) for uid in uids] or [""]
        return _ldif_entry(
            self.group_dn(cn),
            [("objectClass", "groupOfNames"), ("cn", cn), *(("member", m) for m in members)],
        )

    def ldif(self) -> str:
        """The whole initial directory as LDIF."""
        top = self.suffix.split(",", 1)[0]
        attr, _, value = top.partition("=")
        if attr.strip().lower() != "dc":
            raise SlapdError(f"suffix must start with dc=...: {self.suffix!r}")
        entries = [
            _ldif_entry(
                self.suffix,
                [
                    ("objectClass", "dcObject"),
                    ("objectClass", "organization"),
                    ("dc", value),
                    ("o", value),
                ],
            ),
            *(
                _ldif_entry(
                    f"ou={ou},{self.suffix}", [("objectClass", "organizationalUnit"), ("ou", ou)]
                )
                for ou in ("people", "groups", "services")
            ),
            _ldif_entry(
                self.service_dn,
                [
                    ("objectClass", "organizationalRole"),
                    ("objectClass", "simpleSecurityObject"),
                    ("cn", "bridge"),
                    ("userPassword", ssha(self.service_password)),
                ],
            ),
            *(self._user_ldif(u) for u in self.users.values()),
            *(self._group_ldif(cn, uids) for cn, uids in self.groups.items()),
        ]
        return "\n".join(entries)

    def config(self) -> str:
        """slapd.conf for this instance."""
        lines = [f'include "{SCHEMA_DIR / s}.schema"' for s in SCHEMAS]
        lines += [
            f'modulepath "{MODULE_DIR}"',
            "moduleload back_mdb",
            f'pidfile "{self.pid_path}"',
            f'argsfile "{self.workdir / "slapd.args"}"',
            # An empty password with a DN binds as anonymous instead of being refused (53):
            # the setting under which tests prove the bridge refuses empty passwords itself.
            "allow bind_anon_dn",
        ]
        if self.tls:
            cert, key = self.tls
            lines += [
                f'TLSCertificateFile "{Path(cert).resolve()}"',
                f'TLSCertificateKeyFile "{Path(key).resolve()}"',
            ]
        lines += [
            "access to attrs=userPassword",
            "    by self =wx",
            "    by anonymous auth",
            "    by * none",
            "access to *",
            f'    by dn.exact="{self.service_dn}" read',
            "    by self read",
            "    by * none",
            "",
            "database mdb",
            f'suffix "{self.suffix}"',
            f'rootdn "{self.admin_dn}"',
            f"rootpw {ssha(self.admin_password)}",
            f'directory "{self.db_dir}"',
            "maxsize 1073741824",
            "dbnosync",
            "sizelimit unlimited",
            "index objectClass eq",
            "index uid,cn eq",
            "index member eq",
            "",
            # Where `mfa-bridge doctor` reads the directory's clock (cn=Current,cn=Time).
            "database monitor",
        ]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ lifecycle

    def _load(self) -> None:
        """Write the LDIF and bulk-load it into a fresh mdb directory."""
        shutil.rmtree(self.db_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)  # bind_count() starts from zero
        self._bind_count = self._counted_upto = 0
        self.db_dir.mkdir(parents=True)
        self.ldif_path.write_text(self.ldif(), encoding="utf-8")
        res = subprocess.run(
            [find_program("slapadd"), "-q", "-f", str(self.conf_path), "-l", str(self.ldif_path)],
            capture_output=True,
            check=False,
        )
        if res.returncode != 0:
            raise SlapdError(
                f"slapadd failed ({res.returncode}):\n"
                + (res.stdout + res.stderr).decode(errors="replace")
            )
        self._loaded = True

    def start(self) -> None:
        """Load the data (first start only) and run slapd until the service account can bind."""
        if self.running:
            raise SlapdError("slapd is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.config(), encoding="utf-8")
        if not self._loaded:
            self._load()
        urls = self.url + "/" + (f" {self.ldaps_url}/" if self.ldaps_url else "")
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    find_program("slapd"),
                    "-d",
                    "stats" if self.stats_log else "0",
                    "-f",
                    str(self.conf_path),
                    "-h",
                    urls,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_PREEXEC,  # noqa: PLW1509  (only prctl, resolved beforehand)
            )
        self._finalizer = weakref.finalize(self, _terminate, self._proc)
        try:
            self._wait_ready(log_start)
        except BaseException:
            self.stop()
            raise

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self, log_start: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SlapdError(
                    f"slapd exited with status {self._proc.returncode} on {self.url}:\n"
                    + self._log_since(log_start)
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError as exc:
                last = f"connect: {exc}"
            else:
                res = self._tool(
                    ["ldapwhoami", "-D", self.service_dn, "-w", self.service_password],
                    timeout=1.0,  # short, so that an exited slapd is noticed promptly
                )
                if res is not None and res.returncode == 0:
                    return
                last = "ldapwhoami: " + (
                    "timed out"
                    if res is None
                    else (res.stdout + res.stderr).decode(errors="replace")
                )
            time.sleep(0.02)
        raise SlapdError(
            f"slapd on {self.url} not answering after {START_TIMEOUT:.0f} s ({last.strip()});"
            f" its log:\n{self._log_since(log_start)}"
        )

    def stop(self) -> None:
        """Terminate slapd and wait for it; idempotent."""
        if self._finalizer is not None:
            self._finalizer()  # runs _terminate once, then detaches
            self._finalizer = None
        self._proc = None

    def restart(self) -> None:
        """Stop, then start again on the same port with the same (persisted) data."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP slapd: connections are still accepted by the kernel but never answered.

        Returns once the kernel reports every thread stopped: on a busy machine the signal
        can take a moment to land, and an operation sent meanwhile would still be answered.
        """
        proc = self._require_running()
        proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            states = [
                task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
                for task in Path(f"/proc/{proc.pid}/task").iterdir()
            ]
            if all(state == "T" for state in states):
                return
            time.sleep(0.005)
        raise SlapdError("slapd did not stop within 5 s of SIGSTOP")

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._require_running().send_signal(signal.SIGCONT)

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise SlapdError("slapd is not running")
        return self._proc

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ while running

    def _tool(
        self, argv: list[str], *, stdin: str | None = None, timeout: float = 10.0
    ) -> subprocess.CompletedProcess[bytes] | None:
        """Run an ldap-utils client against ``self.url``; None if it timed out."""
        cmd = [find_program(argv[0]), "-x", "-H", self.url, "-o", "nettimeout=2", *argv[1:]]
        try:
            return subprocess.run(
                cmd,
                input=stdin.encode() if stdin is not None else None,
                capture_output=True,
                timeout=timeout,
                env=_tool_env(),
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None

    def ldapmodify(self, ldif: str, *, add: bool = False) -> None:
        """Apply LDIF as the rootdn (``ldapmodify``, or ``ldapmodify -a`` to add entries)."""
        self._require_running()
        argv = [
            "ldapmodify",
            *(["-a"] if add else []),
            "-D",
            self.admin_dn,
            "-w",
            self.admin_password,
        ]
        res = self._tool(argv, stdin=ldif)
        if res is None or res.returncode != 0:
            out = "timed out" if res is None else (res.stdout + res.stderr).decode(errors="replace")
            raise SlapdError(f"ldapmodify failed: {out}")

    def add_user(self, user: SlapdUser) -> None:
        """Add an ``inetOrgPerson`` to the running directory."""
        if user.uid in self.users:
            raise ValueError(f"duplicate uid {user.uid!r}")
        self.ldapmodify(self._user_ldif(user), add=True)
        self.users[user.uid] = user

    def bind_count(self) -> int:
        """BIND requests slapd has logged so far (all starts of this instance together)."""
        if not self.stats_log:
            raise SlapdError("bind_count() needs stats_log=True")
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._counted_upto)
                data = f.read()
        except FileNotFoundError:
            return self._bind_count
        complete = data.rfind(b"\n") + 1  # leave a half-written last line for next time
        self._bind_count += len(_BIND_LINE.findall(data, 0, complete))
        self._counted_upto += complete
        return self._bind_count

    def log_text(self) -> str:
        """Everything slapd has written to its log."""
        return self._log_since(0)
