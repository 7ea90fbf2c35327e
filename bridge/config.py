"""The config file (SPEC section 3): YAML turned into frozen, typed dataclasses.

Every problem is collected and reported at once, each as ``key.path: what is wrong``, so an
admin fixes a config in one pass. Unknown keys are errors at every level (they are usually
typos). Secrets may come from ``*_file`` keys, and a secret's value never appears in a
message. Nothing here touches the network: listen addresses must be IP literals.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import date
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import yaml

DEFAULT_CONFIG_PATH: Final = Path("config/bridge.yaml")
CONFIG_ENV: Final = "MFA_BRIDGE_CONFIG"

_TOP: Final = "(top level)"
_SHORT_SECRET: Final = 12  # RADIUS secrets this short or shorter draw a warning
_MAX_SECRET_FILE: Final = 64 * 1024  # bytes; guards against pointing at a log or a device


class ConfigError(Exception):
    """The config cannot be used; ``problems`` holds every finding, one ``key.path: text`` each."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    """The upstream LDAP directory: where users are found and their passwords checked."""

    urls: tuple[str, ...]  # ldap:// or ldaps:// servers, tried in order (failover)
    bind_dn: str  # service account used to search for users
    bind_password: str  # from bind_password or bind_password_file
    user_base: str  # search base for users
    user_filter: str = "(uid={username})"  # {username} is escaped (RFC 4515) by the user
    start_tls: bool = False  # upgrade ldap:// connections; never with ldaps://
    ca_file: Path | None = None  # CA bundle; certificates are always verified
    timeout: float = 5.0  # seconds per server
    group_filter: str = "(|(member={dn})(uniqueMember={dn})(memberUid={username}))"
    pool_size: int = 16  # connections used for user binds (one bind at a time each)
    cache_ttl: int = 300  # seconds a user's DN and group membership are remembered; 0: never
    id_attribute: str = "entryUUID"  # names an entry for good (AD: objectGUID): the record's key
    name_attribute: str = "uid"  # the user's name in lists, logs and the app (AD: sAMAccountName)


@dataclass(frozen=True, slots=True)
class MfaConfig:
    """TOTP parameters and the enrollment / lockout policy (SPEC section 2)."""

    issuer: str = "mfa-bridge"  # shown in the authenticator app; no ":" (otpauth label)
    enrollment_days: int = 14  # grace period for new users; 0 = must enroll beforehand
    max_failures: int = 5  # consecutive wrong codes that lock the user
    window: int = 1  # steps either side of now that are accepted
    step: int = 30  # TOTP step, seconds
    exempt_users: tuple[str, ...] = ()  # user names that never need a code
    exempt_groups: tuple[str, ...] = ()  # group DNs whose members never need a code


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where the bridge keeps users' MFA state and TOTP secrets."""

    path: Path  # SQLite database (Path() when `url` is set)
    key_file: Path  # key that protects the stored secrets; default beside the database
    url: str | None = None  # postgresql://...: a store shared by several instances
    password_file: Path | None = None  # the database password, when the URL has none


@dataclass(frozen=True, slots=True)
class RadiusClient:
    """One NAS (VPN concentrator, Wi-Fi controller, pam_radius host) allowed to ask."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network  # from `address`: IP or CIDR
    secret: bytes  # shared secret, UTF-8 encoded
    require_message_authenticator: bool  # defaults to radius.require_message_authenticator
    name: str  # for logs; defaults to str(network)
    mode: str | None = None  # append | challenge | auto; None: radius.mode (SPEC 11)
    mfa: bool = True  # `mfa: off`: the password alone decides, for gear that cannot do MFA
    allowed_groups: tuple[str, ...] = ()  # group DNs; empty: every user may log in here
    remember_seconds: int = 0  # a device (Calling-Station-Id) after a code: password alone


@dataclass(frozen=True, slots=True)
class ReplyRule:
    """Attributes an Access-Accept carries when its user and client match (SPEC 11)."""

    attributes: tuple[tuple[str, object], ...]  # (name, value) in order; checked in radius/
    group: str | None = None  # a group DN; None: every user
    clients: tuple[str, ...] = ()  # radius.clients names; empty: every client


@dataclass(frozen=True, slots=True)
class EapConfig:
    """802.1X logins over RADIUS: EAP-TTLS and PEAP (SPEC section 10), PEM files."""

    certificate: Path  # the server certificate, then any intermediate CA certificates
    key: Path  # its private key, unencrypted
    ca_file: Path | None = None  # the CA that issued it: checked at start, intermediates sent


@dataclass(frozen=True, slots=True)
class RadiusConfig:
    """The RADIUS server (SPEC section 4)."""

    listen_host: str  # IP literal, no brackets
    listen_port: int  # 0 = pick a free port (tests)
    mode: str = "auto"  # append | challenge | auto
    require_message_authenticator: bool = True  # default for every client
    reject_delay: float = 1.0  # seconds before an Access-Reject goes out
    state_ttl: int = 120  # seconds a challenge State stays valid
    clients: tuple[RadiusClient, ...] = ()  # no two overlap
    eap: EapConfig | None = None  # absent: EAP-Message requests are rejected
    replies: tuple[ReplyRule, ...] = ()  # every matching rule applies, in order
    dictionaries: tuple[Path, ...] = ()  # FreeRADIUS-format files beside the shipped one


@dataclass(frozen=True, slots=True)
class LdapProxyTls:
    """The proxy's own certificate, for StartTLS and LDAPS towards clients (PEM files)."""

    certificate: Path  # the server certificate, then any intermediate CA certificates
    key: Path  # its private key, unencrypted


@dataclass(frozen=True, slots=True)
class LdapProxyConfig:
    """The LDAP simple-bind proxy (SPEC section 6); absent section, no listener."""

    listen_host: str
    listen_port: int
    passthrough_dns: tuple[str, ...] = ()  # bound upstream directly, without a code
    allow_anonymous: bool = False  # forward anonymous binds (empty DN and password)
    tls: LdapProxyTls | None = None  # StartTLS on `listen`, and LDAPS on `listen_tls`
    listen_tls: tuple[str, int] | None = None  # (host, port) of the LDAPS listener
    require_tls: bool = False  # refuse simple binds on connections without TLS (13)
    max_connections: int = 1000  # open client connections, all addresses together
    max_connections_per_address: int = 100  # open client connections from one IP address
    idle_timeout: float = 300.0  # seconds without a request before a connection is closed
    rebind_seconds: int = 600  # the same password+code from the same address: accepted again
    allowed_groups: tuple[str, ...] = ()  # group DNs whose members may bind; empty: anyone


@dataclass(frozen=True, slots=True)
class PortalConfig:
    """The self-service portal (SPEC section 7); absent section, no web listener."""

    listen_host: str
    listen_port: int
    tls: LdapProxyTls | None = None  # certificate and key: HTTPS
    public_url: str | None = None  # where users reach it; shown in grace messages
    allow_http: bool = False  # serve sign-in forms in clear on a non-loopback address
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    session_idle: float = 300.0  # seconds without a request before a session ends
    session_max: float = 3600.0  # seconds a session lasts at most
    max_attempts_per_user: int = 10  # sign-ins and codes per user per `attempt_window`
    max_attempts_per_address: int = 30  # the same per client IP address
    attempt_window: float = 300.0  # seconds
    max_connections: int = 256  # open HTTP connections in all; beyond, new ones are closed
    max_connections_per_address: int = 16  # the same per client IP address
    request_timeout: float = 10.0  # seconds for a request's headers and body to arrive
    idle_timeout: float = 30.0  # seconds a kept-alive connection may wait for its next request
    failure_delay: float = 1.0  # seconds after its arrival a failed sign-in is answered


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint; absent section, no listener."""

    listen_host: str
    listen_port: int


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """An embedded in-memory directory loaded from an LDIF file, for trying the bridge."""

    ldif: Path
    listen_host: str
    listen_port: int


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Logging."""

    level: str = "info"  # debug | info | warn | error
    format: str = "text"  # text | json
    audit: str = "stdout"  # JSON lines of login decisions: stdout | off | a file path


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The daemon's processes."""

    # Processes answering RADIUS and the LDAP proxy, each on its own SO_REUSEPORT socket
    # of the same port (see bridge/workers.py); `auto` in the file is one per CPU.
    workers: int = 1


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated config; ``warnings`` are non-fatal findings worth showing."""

    directory: DirectoryConfig
    mfa: MfaConfig
    store: StoreConfig
    radius: RadiusConfig
    ldap_proxy: LdapProxyConfig | None
    portal: PortalConfig | None
    metrics: MetricsConfig | None
    demo: DemoConfig | None
    log: LogConfig
    warnings: tuple[str, ...]
    server: ServerConfig = ServerConfig()


# Defaults read from instances: on a slotted dataclass the class attribute is a descriptor.
_DEFAULT_DIRECTORY: Final = DirectoryConfig(urls=(), bind_dn="", bind_password="", user_base="")
_DEFAULT_MFA: Final = MfaConfig()
_DEFAULT_RADIUS: Final = RadiusConfig(listen_host="", listen_port=0)
_DEFAULT_LOG: Final = LogConfig()
_MFA_KEYS: Final = tuple(field.name for field in fields(MfaConfig))


# --- reading the file -------------------------------------------------------------------


def default_config_path() -> Path:
    """``$MFA_BRIDGE_CONFIG`` when set and non-empty, else ``config/bridge.yaml``."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file; relative paths in it are relative to its directory."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read config file: {_oserror(exc)}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file}: not UTF-8 text (bad byte at offset {exc.start})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{file}: {_yaml_problem(exc)}"]) from None
    return parse_config(data, Path(os.path.abspath(file)).parent)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without the snippet of the file (which may hold a secret)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        return f"invalid YAML at {where}: {exc.problem or exc.context or 'syntax error'}"
    return "invalid YAML"


def _oserror(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


# --- describing values in messages --------------------------------------------------------

_KINDS: Final[tuple[tuple[type, str], ...]] = (
    (bool, "a boolean"),  # before int: bool is an int subclass
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (list, "a list"),
    (dict, "a mapping"),
    (date, "a date"),
    (bytes, "binary data"),
)


def _kind(value: object) -> str:
    """What YAML made of a value, in words."""
    if value is None:
        return "null"
    for typ, name in _KINDS:
        if isinstance(value, typ):
            return name
    return type(value).__name__


def _show(value: object) -> str:
    """A scalar as the admin would recognise it; containers by kind only."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (int, float, date)):
        return str(value)
    return _kind(value)


def _not_a_string(value: object, *, secret: bool = False) -> str:
    if isinstance(value, (bool, int, float, date)):
        shown = "" if secret else f" ({_show(value)})"
        return f"must be a string, but YAML read the value as {_kind(value)}{shown}; quote it"
    return f"must be a string, got {_kind(value)}"


def _unknown_key(key: object, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(str(key), known, n=1) if isinstance(key, str) else []
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (expected one of: {', '.join(known)})"


def _range_text(kind: str, lo: float, hi: float | None, *, lo_open: bool = False) -> str:
    if lo_open:
        return f"{kind} > {lo}" + ("" if hi is None else f" and <= {hi}")
    if hi is None:
        return f"{kind} >= {lo}"
    return f"{kind} from {lo} to {hi}"


# --- the validator ------------------------------------------------------------------------


class _Report:
    """Problems and warnings found so far, and the directory relative paths start from."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}")

    def resolve(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.base_dir / path


class _Map:
    """One mapping of the config at a key path; typed getters report what is wrong.

    A getter returns its default (or an empty placeholder) when the value is absent, null or
    wrong; the placeholders never escape, because any problem ends in ConfigError.
    """

    def __init__(
        self, report: _Report, path: str, data: Mapping[object, object], known: Iterable[str]
    ) -> None:
        self.report = report
        self.key_path = path
        self.data = data
        known = tuple(known)
        for key in data:
            if key not in known:
                self.report.error(self.sub(str(key)), _unknown_key(key, known))

    def sub(self, key: str) -> str:
        """Key path of ``key`` inside this mapping."""
        if not self.key_path or key.startswith("["):
            return f"{self.key_path}{key}"
        return f"{self.key_path}.{key}"

    def get(self, key: str) -> object:
        """The raw value; None when absent or null."""
        return self.data.get(key)

    def error(self, key: str, message: str) -> None:
        self.report.error(self.sub(key), message)

    def warn(self, key: str, message: str) -> None:
        self.report.warn(self.sub(key), message)

    def section(self, key: str, *, required: bool = False) -> Mapping[object, object] | None:
        """A nested mapping; None when absent, null or not a mapping."""
        value = self.get(key)
        if value is None:
            if required:
                self.error(key, "required section")
            return None
        if not isinstance(value, dict):
            self.error(key, f"must be a mapping of keys, got {_kind(value)}")
            return None
        return value

    def string(self, key: str, default: str = "", *, required: bool = False) -> str:
        value = self.get(key)
        if value is None:
            if required:
                self.error(key, "required")
            return default
        if not isinstance(value, str):
            self.error(key, _not_a_string(value))
            return default
        if not value.strip():
            self.error(key, "must not be empty")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, f"must be true or false, got {_show(value)}")
            return default
        return value

    def integer(self, key: str, default: int, lo: int, hi: int | None = None) -> int:
        value = self.get(key)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < lo
            or (hi is not None and value > hi)
        ):
            self.error(key, f"must be {_range_text('an integer', lo, hi)}, got {_show(value)}")
            return default
        return value

    def number(
        self, key: str, default: float, lo: float, hi: float, *, lo_open: bool = False
    ) -> float:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
            above = number > lo if lo_open else number >= lo
            if above and number <= hi:  # NaN fails both
                return number
        text = _range_text("a number", lo, hi, lo_open=lo_open)
        self.error(key, f"must be {text}, got {_show(value)}")
        return default

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, str) and value in choices:
            return value
        close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        self.error(key, f"must be one of {', '.join(choices)}, got {_show(value)}{hint}")
        return default

    def str_list(
        self,
        key: str,
        *,
        required: bool = False,
        check: Callable[[str], str | None] | None = None,
    ) -> tuple[str, ...]:
        """A list of non-empty strings, each passed through ``check`` (a problem or None).

        Returns () when anything in it is wrong, so indices downstream stay meaningful.
        """
        value = self.get(key)
        if value is None:
            if required:
                self.error(key, "required: a list with at least one entry")
            return ()
        if not isinstance(value, list):
            hint = f"; write [{value}]" if isinstance(value, str) else ""
            self.error(key, f"must be a list, got {_kind(value)}{hint}")
            return ()
        if required and not value:
            self.error(key, "must list at least one entry")
        items: list[str] = []
        for index, item in enumerate(value):
            problem = _list_item_problem(item, check)
            if problem is not None:
                self.error(f"{key}[{index}]", problem)
            else:
                items.append(item)
        return tuple(items) if len(items) == len(value) else ()

    def path(self, key: str, *, required: bool = False, must_be_file: bool = False) -> Path | None:
        """A file path, resolved against the config file's directory."""
        text = self.string(key, required=required)
        if not text:
            return None
        if "\0" in text:
            self.error(key, "must not contain a NUL character")
            return None
        path = self.report.resolve(text)
        if must_be_file:
            problem = _file_problem(path)
            if problem is not None:
                self.error(key, problem)
                return None
        return path

    def certificates(self, key: str, *, required: bool = False) -> Path | None:
        """A file that must hold at least one PEM certificate (a CA bundle, a server
        certificate and its chain): a key file or a DER file named here is an error."""
        path = self.path(key, required=required, must_be_file=True)
        if path is None:
            return None
        try:
            head = path.read_bytes()[: 1 << 20]
        except OSError as exc:
            self.error(key, f"cannot read {path}: {exc.strerror or exc}")
            return None
        if b"-----BEGIN CERTIFICATE-----" not in head:
            self.error(key, f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
            return None
        return path

    def listen(self, key: str, default: str | None) -> tuple[str, int]:
        """A ``host:port`` / ``[v6]:port`` listen address; required when no default."""
        text = self.string(key, default or "", required=default is None)
        if not text:
            return "", 0
        parsed = _parse_listen(text)
        if isinstance(parsed, str):
            self.error(key, parsed)
            return "", 0
        return parsed

    def secret(self, key: str) -> tuple[str, str]:
        """A required secret from ``key`` or ``key_file``: (value, the key it came from)."""
        file_key = f"{key}_file"
        inline, from_file = self.get(key), self.get(file_key)
        if inline is not None and from_file is not None:
            self.error(key, f"give {key} or {file_key}, not both")
            return "", key
        if from_file is not None:
            return self._read_secret(file_key), file_key
        if inline is None:
            self.error(key, f"required (or {file_key})")
            return "", key
        if not isinstance(inline, str):
            self.error(key, _not_a_string(inline, secret=True))
            return "", key
        if not inline:
            self.error(key, "must not be empty")
        return inline, key

    def _read_secret(self, file_key: str) -> str:
        path = self.path(file_key)
        if path is None:
            return ""
        try:
            with path.open("rb") as file:
                raw = file.read(_MAX_SECRET_FILE + 1)
        except OSError as exc:
            self.error(file_key, f"cannot read {path}: {_oserror(exc)}")
            return ""
        if len(raw) > _MAX_SECRET_FILE:
            self.error(file_key, f"{path} is larger than {_MAX_SECRET_FILE} bytes; not a secret")
            return ""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.error(file_key, f"{path} is not UTF-8 text")
            return ""
        text = text.removesuffix("\r\n") if text.endswith("\r\n") else text.removesuffix("\n")
        if not text:
            self.error(file_key, f"{path} is empty")
        elif "\n" in text or "\r" in text:
            self.warn(file_key, f"the secret in {path} has a line break after the first is removed")
        return text


def _list_item_problem(item: object, check: Callable[[str], str | None] | None) -> str | None:
    if not isinstance(item, str):
        return _not_a_string(item)
    if not item.strip():
        return "must not be empty"
    return check(item) if check is not None else None


def _file_problem(path: Path) -> str | None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot read {path}: {_oserror(exc)}"
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file"
    return None


def _dn_problem(text: str) -> str | None:
    if "=" not in text:
        return f"must be a DN like cn=name,ou=groups,dc=example,dc=org, got {text!r}"
    return None


def _dn_list(m: _Map, key: str) -> tuple[str, ...]:
    """A list of DNs; refused when it looks like one DN that YAML split at its commas.

    `[cn=wiki,ou=services,dc=example,dc=org]` in flow style is four one-RDN strings: the
    service account would then fail every bind with no word from check-config.
    """
    dns = m.str_list(key, check=_dn_problem)
    if len(dns) > 1 and all("," not in dn for dn in dns):
        joined = ",".join(dns)
        m.error(
            key,
            f"looks like one DN split at its commas ({joined}): a YAML flow list [a, b]"
            " splits at commas; write one DN per line (- cn=...,ou=...,dc=...) or quote each",
        )
        return ()
    return dns


def _parse_listen(text: str) -> tuple[str, int] | str:
    """(host, port) from ``host:port`` or ``[v6]:port``; otherwise the problem."""
    usage = (
        f'must be "host:port" with an IP address, e.g. 127.0.0.1:1812 or [::1]:1812, got {text!r}'
    )
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            return usage
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            return usage
        if ":" in host:
            return f"put an IPv6 address in brackets, e.g. [::1]:1812, got {text!r}"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"host must be an IP address (names are not resolved), got {text!r}"
    if text.startswith("[") and address.version != 6:
        return f"only IPv6 addresses go in brackets, got {text!r}"
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        return f"port must be a number from 0 to 65535, got {text!r}"
    return str(address), int(port_text)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- directory ----------------------------------------------------------------------------

_DIRECTORY_KEYS: Final = (
    "urls",
    "bind_dn",
    "bind_password",
    "bind_password_file",
    "user_base",
    "user_filter",
    "start_tls",
    "ca_file",
    "timeout",
    "group_filter",
    "pool_size",
    "cache_ttl",
    "id_attribute",
    "name_attribute",
)


def _ldap_url_problem(url: str) -> str | None:
    """What is wrong with one directory URL; never echoes a URL holding credentials."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"not a valid URL: {url!r}"
    if "@" in parts.netloc:
        return "must not hold a user name or password; the bridge binds as directory.bind_dn"
    if parts.scheme.lower() not in {"ldap", "ldaps"}:
        return f"must start with ldap:// or ldaps://, got {url!r}"
    if not parts.hostname:
        return f"has no host, got {url!r}"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:  # not a number, out of range, or 0; None when absent
        return f"port must be a number from 1 to 65535, got {url!r}"
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        return f"must be scheme://host[:port] only, without a path or query, got {url!r}"
    return None


_PLACEHOLDER: Final = re.compile(r"\{([^{}]*)\}")


def _filter_problem(text: str, allowed: tuple[str, ...]) -> str | None:
    """An LDAP filter template: parenthesised, only ``allowed`` placeholders, at least one.

    Placeholders are substituted by plain replacement, so there is no brace escaping: a
    literal brace is written the RFC 4515 way, as \\7b or \\7d.
    """
    wanted = " or ".join(f"{{{name}}}" for name in allowed)
    if not (text.startswith("(") and text.endswith(")")):
        return f"must be an LDAP filter in parentheses, got {text!r}"
    names = _PLACEHOLDER.findall(text)
    for name in names:
        if name not in allowed:
            return f"unknown placeholder {{{name}}}; only {wanted} may be used"
    if "{" in _PLACEHOLDER.sub("", text) or "}" in _PLACEHOLDER.sub("", text):
        return f"unmatched brace in {text!r}; write a literal brace as \\7b or \\7d"
    if not names:
        return f"must contain {wanted}"
    return None


def _directory_urls(m: _Map, start_tls: bool) -> tuple[str, ...]:
    urls = m.str_list("urls", required=True, check=_ldap_url_problem)
    ldaps = [url for url in urls if url.lower().startswith("ldaps:")]
    if start_tls and ldaps:
        m.error("start_tls", f"cannot be used with ldaps:// URLs ({ldaps[0]}); choose one")
    for index, url in enumerate(urls):
        host = urlsplit(url).hostname or ""
        if url.lower().startswith("ldap:") and not start_tls and not _is_loopback(host):
            m.warn(f"urls[{index}]", "plain ldap:// without start_tls sends passwords in clear")
    return urls


def _directory(report: _Report, data: Mapping[object, object]) -> DirectoryConfig:
    m = _Map(report, "directory", data, _DIRECTORY_KEYS)
    start_tls = m.boolean("start_tls", False)
    urls = _directory_urls(m, start_tls)
    bind_dn = m.string("bind_dn", required=True)
    bind_password, _ = m.secret("bind_password")
    user_base = m.string("user_base", required=True)
    user_filter = m.string("user_filter", _DEFAULT_DIRECTORY.user_filter)
    if problem := _filter_problem(user_filter, ("username",)):
        m.error("user_filter", problem)
    ca_file = m.certificates("ca_file")
    timeout = m.number("timeout", _DEFAULT_DIRECTORY.timeout, 0, 60, lo_open=True)
    group_filter = m.string("group_filter", _DEFAULT_DIRECTORY.group_filter)
    if problem := _filter_problem(group_filter, ("dn", "username")):
        m.error("group_filter", problem)
    return DirectoryConfig(
        urls=urls,
        bind_dn=bind_dn,
        bind_password=bind_password,
        user_base=user_base,
        user_filter=user_filter,
        start_tls=start_tls,
        ca_file=ca_file,
        timeout=timeout,
        group_filter=group_filter,
        pool_size=m.integer("pool_size", _DEFAULT_DIRECTORY.pool_size, 1, 64),
        cache_ttl=m.integer("cache_ttl", _DEFAULT_DIRECTORY.cache_ttl, 0, 86_400),
        id_attribute=_attribute(m, "id_attribute", _DEFAULT_DIRECTORY.id_attribute),
        name_attribute=_attribute(m, "name_attribute", _DEFAULT_DIRECTORY.name_attribute),
    )


_ATTRIBUTE: Final = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+")


def _attribute(m: _Map, key: str, default: str) -> str:
    """An attribute description: a name (letters, digits, hyphens) or a numeric OID."""
    text = m.string(key, default)
    if _ATTRIBUTE.fullmatch(text):
        return text
    m.error(key, f"must be an attribute name such as {default}, got {text!r}")
    return default


# --- mfa, store, log ----------------------------------------------------------------------


def _issuer_problem(text: str) -> str | None:
    return "must not contain ':' (it separates issuer and user in the app)" if ":" in text else None


def _mfa(report: _Report, data: Mapping[object, object]) -> MfaConfig:
    defaults = _DEFAULT_MFA
    m = _Map(report, "mfa", data, _MFA_KEYS)
    issuer = m.string("issuer", defaults.issuer)
    if problem := _issuer_problem(issuer):
        m.error("issuer", problem)
    return MfaConfig(
        issuer=issuer,
        enrollment_days=m.integer("enrollment_days", defaults.enrollment_days, 0),
        max_failures=m.integer("max_failures", defaults.max_failures, 1, 100),
        window=m.integer("window", defaults.window, 0, 10),
        step=m.integer("step", defaults.step, 15, 300),
        exempt_users=m.str_list("exempt_users"),
        exempt_groups=_dn_list(m, "exempt_groups"),
    )


def _store(report: _Report, data: Mapping[object, object]) -> StoreConfig:
    m = _Map(report, "store", data, ("path", "key_file", "url", "password_file"))
    url = _store_url(m)
    if url is not None:
        if m.get("path") is not None:
            m.error("path", "give store.path (SQLite) or store.url (PostgreSQL), not both")
        key_file = m.path("key_file", required=True)
        password_file = m.path("password_file", must_be_file=True)
        return StoreConfig(Path(), key_file or Path(), url=url, password_file=password_file)
    if m.get("password_file") is not None:
        m.error("password_file", "only for store.url (a PostgreSQL store)")
    path = m.path("path", required=True)
    if path is not None and (path.is_dir() or not path.name):
        m.error("path", f"{path} is a directory; give the database file, e.g. state.db")
        path = None
    key_file = m.path("key_file")
    if key_file is None and path is not None:
        key_file = path.with_suffix(".key")
    if key_file is not None and key_file == path:
        m.error("key_file", "must not be the database file itself; set store.key_file")
    elif key_file is not None and key_file.is_dir():
        m.error("key_file", f"{key_file} is a directory; give the key file, e.g. state.key")
    return StoreConfig(path=path or Path(), key_file=key_file or Path())


def _store_url(m: _Map) -> str | None:
    """`store.url`, checked as libpq will read it; None when not given."""
    if m.get("url") is None:
        return None
    url = m.string("url")
    if not url.lower().startswith(("postgresql://", "postgres://")):
        m.error("url", "must be a PostgreSQL URL: postgresql://USER@HOST:PORT/DBNAME")
        return None
    import psycopg  # noqa: PLC0415 - only for a PostgreSQL store (its memory, its time)
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        m.error("url", f"not a valid PostgreSQL URL: {str(exc).strip()}")
        return None
    return url


def _check_tcp_ports(
    report: _Report,
    ldap_proxy: LdapProxyConfig | None,
    demo: DemoConfig | None,
    portal: PortalConfig | None,
    metrics: MetricsConfig | None,
) -> None:
    """Two TCP listeners on one port: the second would fail at start, so say so now."""
    listeners: list[tuple[str, tuple[str, int]]] = []
    if ldap_proxy is not None:
        listeners.append(("ldap_proxy.listen", (ldap_proxy.listen_host, ldap_proxy.listen_port)))
        if ldap_proxy.listen_tls is not None:
            listeners.append(("ldap_proxy.listen_tls", ldap_proxy.listen_tls))
    if demo is not None:
        listeners.append(("demo.listen", (demo.listen_host, demo.listen_port)))
    if portal is not None:
        listeners.append(("portal.listen", (portal.listen_host, portal.listen_port)))
    if metrics is not None:
        listeners.append(("metrics.listen", (metrics.listen_host, metrics.listen_port)))
    for index, (key, where) in enumerate(listeners):
        for earlier, there in listeners[:index]:
            same_section = earlier.split(".")[0] == key.split(".")[0]  # checked there already
            if not same_section and _same_tcp_port(where, there):
                report.error(key, f"same port as {earlier}")
                break


MAX_WORKERS: Final = 64


def _server(report: _Report, data: Mapping[object, object]) -> ServerConfig:
    m = _Map(report, "server", data, ("workers",))
    if m.get("workers") == "auto":
        return ServerConfig(workers=max(1, min(MAX_WORKERS, os.cpu_count() or 1)))
    workers = m.get("workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        m.error(
            "workers", f"must be auto or an integer from 1 to {MAX_WORKERS}, got {_show(workers)}"
        )
        return ServerConfig()
    return ServerConfig(workers=m.integer("workers", 1, 1, MAX_WORKERS))


def _log(report: _Report, data: Mapping[object, object]) -> LogConfig:
    m = _Map(report, "log", data, ("level", "format", "audit"))
    audit = m.string("audit", _DEFAULT_LOG.audit)
    if audit not in ("stdout", "off"):
        path = m.path("audit")
        audit = str(path) if path is not None else _DEFAULT_LOG.audit
        if path is not None and not path.parent.is_dir():
            m.error("audit", f"{path.parent} is not a directory (or say stdout or off)")
    return LogConfig(
        level=m.choice("level", ("debug", "info", "warn", "error"), _DEFAULT_LOG.level),
        format=m.choice("format", ("text", "json"), _DEFAULT_LOG.format),
        audit=audit,
    )


# --- radius -------------------------------------------------------------------------------

_RADIUS_KEYS: Final = (
    "listen",
    "mode",
    "require_message_authenticator",
    "reject_delay",
    "state_ttl",
    "clients",
    "eap",
    "replies",
    "dictionaries",
)
_CLIENT_KEYS: Final = (
    "name",
    "address",
    "secret",
    "secret_file",
    "require_message_authenticator",
    "mode",
    "mfa",
    "allowed_groups",
    "remember_seconds",
)
_MODES: Final = ("append", "challenge", "auto")
_REMEMBER_LIMIT: Final = 30 * 86_400  # a month: a device is asked for a code again after
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(m: _Map) -> _Network | None:
    text = m.string("address", required=True)
    if not text:
        return None
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            m.error("address", f"must be an IP address or CIDR network, got {text!r}")
        else:
            m.error("address", f"{text!r} has host bits set; did you mean {loose}?")
        return None
    if network.prefixlen == 0:
        m.warn("address", f"{network} lets every address in: any host with the secret may ask")
    return network


def _radius_client(
    report: _Report, path: str, data: Mapping[object, object], default_rma: bool
) -> tuple[_Network | None, RadiusClient | None]:
    """The client's network (when valid, for the overlap check) and the client (when all is)."""
    before = len(report.problems)
    m = _Map(report, path, data, _CLIENT_KEYS)
    network = _network(m)
    secret, secret_key = m.secret("secret")
    if 0 < len(secret) <= _SHORT_SECRET:
        m.warn(
            secret_key,
            f"only {len(secret)} characters; use 16 or more random characters"
            " (openssl rand -base64 24)",
        )
    rma = m.boolean("require_message_authenticator", default_rma)
    name = m.string("name", str(network))
    mode = m.choice("mode", _MODES, "auto") if m.get("mode") is not None else None
    mfa = _client_mfa(m)
    allowed = _dn_list(m, "allowed_groups")
    remember = m.integer("remember_seconds", 0, 0, _REMEMBER_LIMIT)
    if not mfa and remember:
        m.error("remember_seconds", "has no effect with mfa: off (no code is ever asked)")
    if network is None or len(report.problems) > before:
        return network, None
    client = RadiusClient(
        network=network,
        secret=secret.encode("utf-8"),
        require_message_authenticator=rma,
        name=name,
        mode=mode,
        mfa=mfa,
        allowed_groups=allowed,
        remember_seconds=remember,
    )
    return network, client


def _client_mfa(m: _Map) -> bool:
    """A client's `mfa: required | off`; YAML reads a bare off as false, on as true."""
    value = m.get("mfa")
    if isinstance(value, bool):
        return value
    return m.choice("mfa", ("required", "off"), "required") == "required"


def _radius_clients(m: _Map, default_rma: bool) -> tuple[RadiusClient, ...]:
    value = m.get("clients")
    if value is None or value == []:
        m.error("clients", "required: a list with at least one client (address and secret)")
        return ()
    if not isinstance(value, list):
        m.error("clients", f"must be a list of clients, got {_kind(value)}")
        return ()
    clients: list[RadiusClient] = []
    networks: list[tuple[int, _Network]] = []
    for index, item in enumerate(value):
        path = m.sub(f"clients[{index}]")
        if not isinstance(item, dict):
            m.report.error(path, f"must be a mapping with address and secret, got {_kind(item)}")
            continue
        network, client = _radius_client(m.report, path, item, default_rma)
        if client is not None:
            clients.append(client)
        if network is None:
            continue
        for other_index, other in networks:
            if network.version == other.version and network.overlaps(other):
                m.report.error(
                    f"{path}.address",
                    f"{network} overlaps radius.clients[{other_index}].address ({other});"
                    " each NAS must match exactly one client",
                )
        networks.append((index, network))
    return tuple(clients)


def _radius(report: _Report, data: Mapping[object, object]) -> RadiusConfig:
    m = _Map(report, "radius", data, _RADIUS_KEYS)
    host, port = m.listen("listen", "127.0.0.1:1812")
    default_rma = m.boolean("require_message_authenticator", True)
    clients = _radius_clients(m, default_rma)
    return RadiusConfig(
        listen_host=host,
        listen_port=port,
        mode=m.choice("mode", _MODES, _DEFAULT_RADIUS.mode),
        require_message_authenticator=default_rma,
        reject_delay=m.number("reject_delay", _DEFAULT_RADIUS.reject_delay, 0, 10),
        state_ttl=m.integer("state_ttl", _DEFAULT_RADIUS.state_ttl, 10, 600),
        clients=clients,
        eap=_eap(report, eap) if (eap := m.section("eap")) is not None else None,
        replies=_replies(m, {client.name for client in clients}),
        dictionaries=_files(m, "dictionaries"),
    )


def _files(m: _Map, key: str) -> tuple[Path, ...]:
    """A list of readable files, resolved against the config file's directory."""
    paths = []
    for index, text in enumerate(m.str_list(key)):
        path = m.report.resolve(text)
        if (problem := _file_problem(path)) is not None:
            m.error(f"{key}[{index}]", problem)
        paths.append(path)
    return tuple(paths)


def _replies(m: _Map, client_names: set[str]) -> tuple[ReplyRule, ...]:
    """radius.replies: each a mapping of group (optional), clients (optional) and
    attributes (name: value, or name: [values]); names and types are checked against the
    dictionary by the RADIUS layer (`bridge.radius.replies`)."""
    value = m.get("replies")
    if value is None:
        return ()
    if not isinstance(value, list):
        m.error("replies", f"must be a list of rules, got {_kind(value)}")
        return ()
    rules = []
    for index, item in enumerate(value):
        path = m.sub(f"replies[{index}]")
        if not isinstance(item, dict):
            m.report.error(path, f"must be a mapping with attributes, got {_kind(item)}")
            continue
        r = _Map(m.report, path, item, ("group", "clients", "attributes"))
        group = r.string("group") or None
        if group is not None and (problem := _dn_problem(group)):
            r.error("group", problem)
        clients = r.str_list("clients")
        for position, name in enumerate(clients):
            if name not in client_names:
                close = difflib.get_close_matches(name, sorted(client_names), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                r.error(f"clients[{position}]", f"no radius.clients entry is named {name!r}{hint}")
        attributes = r.get("attributes")
        if not isinstance(attributes, dict) or not attributes:
            r.error("attributes", "required: a mapping of attribute names to values")
            continue
        pairs: list[tuple[str, object]] = []
        for name, given in attributes.items():
            for one in given if isinstance(given, list) else [given]:
                if not isinstance(one, (str, int)) or isinstance(one, bool):
                    r.error(f"attributes.{name}", f"must be a string or a number, got {_kind(one)}")
                    continue
                pairs.append((str(name), one))
        rules.append(ReplyRule(tuple(pairs), group, tuple(clients)))
    return tuple(rules)


def _eap(report: _Report, data: Mapping[object, object]) -> EapConfig | None:
    m = _Map(report, "radius.eap", data, ("certificate", "key", "ca_file"))
    certificate = m.certificates("certificate", required=True)
    key = m.path("key", required=True, must_be_file=True)
    ca_file = m.certificates("ca_file")
    if certificate is None or key is None:
        return None
    return EapConfig(certificate=certificate, key=key, ca_file=ca_file)


# --- ldap_proxy, demo ---------------------------------------------------------------------


_LDAP_PROXY_KEYS: Final = (
    "listen",
    "passthrough_dns",
    "allow_anonymous",
    "tls",
    "listen_tls",
    "require_tls",
    "max_connections",
    "max_connections_per_address",
    "idle_timeout",
    "rebind_seconds",
    "allowed_groups",
)
_DEFAULT_LDAP_PROXY: Final = LdapProxyConfig(listen_host="", listen_port=0)
_PORTAL_KEYS: Final = (
    "listen",
    "tls",
    "public_url",
    "allow_http",
    "trusted_proxies",
    "session_idle",
    "session_max",
    "max_attempts_per_user",
    "max_attempts_per_address",
    "attempt_window",
    "max_connections",
    "max_connections_per_address",
    "request_timeout",
    "idle_timeout",
    "failure_delay",
)
_DEFAULT_PORTAL: Final = PortalConfig(listen_host="", listen_port=0)


def _portal(report: _Report, data: Mapping[object, object]) -> PortalConfig:
    m = _Map(report, "portal", data, _PORTAL_KEYS)
    defaults = _DEFAULT_PORTAL
    host, port = m.listen("listen", None)
    tls_data = m.section("tls")
    tls = None
    if tls_data is not None:
        t = _Map(report, "portal.tls", tls_data, ("certificate", "key"))
        certificate = t.certificates("certificate", required=True)
        key = t.path("key", required=True, must_be_file=True)
        if certificate is not None and key is not None:
            tls = LdapProxyTls(certificate=certificate, key=key)
    allow_http = m.boolean("allow_http", defaults.allow_http)
    if tls_data is None and host and not allow_http and not _is_loopback(host):
        m.error(
            "listen",
            f"{host} is not a loopback address: configure portal.tls (certificate and key),"
            " or set portal.allow_http: true behind a TLS-terminating proxy",
        )
    public_url = m.string("public_url") or None
    if public_url is not None:
        if not public_url.startswith(("https://", "http://")) or any(
            c in public_url for c in " <>\"'"
        ):
            m.error("public_url", f"must be an http(s):// URL, got {_show(public_url)}")
        elif len(public_url) > 200:
            m.error("public_url", "must be at most 200 characters (it goes into RADIUS replies)")
    idle = m.number("session_idle", defaults.session_idle, 0, 86_400, lo_open=True)
    proxies = []
    for index, text in enumerate(m.str_list("trusted_proxies")):
        try:
            proxies.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            m.error(f"trusted_proxies[{index}]", f"must be an IP address or network, got {text!r}")
    return PortalConfig(
        listen_host=host,
        listen_port=port,
        tls=tls,
        public_url=public_url,
        allow_http=allow_http,
        trusted_proxies=tuple(proxies),
        session_idle=idle,
        session_max=m.number("session_max", defaults.session_max, idle, 7 * 86_400),
        max_attempts_per_user=m.integer(
            "max_attempts_per_user", defaults.max_attempts_per_user, 1, 10_000
        ),
        max_attempts_per_address=m.integer(
            "max_attempts_per_address", defaults.max_attempts_per_address, 1, 1_000_000
        ),
        attempt_window=m.number("attempt_window", defaults.attempt_window, 0, 86_400, lo_open=True),
        max_connections=m.integer("max_connections", defaults.max_connections, 1, 100_000),
        max_connections_per_address=m.integer(
            "max_connections_per_address", defaults.max_connections_per_address, 1, 100_000
        ),
        request_timeout=m.number("request_timeout", defaults.request_timeout, 0, 600, lo_open=True),
        idle_timeout=m.number("idle_timeout", defaults.idle_timeout, 0, 3600, lo_open=True),
        failure_delay=m.number("failure_delay", defaults.failure_delay, 0, 30),
    )


def _ldap_proxy_tls(report: _Report, data: Mapping[object, object]) -> LdapProxyTls | None:
    m = _Map(report, "ldap_proxy.tls", data, ("certificate", "key"))
    certificate = m.certificates("certificate", required=True)
    key = m.path("key", required=True, must_be_file=True)
    if certificate is None or key is None:
        return None
    return LdapProxyTls(certificate=certificate, key=key)


def _ldap_proxy(report: _Report, data: Mapping[object, object]) -> LdapProxyConfig:
    m = _Map(report, "ldap_proxy", data, _LDAP_PROXY_KEYS)
    defaults = _DEFAULT_LDAP_PROXY
    host, port = m.listen("listen", None)
    tls_data = m.section("tls")
    tls = _ldap_proxy_tls(report, tls_data) if tls_data is not None else None
    listen_tls = m.listen("listen_tls", "") if m.get("listen_tls") is not None else None
    require_tls = m.boolean("require_tls", defaults.require_tls)
    if tls_data is None:
        if listen_tls is not None:
            m.error("listen_tls", "needs ldap_proxy.tls (certificate and key)")
        if require_tls:
            m.error("require_tls", "needs ldap_proxy.tls (certificate and key)")
        if host and not _is_loopback(host):
            m.warn(
                "listen",
                f"{host} is not a loopback address and there is no ldap_proxy.tls: passwords"
                " and codes would cross the network in clear",
            )
    if listen_tls is not None and _same_tcp_port((host, port), listen_tls):
        m.error("listen_tls", "same port as ldap_proxy.listen")
    return LdapProxyConfig(
        listen_host=host,
        listen_port=port,
        passthrough_dns=_dn_list(m, "passthrough_dns"),
        allow_anonymous=m.boolean("allow_anonymous", False),
        tls=tls,
        listen_tls=listen_tls,
        require_tls=require_tls,
        max_connections=m.integer("max_connections", defaults.max_connections, 1, 1_000_000),
        max_connections_per_address=m.integer(
            "max_connections_per_address", defaults.max_connections_per_address, 1, 1_000_000
        ),
        idle_timeout=m.number("idle_timeout", defaults.idle_timeout, 0, 86_400, lo_open=True),
        rebind_seconds=m.integer("rebind_seconds", defaults.rebind_seconds, 0, 86_400),
        allowed_groups=_dn_list(m, "allowed_groups"),
    )


def _demo(report: _Report, data: Mapping[object, object]) -> DemoConfig:
    m = _Map(report, "demo", data, ("ldif", "listen"))
    ldif = m.path("ldif", required=True, must_be_file=True)
    host, port = m.listen("listen", "127.0.0.1:10389")
    return DemoConfig(ldif=ldif or Path(), listen_host=host, listen_port=port)


def _same_tcp_port(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two TCP listeners would fight over one port (port 0 never does)."""
    if a[1] == 0 or a[1] != b[1]:
        return False
    return a[0] == b[0] or any(ipaddress.ip_address(host).is_unspecified for host in (a[0], b[0]))


# --- the whole config ---------------------------------------------------------------------

_SECTIONS: Final = (
    "directory",
    "mfa",
    "store",
    "radius",
    "ldap_proxy",
    "portal",
    "metrics",
    "demo",
    "log",
    "server",
)


def parse_config(data: object, base_dir: Path) -> Config:
    """Validate what ``yaml.safe_load`` gave; relative paths are resolved against ``base_dir``.

    Raises ConfigError listing every problem found.
    """
    if not isinstance(data, dict):
        if data is None:
            message = "the config is empty; it needs the sections directory, store and radius"
        else:
            message = (
                f"must be a mapping of sections (directory, store, radius, ...), got {_kind(data)}"
            )
        raise ConfigError([f"{_TOP}: {message}"])
    report = _Report(Path(os.path.abspath(base_dir)))
    top = _Map(report, "", data, _SECTIONS)
    directory_data = top.section("directory", required=True)
    store_data = top.section("store", required=True)
    radius_data = top.section("radius", required=True)
    ldap_proxy_data = top.section("ldap_proxy")
    demo_data = top.section("demo")
    portal_data = top.section("portal")
    metrics_data = top.section("metrics")

    directory = _directory(report, directory_data) if directory_data is not None else None
    mfa = _mfa(report, top.section("mfa") or {})
    store = _store(report, store_data) if store_data is not None else None
    radius = _radius(report, radius_data) if radius_data is not None else None
    ldap_proxy = _ldap_proxy(report, ldap_proxy_data) if ldap_proxy_data is not None else None
    demo = _demo(report, demo_data) if demo_data is not None else None
    portal = _portal(report, portal_data) if portal_data is not None else None
    metrics = None
    if metrics_data is not None:
        host, port = _Map(report, "metrics", metrics_data, ("listen",)).listen("listen", None)
        metrics = MetricsConfig(host, port)
    log = _log(report, top.section("log") or {})
    server = _server(report, top.section("server") or {})

    _check_tcp_ports(report, ldap_proxy, demo, portal, metrics)

    if report.problems or directory is None or store is None or radius is None:
        raise ConfigError(report.problems)
    return Config(
        directory=directory,
        mfa=mfa,
        store=store,
        radius=radius,
        ldap_proxy=ldap_proxy,
        portal=portal,
        metrics=metrics,
        demo=demo,
        log=log,
        warnings=tuple(report.warnings),
        server=server,
    )
