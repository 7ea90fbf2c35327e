"""The config file: YAML to typed dataclasses, every problem reported at once with its path."""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import (
    Config,
    ConfigError,
    DemoConfig,
    DirectoryConfig,
    LdapProxyConfig,
    LdapProxyTls,
    LogConfig,
    MfaConfig,
    RadiusClient,
    RadiusConfig,
    StoreConfig,
    default_config_path,
    load_config,
    parse_config,
)
from bridge.radius.replies import compile_replies

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "bridge.yaml"

LDAP_PASSWORD = "ldap-Service-Passw0rd"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"  # enough for config
RADIUS_SECRET = "radius-shared-secret-0123456789"

MINIMAL: dict[str, Any] = {
    "directory": {
        "urls": ["ldaps://ldap.example.org"],
        "bind_dn": "cn=bridge,ou=services,dc=example,dc=org",
        "bind_password": LDAP_PASSWORD,
        "user_base": "ou=people,dc=example,dc=org",
    },
    "store": {"path": "/var/lib/mfa-bridge/state.db"},
    "radius": {"clients": [{"address": "192.0.2.10", "secret": RADIUS_SECRET}]},
}


def minimal() -> dict[str, Any]:
    """A fresh copy of the smallest valid config, to break one thing at a time."""
    return copy.deepcopy(MINIMAL)


def problems_of(data: object, base_dir: Path) -> tuple[str, ...]:
    """The problems parse_config reports for `data`; fails the test if it accepts it."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir)
    return info.value.problems


def write(path: Path, text: str) -> Path:
    """Write `text` to `path` and return the path."""
    path.write_text(text, encoding="utf-8")
    return path


# --- valid configs ------------------------------------------------------------------------


def test_full_config_round_trips_to_dataclasses(tmp_path: Path) -> None:
    """Every key of a full config lands in the matching dataclass field."""
    ca = write(tmp_path / "ca.pem", "-----BEGIN CERTIFICATE-----\n")
    ldif = write(tmp_path / "demo.ldif", "dn: dc=example,dc=org\n")
    text = f"""
directory:
  urls: [ldap://ldap1.example.org:389, "ldap://[2001:db8::1]"]
  start_tls: true
  ca_file: {ca}
  bind_dn: cn=bridge,ou=services,dc=example,dc=org
  bind_password: {LDAP_PASSWORD}
  user_base: ou=people,dc=example,dc=org
  user_filter: "(sAMAccountName={{username}})"
  timeout: 2.5
  group_filter: "(member={{dn}})"
  pool_size: 8
  id_attribute: objectGUID
  name_attribute: sAMAccountName
mfa:
  issuer: Example Corp
  enrollment_days: 0
  max_failures: 3
  window: 2
  step: 60
  exempt_users: [svc-monitor]
  exempt_groups: ["cn=exempt,ou=groups,dc=example,dc=org"]
store:
  path: /var/lib/mfa-bridge/state.db
  key_file: /etc/mfa-bridge/state.key
radius:
  listen: "[::1]:11812"
  mode: challenge
  require_message_authenticator: false
  reject_delay: 0
  state_ttl: 60
  clients:
    - name: vpn
      address: 192.0.2.0/24
      secret: {RADIUS_SECRET}
      require_message_authenticator: true
    - address: 2001:db8:1::/48
      secret: "{RADIUS_SECRET}x"
ldap_proxy:
  listen: 0.0.0.0:1389
  passthrough_dns: ["cn=wiki,ou=services,dc=example,dc=org"]
  allow_anonymous: true
demo:
  ldif: demo.ldif
  listen: 127.0.0.1:0
log:
  level: debug
  format: json
"""
    config = load_config(write(tmp_path / "bridge.yaml", text))
    assert config == Config(
        directory=DirectoryConfig(
            urls=("ldap://ldap1.example.org:389", "ldap://[2001:db8::1]"),
            bind_dn="cn=bridge,ou=services,dc=example,dc=org",
            bind_password=LDAP_PASSWORD,
            user_base="ou=people,dc=example,dc=org",
            user_filter="(sAMAccountName={username})",
            start_tls=True,
            ca_file=ca,
            timeout=2.5,
            group_filter="(member={dn})",
            pool_size=8,
            id_attribute="objectGUID",
            name_attribute="sAMAccountName",
        ),
        mfa=MfaConfig(
            issuer="Example Corp",
            enrollment_days=0,
            max_failures=3,
            window=2,
            step=60,
            exempt_users=("svc-monitor",),
            exempt_groups=("cn=exempt,ou=groups,dc=example,dc=org",),
        ),
        store=StoreConfig(
            path=Path("/var/lib/mfa-bridge/state.db"),
            key_file=Path("/etc/mfa-bridge/state.key"),
        ),
        radius=RadiusConfig(
            listen_host="::1",
            listen_port=11812,
            mode="challenge",
            require_message_authenticator=False,
            reject_delay=0.0,
            state_ttl=60,
            clients=(
                RadiusClient(
                    network=ipaddress.IPv4Network("192.0.2.0/24"),
                    secret=RADIUS_SECRET.encode(),
                    require_message_authenticator=True,
                    name="vpn",
                ),
                RadiusClient(
                    network=ipaddress.IPv6Network("2001:db8:1::/48"),
                    secret=(RADIUS_SECRET + "x").encode(),
                    require_message_authenticator=False,
                    name="2001:db8:1::/48",
                ),
            ),
        ),
        ldap_proxy=LdapProxyConfig(
            listen_host="0.0.0.0",
            listen_port=1389,
            passthrough_dns=("cn=wiki,ou=services,dc=example,dc=org",),
            allow_anonymous=True,
        ),
        portal=None,
        metrics=None,
        demo=DemoConfig(ldif=ldif, listen_host="127.0.0.1", listen_port=0),
        log=LogConfig(level="debug", format="json"),
        warnings=(
            "ldap_proxy.listen: 0.0.0.0 is not a loopback address and there is no"
            " ldap_proxy.tls: passwords and codes would cross the network in clear",
        ),
    )


def test_minimal_config_takes_the_defaults(tmp_path: Path) -> None:
    """Optional sections and keys fall back to the documented defaults."""
    config = parse_config(minimal(), tmp_path)
    assert config.mfa == MfaConfig()
    assert config.log == LogConfig()
    assert config.ldap_proxy is None
    assert config.demo is None
    assert (config.radius.listen_host, config.radius.listen_port) == ("127.0.0.1", 1812)
    assert config.radius.mode == "auto"
    assert config.radius.clients[0].require_message_authenticator is True
    assert config.radius.clients[0].name == "192.0.2.10/32"
    assert config.directory.user_filter == "(uid={username})"
    assert config.directory.timeout == 5.0
    assert config.directory.ca_file is None
    assert config.warnings == ()


def test_null_values_mean_not_set(tmp_path: Path) -> None:
    """A key or optional section given as null (or left empty) takes its default."""
    data = minimal()
    data["directory"]["ca_file"] = None
    data["mfa"] = None
    data["ldap_proxy"] = None
    config = parse_config(data, tmp_path)
    assert config.directory.ca_file is None
    assert config.mfa == MfaConfig()
    assert config.ldap_proxy is None


def test_int_is_accepted_where_a_number_is_wanted(tmp_path: Path) -> None:
    """`timeout: 5` is read as 5.0 seconds."""
    data = minimal()
    data["directory"]["timeout"] = 5
    config = parse_config(data, tmp_path)
    assert config.directory.timeout == 5.0
    assert isinstance(config.directory.timeout, float)


def test_client_overrides_require_message_authenticator(tmp_path: Path) -> None:
    """A client's require_message_authenticator overrides the radius-wide default."""
    data = minimal()
    data["radius"]["require_message_authenticator"] = False
    data["radius"]["clients"].append(
        {"address": "198.51.100.7", "secret": RADIUS_SECRET, "require_message_authenticator": True}
    )
    clients = parse_config(data, tmp_path).radius.clients
    assert [c.require_message_authenticator for c in clients] == [False, True]


def test_listen_addresses_ipv4_and_bracketed_ipv6(tmp_path: Path) -> None:
    """`listen` takes "IPv4:port" and "[IPv6]:port", and port 0 for tests."""
    data = minimal()
    data["radius"]["listen"] = "[::]:0"
    data["ldap_proxy"] = {"listen": "192.0.2.1:389"}
    config = parse_config(data, tmp_path)
    assert (config.radius.listen_host, config.radius.listen_port) == ("::", 0)
    assert config.ldap_proxy is not None
    assert (config.ldap_proxy.listen_host, config.ldap_proxy.listen_port) == ("192.0.2.1", 389)


# --- problems: all at once, with paths ----------------------------------------------------


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Three mistakes in different sections give exactly three problems, each with its path."""
    data = minimal()
    data["directory"]["timeout"] = "abc"
    data["mfa"] = {"max_failures": 0}
    data["radius"]["clients"].append({"address": "198.51.100.7"})
    problems = problems_of(data, tmp_path)
    assert len(problems) == 3, problems
    assert problems[0] == "directory.timeout: must be a number > 0 and <= 60, got 'abc'"
    assert problems[1].startswith("mfa.max_failures: must be an integer from 1 to 100")
    assert problems[2] == "radius.clients[1].secret: required (or secret_file)"


def test_config_error_lists_one_problem_per_line() -> None:
    """str(ConfigError) is the problems, one per line."""
    error = ConfigError(["a.b: wrong", "c: missing"])
    assert error.problems == ("a.b: wrong", "c: missing")
    assert str(error) == "a.b: wrong\nc: missing"


def test_unknown_key_suggests_the_closest_known_key(tmp_path: Path) -> None:
    """A misspelt key is an error that names the key it probably meant."""
    data = minimal()
    data["mfa"] = {"enrolment_days": 3}
    assert problems_of(data, tmp_path) == (
        "mfa.enrolment_days: unknown key (did you mean enrollment_days?)",
    )


def test_unknown_keys_are_errors_at_every_level(tmp_path: Path) -> None:
    """Unknown keys at the top, in a section and in a list item are each reported."""
    data = minimal()
    data["widgets"] = {}
    data["radius"]["clients"][0]["secrte"] = "x"
    data["directory"]["colour"] = "blue"
    problems = problems_of(data, tmp_path)
    assert "radius.clients[0].secrte: unknown key (did you mean secret?)" in problems
    assert any(p.startswith("widgets: unknown key (expected one of: directory,") for p in problems)
    assert any(p.startswith("directory.colour: unknown key") for p in problems)
    assert len(problems) == 3


def test_missing_required_sections(tmp_path: Path) -> None:
    """Each missing required section is named."""
    assert problems_of({"mfa": {}}, tmp_path) == (
        "directory: required section",
        "store: required section",
        "radius: required section",
    )


def test_top_level_that_is_not_a_mapping_is_one_clear_error(tmp_path: Path) -> None:
    """An empty file or a list at the top level gives a single problem saying so."""
    (empty,) = problems_of(None, tmp_path)
    assert "empty" in empty
    (listed,) = problems_of(["directory"], tmp_path)
    assert "must be a mapping of sections" in listed
    assert "got a list" in listed


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    """A section given as a scalar or list is reported as such."""
    data = minimal()
    data["log"] = "debug"
    assert problems_of(data, tmp_path) == ("log: must be a mapping of keys, got a string",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("stdout", "stdout"), ("off", "off"), ("audit/decisions.jsonl", "audit/decisions.jsonl")],
)
def test_audit_destination(tmp_path: Path, value: str, expected: str) -> None:
    """`log.audit` is stdout (the default), off, or a file relative to the config's folder."""
    (tmp_path / "audit").mkdir()
    data = minimal()
    data["log"] = {"audit": value}
    audit = parse_config(data, tmp_path).log.audit
    assert audit == (str(tmp_path / expected) if "/" in expected else expected)
    assert parse_config(minimal(), tmp_path).log.audit == "stdout"


def test_audit_file_in_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    """An audit file whose folder does not exist is reported before the daemon starts."""
    data = minimal()
    data["log"] = {"audit": "nowhere/audit.jsonl"}
    (problem,) = problems_of(data, tmp_path)
    assert problem.startswith("log.audit: ")
    assert "is not a directory" in problem


def test_portal_section(tmp_path: Path) -> None:
    """The portal's keys land in PortalConfig; loopback in clear needs no certificate."""
    data = minimal()
    data["portal"] = {"listen": "127.0.0.1:8443", "public_url": "https://mfa.example.org/"}
    portal = parse_config(data, tmp_path).portal
    assert portal is not None
    assert (portal.listen_host, portal.listen_port) == ("127.0.0.1", 8443)
    assert portal.public_url == "https://mfa.example.org/"
    assert portal.tls is None and portal.session_idle == 300.0
    assert parse_config(minimal(), tmp_path).portal is None


def test_portal_in_clear_on_a_network_address_is_refused(tmp_path: Path) -> None:
    """Sign-in forms in clear off loopback need TLS, or an explicit allow_http."""
    data = minimal()
    data["portal"] = {"listen": "0.0.0.0:8080"}
    (problem,) = problems_of(data, tmp_path)
    assert problem.startswith("portal.listen: 0.0.0.0 is not a loopback address")
    data["portal"]["allow_http"] = True
    assert parse_config(data, tmp_path).portal is not None


def test_portal_public_url_must_be_a_web_url(tmp_path: Path) -> None:
    """public_url is checked: a scheme of http(s), no spaces or quotes, short enough."""
    data = minimal()
    data["portal"] = {"listen": "127.0.0.1:8080", "public_url": "mfa.example.org"}
    (problem,) = problems_of(data, tmp_path)
    assert problem.startswith("portal.public_url: must be an http(s):// URL")


# --- secrets ------------------------------------------------------------------------------


def test_secret_file_is_read_and_one_trailing_newline_stripped(tmp_path: Path) -> None:
    """`*_file` secrets come from the file, minus exactly one trailing newline."""
    write(tmp_path / "ldap-password", LDAP_PASSWORD + "\n")
    write(tmp_path / "radius.secret", RADIUS_SECRET + "\r\n")
    data = minimal()
    del data["directory"]["bind_password"]
    data["directory"]["bind_password_file"] = str(tmp_path / "ldap-password")
    del data["radius"]["clients"][0]["secret"]
    data["radius"]["clients"][0]["secret_file"] = "radius.secret"
    config = parse_config(data, tmp_path)
    assert config.directory.bind_password == LDAP_PASSWORD
    assert config.radius.clients[0].secret == RADIUS_SECRET.encode()
    assert config.warnings == ()


def test_secret_file_with_extra_line_break_warns(tmp_path: Path) -> None:
    """Only one newline is removed; a second one stays and draws a warning."""
    write(tmp_path / "ldap-password", LDAP_PASSWORD + "\n\n")
    data = minimal()
    del data["directory"]["bind_password"]
    data["directory"]["bind_password_file"] = "ldap-password"
    config = parse_config(data, tmp_path)
    assert config.directory.bind_password == LDAP_PASSWORD + "\n"
    assert [w.split(":")[0] for w in config.warnings] == ["directory.bind_password_file"]


def test_secret_and_secret_file_together_is_an_error(tmp_path: Path) -> None:
    """Giving both `secret` and `secret_file` is ambiguous, so an error."""
    write(tmp_path / "radius.secret", RADIUS_SECRET)
    data = minimal()
    data["radius"]["clients"][0]["secret_file"] = "radius.secret"
    assert problems_of(data, tmp_path) == (
        "radius.clients[0].secret: give secret or secret_file, not both",
    )


def test_missing_secret_is_required(tmp_path: Path) -> None:
    """Neither `bind_password` nor `bind_password_file` is an error naming both."""
    data = minimal()
    del data["directory"]["bind_password"]
    assert problems_of(data, tmp_path) == (
        "directory.bind_password: required (or bind_password_file)",
    )


def test_unreadable_secret_file_names_the_path_and_the_reason(tmp_path: Path) -> None:
    """A secret_file that cannot be read is reported with its resolved path and errno text."""
    data = minimal()
    del data["directory"]["bind_password"]
    data["directory"]["bind_password_file"] = "missing-password"
    data["radius"]["clients"][0] = {"address": "192.0.2.10", "secret_file": str(tmp_path)}
    problems = problems_of(data, tmp_path)
    assert problems == (
        f"directory.bind_password_file: cannot read {tmp_path / 'missing-password'}:"
        " No such file or directory",
        f"radius.clients[0].secret_file: cannot read {tmp_path}: Is a directory",
    )


def test_oversized_secret_file_is_an_error(tmp_path: Path) -> None:
    """A secret file over 64 KiB is refused without reading it all."""
    write(tmp_path / "big", "x" * (64 * 1024 + 1))
    data = minimal()
    data["radius"]["clients"][0] = {"address": "192.0.2.10", "secret_file": "big"}
    (problem,) = problems_of(data, tmp_path)
    assert problem.startswith(f"radius.clients[0].secret_file: {tmp_path / 'big'} is larger than")


def test_empty_secrets_are_errors(tmp_path: Path) -> None:
    """An empty inline secret or an empty secret file is an error."""
    write(tmp_path / "empty", "\n")
    data = minimal()
    data["directory"]["bind_password"] = ""
    data["radius"]["clients"][0] = {"address": "192.0.2.10", "secret_file": "empty"}
    assert problems_of(data, tmp_path) == (
        "directory.bind_password: must not be empty",
        f"radius.clients[0].secret_file: {tmp_path / 'empty'} is empty",
    )


SECRET = "Sup3r-Secret-Value"


@pytest.mark.parametrize(
    "yaml_text",
    [
        # both inline and file
        f"radius: {{clients: [{{address: 192.0.2.10, secret: {SECRET}, secret_file: x}}]}}",
        # short secret plus other problems elsewhere in the client
        f"radius: {{clients: [{{address: 10.0.0.1/8, secret: {SECRET}, name: 5}}]}}",
        # wrong type for the directory password
        "directory: {bind_password: 0123456712}",
        # secret under a misspelt key
        f"directory: {{bind_pasword: {SECRET}}}",
        # secret given as a list
        f"radius: {{clients: [{{address: 192.0.2.10, secret: [{SECRET}]}}]}}",
    ],
)
def test_secret_values_never_appear_in_errors(tmp_path: Path, yaml_text: str) -> None:
    """Whatever is wrong around a secret, its value is not part of any problem text."""
    data = minimal()
    for section, values in yaml.safe_load(yaml_text).items():
        data[section].update(values)
    message = str(ConfigError(problems_of(data, tmp_path)))
    assert SECRET not in message
    assert "0123456712" not in message
    assert str(0o123456712) not in message  # the octal reading of the unquoted value


# --- specific checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.1/8", "'10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?"),
        ("10.0.0.0/33", "must be an IP address or CIDR network, got '10.0.0.0/33'"),
        ("vpn.example.org", "must be an IP address or CIDR network, got 'vpn.example.org'"),
    ],
)
def test_bad_client_address(tmp_path: Path, address: str, expected: str) -> None:
    """A client address must be an IP or a CIDR without host bits set."""
    data = minimal()
    data["radius"]["clients"][0]["address"] = address
    assert problems_of(data, tmp_path) == (f"radius.clients[0].address: {expected}",)


def test_overlapping_clients_are_an_error(tmp_path: Path) -> None:
    """Two clients whose networks overlap are rejected, naming both entries."""
    data = minimal()
    data["radius"]["clients"] = [
        {"address": "192.0.2.0/24", "secret": RADIUS_SECRET},
        {"address": "2001:db8::/32", "secret": RADIUS_SECRET},
        {"address": "192.0.2.10", "secret": RADIUS_SECRET},
    ]
    assert problems_of(data, tmp_path) == (
        "radius.clients[2].address: 192.0.2.10/32 overlaps radius.clients[0].address"
        " (192.0.2.0/24); each NAS must match exactly one client",
    )


def test_no_clients_is_an_error(tmp_path: Path) -> None:
    """At least one RADIUS client is required."""
    data = minimal()
    data["radius"]["clients"] = []
    (problem,) = problems_of(data, tmp_path)
    assert problem.startswith("radius.clients: required")


def test_bad_mode_suggests_the_close_one(tmp_path: Path) -> None:
    """radius.mode must be append, challenge or auto."""
    data = minimal()
    data["radius"]["mode"] = "chalenge"
    assert problems_of(data, tmp_path) == (
        "radius.mode: must be one of append, challenge, auto, got 'chalenge'"
        " (did you mean challenge?)",
    )


def test_bool_where_int_wanted_is_a_type_error(tmp_path: Path) -> None:
    """YAML true is not an integer, even though Python's bool is an int."""
    data = yaml.safe_load("mfa: {max_failures: yes}\ndirectory: {pool_size: true}")
    full = minimal()
    full["mfa"] = data["mfa"]
    full["directory"].update(data["directory"])
    assert problems_of(full, tmp_path) == (
        "directory.pool_size: must be an integer from 1 to 64, got true",
        "mfa.max_failures: must be an integer from 1 to 100, got true",
    )


def test_float_where_int_wanted_is_an_error(tmp_path: Path) -> None:
    """A float for an integer setting is reported, not truncated."""
    data = minimal()
    data["mfa"] = {"window": 1.5}
    assert problems_of(data, tmp_path) == ("mfa.window: must be an integer from 0 to 10, got 1.5",)


@pytest.mark.parametrize(
    ("user_filter", "fragment"),
    [
        ("(uid=*)", "must contain {username}"),
        ("(cn={user})", "unknown placeholder {user}"),
        ("uid={username}", "must be an LDAP filter in parentheses"),
        ("(uid={username}", "must be an LDAP filter in parentheses"),
        ("(uid={username}})", "unmatched brace"),
        ("(uid={{username}})", "unmatched brace"),
    ],
)
def test_bad_user_filter(tmp_path: Path, user_filter: str, fragment: str) -> None:
    """user_filter must be parenthesised and use {username} and no other placeholder."""
    data = minimal()
    data["directory"]["user_filter"] = user_filter
    (problem,) = problems_of(data, tmp_path)
    assert problem.startswith("directory.user_filter: ")
    assert fragment in problem


def test_group_filter_needs_dn_or_username(tmp_path: Path) -> None:
    """A group_filter without {dn} or {username} would match every user, so it is refused."""
    data = minimal()
    data["directory"]["group_filter"] = "(objectClass=groupOfNames)"
    assert problems_of(data, tmp_path) == (
        "directory.group_filter: must contain {dn} or {username}",
    )


def test_start_tls_with_ldaps_is_an_error(tmp_path: Path) -> None:
    """StartTLS cannot be combined with ldaps:// URLs."""
    data = minimal()
    data["directory"]["urls"] = ["ldap://127.0.0.1", "ldaps://ldap.example.org"]
    data["directory"]["start_tls"] = True
    (problem,) = problems_of(data, tmp_path)
    assert problem.startswith("directory.start_tls: cannot be used with ldaps://")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://ldap.example.org", "must start with ldap:// or ldaps://"),
        ("ldap://", "has no host"),
        ("ldap://ldap.example.org:99999", "port must be a number from 1 to 65535"),
        ("ldap://ldap.example.org/dc=example?uid", "without a path or query"),
        ("ldaps://admin:pw@ldap.example.org", "must not hold a user name or password"),
    ],
)
def test_bad_directory_url(tmp_path: Path, url: str, fragment: str) -> None:
    """Directory URLs are scheme://host[:port], ldap or ldaps, nothing more."""
    data = minimal()
    data["directory"]["urls"] = ["ldaps://ok.example.org", url]
    (problem,) = problems_of(data, tmp_path)
    assert problem.startswith("directory.urls[1]: ")
    assert fragment in problem
    assert ":pw@" not in problem


def test_urls_must_be_a_non_empty_list(tmp_path: Path) -> None:
    """A single URL string or an empty list is reported with a hint."""
    data = minimal()
    data["directory"]["urls"] = "ldaps://ldap.example.org"
    assert problems_of(data, tmp_path) == (
        "directory.urls: must be a list, got a string; write [ldaps://ldap.example.org]",
    )
    data["directory"]["urls"] = []
    assert problems_of(data, tmp_path) == ("directory.urls: must list at least one entry",)


def test_ca_file_must_exist(tmp_path: Path) -> None:
    """A ca_file that is missing or not a regular file is an error."""
    data = minimal()
    data["directory"]["ca_file"] = "nope.pem"
    assert problems_of(data, tmp_path) == (
        f"directory.ca_file: cannot read {tmp_path / 'nope.pem'}: No such file or directory",
    )
    data["directory"]["ca_file"] = "."
    (problem,) = problems_of(data, tmp_path)
    assert problem.endswith("is not a regular file")


@pytest.mark.parametrize(
    ("listen", "fragment"),
    [
        ("localhost:1812", "host must be an IP address"),
        ("::1:1812", "put an IPv6 address in brackets"),
        ("[127.0.0.1]:1812", "only IPv6 addresses go in brackets"),
        ("127.0.0.1:65536", "port must be a number from 0 to 65535"),
        ("127.0.0.1", 'must be "host:port"'),
        ("[::1]", 'must be "host:port"'),
    ],
)
def test_bad_listen_address(tmp_path: Path, listen: str, fragment: str) -> None:
    """Listen addresses are IP literals with a port; no DNS at startup."""
    data = minimal()
    data["radius"]["listen"] = listen
    (problem,) = problems_of(data, tmp_path)
    assert problem.startswith("radius.listen: ")
    assert fragment in problem


def test_issuer_must_not_contain_a_colon(tmp_path: Path) -> None:
    """The issuer goes in the otpauth label, where ':' separates issuer and user."""
    data = minimal()
    data["mfa"] = {"issuer": "Example: IT"}
    (problem,) = problems_of(data, tmp_path)
    assert problem.startswith("mfa.issuer: must not contain ':'")


def test_store_url_chooses_postgresql_with_its_own_key_file(tmp_path: Path) -> None:
    """store.url replaces store.path; the key file must be named (each instance has it)."""
    secret = tmp_path / "db-password"
    secret.write_text("pw\n")
    data = minimal()
    data["store"] = {
        "url": "postgresql://bridge@db1,db2/mfa?target_session_attrs=read-write",
        "key_file": str(tmp_path / "state.key"),
        "password_file": str(secret),
    }
    store = parse_config(data, tmp_path).store
    assert store.url == "postgresql://bridge@db1,db2/mfa?target_session_attrs=read-write"
    assert (store.key_file, store.password_file) == (tmp_path / "state.key", secret)


@pytest.mark.parametrize(
    ("store", "problem"),
    [
        ({"url": "postgresql://db/mfa"}, "store.key_file: required"),
        ({"url": "mysql://db/mfa", "key_file": "k"}, "store.url: must be a PostgreSQL URL"),
        ({"url": "postgresql://db/mfa?bogus=1", "key_file": "k"}, "store.url: not a valid"),
        ({"url": "postgresql://db/mfa", "key_file": "k", "path": "s.db"}, "store.path: give"),
        ({"path": "s.db", "password_file": "p"}, "store.password_file: only for store.url"),
    ],
)
def test_store_url_mistakes_name_the_key(
    tmp_path: Path, store: dict[str, str], problem: str
) -> None:
    data = minimal()
    data["store"] = store
    found = problems_of(data, tmp_path)
    assert any(p.startswith(problem) for p in found), found


def test_path_with_nul_character_is_an_error(tmp_path: Path) -> None:
    """A NUL in a path (possible in a double-quoted YAML string) is reported, not a crash."""
    data = minimal()
    data["directory"]["ca_file"] = "ca\0.pem"
    data["store"]["path"] = "state\0.db"
    assert problems_of(data, tmp_path) == (
        "directory.ca_file: must not contain a NUL character",
        "store.path: must not contain a NUL character",
    )


def test_default_key_file_is_beside_the_database(tmp_path: Path) -> None:
    """Without store.key_file the key sits next to the database, suffix .key."""
    config = parse_config(minimal(), tmp_path)
    assert config.store.path == Path("/var/lib/mfa-bridge/state.db")
    assert config.store.key_file == Path("/var/lib/mfa-bridge/state.key")


def test_key_file_must_differ_from_the_database(tmp_path: Path) -> None:
    """A database named *.key would share its path with the default key file."""
    data = minimal()
    data["store"] = {"path": "state.key"}
    assert problems_of(data, tmp_path) == (
        "store.key_file: must not be the database file itself; set store.key_file",
    )


def test_relative_paths_are_resolved_against_base_dir(tmp_path: Path) -> None:
    """Relative store, key, CA, LDIF and secret paths are relative to the config's directory."""
    conf_dir = tmp_path / "etc"
    (conf_dir / "secrets").mkdir(parents=True)
    write(conf_dir / "secrets" / "ldap", LDAP_PASSWORD)
    write(conf_dir / "ca.pem", PEM)
    write(conf_dir / "demo.ldif", "x")
    data = minimal()
    del data["directory"]["bind_password"]
    data["directory"]["bind_password_file"] = "secrets/ldap"
    data["directory"]["ca_file"] = "ca.pem"
    data["store"] = {"path": "data/state.db", "key_file": "keys/state.key"}
    data["demo"] = {"ldif": "demo.ldif"}
    config = parse_config(data, conf_dir)
    assert config.directory.bind_password == LDAP_PASSWORD
    assert config.directory.ca_file == conf_dir / "ca.pem"
    assert config.store.path == conf_dir / "data" / "state.db"
    assert config.store.key_file == conf_dir / "keys" / "state.key"
    assert config.demo is not None
    assert config.demo.ldif == conf_dir / "demo.ldif"


def test_load_config_resolves_against_the_files_directory(tmp_path: Path) -> None:
    """load_config uses the config file's own directory as the base for relative paths."""
    data = minimal()
    data["store"] = {"path": "state.db"}
    path = write(tmp_path / "bridge.yaml", yaml.safe_dump(data))
    assert load_config(path).store.path == tmp_path / "state.db"


def test_short_secret_draws_a_warning(tmp_path: Path) -> None:
    """RADIUS secrets of 12 characters or fewer load, with a warning that says how long."""
    data = minimal()
    data["radius"]["clients"][0]["secret"] = "testing1"
    config = parse_config(data, tmp_path)
    assert config.warnings == (
        "radius.clients[0].secret: only 8 characters; use 16 or more random characters"
        " (openssl rand -base64 24)",
    )
    data["radius"]["clients"][0]["secret"] = "thirteen-char"
    assert parse_config(data, tmp_path).warnings == ()


def test_plain_ldap_warns_unless_loopback(tmp_path: Path) -> None:
    """ldap:// without start_tls to a remote host warns; to loopback, or with StartTLS, not."""
    data = minimal()
    data["directory"]["urls"] = ["ldap://127.0.0.1", "ldap://ldap.example.org", "ldap://[::1]"]
    assert parse_config(data, tmp_path).warnings == (
        "directory.urls[1]: plain ldap:// without start_tls sends passwords in clear",
    )
    data["directory"]["start_tls"] = True
    assert parse_config(data, tmp_path).warnings == ()


def test_unquoted_octal_looking_value_is_a_type_error(tmp_path: Path) -> None:
    """An unquoted 012345 in a string field (YAML reads an int) is reported, not a crash."""
    text = "mfa: {issuer: 012345, exempt_users: [alice, 012345]}"
    data = minimal()
    data["mfa"] = yaml.safe_load(text)["mfa"]
    assert problems_of(data, tmp_path) == (
        "mfa.issuer: must be a string, but YAML read the value as an integer (5349); quote it",
        "mfa.exempt_users[1]: must be a string, but YAML read the value as an integer (5349);"
        " quote it",
    )


def test_ldap_proxy_needs_listen_and_demo_needs_an_existing_ldif(tmp_path: Path) -> None:
    """Inside their optional sections, ldap_proxy.listen and demo.ldif are required."""
    data = minimal()
    data["ldap_proxy"] = {"allow_anonymous": False}
    data["demo"] = {"listen": "127.0.0.1:10389"}
    assert problems_of(data, tmp_path) == (
        "ldap_proxy.listen: required",
        "demo.ldif: required",
    )


def test_ldap_proxy_and_demo_cannot_share_a_port(tmp_path: Path) -> None:
    """Two TCP listeners on one port would fail at startup, so the config says so first."""
    write(tmp_path / "demo.ldif", "x")
    data = minimal()
    data["ldap_proxy"] = {"listen": "0.0.0.0:1389"}
    data["demo"] = {"ldif": "demo.ldif", "listen": "127.0.0.1:1389"}
    assert problems_of(data, tmp_path) == ("demo.listen: same port as ldap_proxy.listen",)


def test_ldap_proxy_tls_and_limits(tmp_path: Path) -> None:
    """The proxy's certificate, LDAPS listener, require_tls and limits land in the dataclass;
    relative certificate paths are relative to the config file's directory."""
    write(tmp_path / "proxy.crt", PEM)
    key = write(tmp_path / "proxy.key", "key")
    data = minimal()
    data["ldap_proxy"] = {
        "listen": "0.0.0.0:389",
        "tls": {"certificate": "proxy.crt", "key": str(key)},
        "listen_tls": "[::]:636",
        "require_tls": True,
        "max_connections": 50,
        "max_connections_per_address": 5,
        "idle_timeout": 30,
    }
    proxy = parse_config(data, tmp_path).ldap_proxy
    assert proxy == LdapProxyConfig(
        listen_host="0.0.0.0",
        listen_port=389,
        tls=LdapProxyTls(certificate=tmp_path / "proxy.crt", key=key),
        listen_tls=("::", 636),
        require_tls=True,
        max_connections=50,
        max_connections_per_address=5,
        idle_timeout=30.0,
    )


def test_ldap_proxy_defaults_without_tls(tmp_path: Path) -> None:
    """Without tls: no LDAPS listener, clear binds allowed, 1000/100 connections, 300 s."""
    data = minimal()
    data["ldap_proxy"] = {"listen": "127.0.0.1:1389"}
    proxy = parse_config(data, tmp_path).ldap_proxy
    assert proxy is not None
    assert (proxy.tls, proxy.listen_tls, proxy.require_tls) == (None, None, False)
    assert (proxy.max_connections, proxy.max_connections_per_address) == (1000, 100)
    assert proxy.idle_timeout == 300.0


def test_ldap_proxy_tls_problems(tmp_path: Path) -> None:
    """require_tls and listen_tls need tls; its files must exist; limits must be positive."""
    data = minimal()
    data["ldap_proxy"] = {
        "listen": "127.0.0.1:1389",
        "listen_tls": "127.0.0.1:1636",
        "require_tls": True,
        "max_connections": 0,
        "max_connections_per_address": -1,
        "idle_timeout": 0,
    }
    assert problems_of(data, tmp_path) == (
        "ldap_proxy.listen_tls: needs ldap_proxy.tls (certificate and key)",
        "ldap_proxy.require_tls: needs ldap_proxy.tls (certificate and key)",
        "ldap_proxy.max_connections: must be an integer from 1 to 1000000, got 0",
        "ldap_proxy.max_connections_per_address: must be an integer from 1 to 1000000, got -1",
        "ldap_proxy.idle_timeout: must be a number > 0 and <= 86400, got 0",
    )
    data["ldap_proxy"] = {
        "listen": "0.0.0.0:1389",
        "tls": {"certificate": "missing.crt", "keyfile": "x"},
        "listen_tls": "127.0.0.1:1389",
    }
    problems = problems_of(data, tmp_path)
    assert problems[0] == "ldap_proxy.tls.keyfile: unknown key (did you mean key?)"
    assert problems[1].startswith(f"ldap_proxy.tls.certificate: cannot read {tmp_path}")
    assert problems[2:] == (
        "ldap_proxy.tls.key: required",
        "ldap_proxy.listen_tls: same port as ldap_proxy.listen",
    )


def test_radius_eap_needs_both_files_and_knows_its_keys(tmp_path: Path) -> None:
    """radius.eap: certificate and key required and readable, ca_file optional, typos named."""
    data = minimal()
    data["radius"]["eap"] = {"certificate": "radius.crt", "keyfile": "radius.key"}
    problems = problems_of(data, tmp_path)
    assert problems[0] == "radius.eap.keyfile: unknown key (did you mean key?)"
    assert problems[1].startswith(f"radius.eap.certificate: cannot read {tmp_path}")
    assert problems[2] == "radius.eap.key: required"
    data["radius"]["eap"] = {
        "certificate": str(write(tmp_path / "radius.crt", PEM)),
        "key": str(write(tmp_path / "radius.key", "pem")),
    }
    config = parse_config(data, tmp_path)
    assert config.radius.eap is not None
    assert (config.radius.eap.key, config.radius.eap.ca_file) == (tmp_path / "radius.key", None)
    assert parse_config(minimal(), tmp_path).radius.eap is None


# --- files and the default path -----------------------------------------------------------


def test_load_config_missing_file(tmp_path: Path) -> None:
    """A missing config file is one problem naming the file."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (f"{path}: cannot read config file: No such file or directory",)


def test_load_config_invalid_yaml(tmp_path: Path) -> None:
    """A YAML syntax error is one problem naming the file and the line, not the text."""
    path = write(tmp_path / "bridge.yaml", f"directory:\n  bind_password: {SECRET}\n  - x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: invalid YAML at line 3")
    assert SECRET not in problem


def test_load_config_empty_file(tmp_path: Path) -> None:
    """An empty file is one clear problem."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "bridge.yaml", "# nothing yet\n"))
    (problem,) = info.value.problems
    assert "empty" in problem


def test_default_config_path_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """$MFA_BRIDGE_CONFIG sets the default path; otherwise config/bridge.yaml."""
    monkeypatch.delenv("MFA_BRIDGE_CONFIG", raising=False)
    assert default_config_path() == Path("config/bridge.yaml")
    monkeypatch.setenv("MFA_BRIDGE_CONFIG", "/etc/mfa-bridge/bridge.yaml")
    assert default_config_path() == Path("/etc/mfa-bridge/bridge.yaml")


def test_entry_attributes_default_to_openldap(tmp_path: Path) -> None:
    """id_attribute defaults to entryUUID and name_attribute to uid."""
    directory = parse_config(minimal(), tmp_path).directory
    assert (directory.id_attribute, directory.name_attribute) == ("entryUUID", "uid")


@pytest.mark.parametrize(
    ("id_attribute", "name_attribute"),
    [
        ("objectGUID", "sAMAccountName"),
        ("nsUniqueId", "userPrincipalName"),
        ("ipaUniqueID", "mail"),
        ("1.3.6.1.4.1.4203.666.1", "x-custom-name"),
        ("entryuuid", "UID"),
    ],
)
def test_entry_attributes_accept_names_and_oids(
    tmp_path: Path, id_attribute: str, name_attribute: str
) -> None:
    """Attribute names (letters, digits, hyphens) and numeric OIDs are taken as written."""
    data = minimal()
    data["directory"]["id_attribute"] = id_attribute
    data["directory"]["name_attribute"] = name_attribute
    directory = parse_config(data, tmp_path).directory
    assert (directory.id_attribute, directory.name_attribute) == (id_attribute, name_attribute)


@pytest.mark.parametrize(
    "value", ["entry uuid", "(uid)", "uid=*", "1uid", "-uid", "1.3.", "objectGUID;binary", ""]
)
@pytest.mark.parametrize("key", ["id_attribute", "name_attribute"])
def test_bad_entry_attribute_is_an_error_naming_the_key(
    tmp_path: Path, key: str, value: str
) -> None:
    """Anything but an attribute name or numeric OID is one problem naming directory.<key>."""
    data = minimal()
    data["directory"][key] = value
    (problem,) = problems_of(data, tmp_path)
    assert problem.startswith(f"directory.{key}: ")


# --- the shipped example ------------------------------------------------------------------

COMMENTED_KEY = re.compile(r"^([ ]*)# ([ ]*(?:[A-Za-z_-]+:(?: |$)|- ).*)$", re.MULTILINE)
FILE_KEYS = {"ca_file", "ldif", "certificate", "key"}  # certificate, key: ldap_proxy.tls


def satisfy_files(node: object, tmp_path: Path) -> None:
    """Point every `*_file` / `ldif` value at a temp file holding a long secret."""
    if isinstance(node, list):
        for item in node:
            satisfy_files(item, tmp_path)
    elif isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and (key.endswith("_file") or key in FILE_KEYS):
                if key == "key_file":
                    node[key] = str(tmp_path / "state.key")
                else:
                    stand_in = tmp_path / key / Path(value).name
                    stand_in.parent.mkdir(exist_ok=True)
                    content = PEM if key in ("ca_file", "certificate") else RADIUS_SECRET + "\n"
                    stand_in.write_text(content, encoding="utf-8")
                    node[key] = str(stand_in)
            else:
                satisfy_files(value, tmp_path)


def test_example_config_has_only_known_keys(tmp_path: Path) -> None:
    """config/bridge.yaml, also with its commented-out sections enabled, loads cleanly."""
    text = EXAMPLE.read_text(encoding="utf-8")
    for variant in (text, COMMENTED_KEY.sub(r"\1\2", text)):
        data = yaml.safe_load(variant)
        satisfy_files(data, tmp_path)
        config = parse_config(data, EXAMPLE.parent)
        assert config.warnings == ()
        compile_replies(config.radius)  # names and types against the dictionary
    assert config.ldap_proxy is not None
    assert config.ldap_proxy.tls is not None and config.ldap_proxy.require_tls
    assert config.demo is not None
    assert [c.require_message_authenticator for c in config.radius.clients] == [True, True, False]
    assert config.radius.eap is not None and config.radius.eap.ca_file is not None
    assert len(config.radius.replies) == 2
    assert config.radius.clients[1].allowed_groups and config.radius.clients[1].mode == "append"
    assert config.store.path == Path("/var/lib/mfa-bridge/state.db")


def test_the_portal_and_the_ldap_proxy_on_one_port_is_an_error(tmp_path: Path) -> None:
    """Two TCP listeners on one port: the second is named, with the first it clashes with."""
    data = minimal()
    data["ldap_proxy"] = {"listen": "127.0.0.1:8443"}
    data["portal"] = {"listen": "0.0.0.0:8443", "tls": {"certificate": "c", "key": "k"}}
    data["metrics"] = {"listen": "127.0.0.1:8443"}
    problems = problems_of(data, tmp_path)
    assert "portal.listen: same port as ldap_proxy.listen" in problems
    assert "metrics.listen: same port as ldap_proxy.listen" in problems


def test_a_key_file_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    """store.key_file naming a directory is reported at check-config, not at start."""
    data = minimal()
    data["store"] = {"path": str(tmp_path / "state.db"), "key_file": str(tmp_path)}
    assert any(p.startswith("store.key_file: ") for p in problems_of(data, tmp_path))


@pytest.mark.parametrize("key", ["passthrough_dns", "exempt_groups"])
def test_a_dn_list_split_at_its_commas_is_an_error(tmp_path: Path, key: str) -> None:
    """`[cn=wiki,ou=services,dc=example,dc=org]` in flow style loads as four one-RDN
    entries: check-config says so instead of letting every bind fail."""
    data = minimal()
    text = f"{key}: [cn=wiki,ou=services,dc=example,dc=org]"
    loaded = yaml.safe_load(text)[key]
    assert loaded == ["cn=wiki", "ou=services", "dc=example", "dc=org"]  # the YAML pitfall
    section = "ldap_proxy" if key == "passthrough_dns" else "mfa"
    data.setdefault(section, {"listen": "127.0.0.1:1389"} if section == "ldap_proxy" else {})
    data[section][key] = loaded
    (problem,) = problems_of(data, tmp_path)
    assert problem.startswith(f"{section}.{key}: looks like one DN split at its commas")
    data[section][key] = ["cn=wiki,ou=services,dc=example,dc=org", "cn=nas,dc=example,dc=org"]
    parse_config(data, tmp_path)


def test_per_client_policy_keys(tmp_path: Path) -> None:
    """A client may set its own mode, mfa, allowed groups and remembered devices."""
    data = minimal()
    data["radius"]["clients"] = [
        {
            "name": "wifi",
            "address": "198.51.100.0/28",
            "secret": RADIUS_SECRET,
            "mode": "append",
            "allowed_groups": ["cn=staff,ou=groups,dc=example,dc=org"],
            "remember_seconds": 3600,
        },
        {"name": "switch", "address": "192.0.2.20", "secret": RADIUS_SECRET, "mfa": "off"},
    ]
    wifi, switch = parse_config(data, tmp_path).radius.clients
    as_yaml = yaml.safe_load("mfa: off\n")  # YAML 1.1 reads a bare off as false
    data["radius"]["clients"][1].update(as_yaml)
    assert parse_config(data, tmp_path).radius.clients[1].mfa is False
    assert (wifi.mode, wifi.mfa, wifi.remember_seconds) == ("append", True, 3600)
    assert wifi.allowed_groups == ("cn=staff,ou=groups,dc=example,dc=org",)
    assert (switch.mode, switch.mfa, switch.allowed_groups) == (None, False, ())
    data["radius"]["clients"] = [
        {
            "address": "192.0.2.30",
            "secret": RADIUS_SECRET,
            "mode": "apend",
            "mfa": "no",
            "allowed_groups": ["cn=staff", "ou=groups", "dc=example"],
            "remember_seconds": 99_999_999,
        },
        {"address": "192.0.2.31", "secret": RADIUS_SECRET, "mfa": "off", "remember_seconds": 60},
    ]
    assert problems_of(data, tmp_path) == (
        "radius.clients[0].mode: must be one of append, challenge, auto, got 'apend'"
        " (did you mean append?)",
        "radius.clients[0].mfa: must be one of required, off, got 'no'",
        "radius.clients[0].allowed_groups: looks like one DN split at its commas"
        " (cn=staff,ou=groups,dc=example): a YAML flow list [a, b] splits at commas; write"
        " one DN per line (- cn=...,ou=...,dc=...) or quote each",
        "radius.clients[0].remember_seconds: must be an integer from 0 to 2592000, got 99999999",
        "radius.clients[1].remember_seconds: has no effect with mfa: off (no code is ever asked)",
    )


README = EXAMPLE.parents[1] / "README.md"


@pytest.mark.parametrize("heading", ["**A VPN**", "**Wi-Fi**"])
def test_the_readmes_policy_examples_load_and_compile(heading: str, tmp_path: Path) -> None:
    """The worked examples of "Per-client policy and reply attributes" are valid config."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index(heading) :]
    block = after[
        after.index("```yaml") + len("```yaml") : after.index("```", after.index("```yaml") + 3)
    ]
    example = yaml.safe_load(block)
    data = minimal()
    data["radius"] = example["radius"]
    satisfy_files(data, tmp_path)
    config = parse_config(data, tmp_path)
    assert compile_replies(config.radius)


def test_certificate_files_must_hold_certificates(tmp_path: Path) -> None:
    """A key, a DER file or a typo'd file where a CA bundle or a certificate goes: named."""
    data = minimal()
    data["directory"]["ca_file"] = str(write(tmp_path / "ca.pem", "-----BEGIN PRIVATE KEY-----"))
    data["radius"]["eap"] = {
        "certificate": str(write(tmp_path / "radius.der", "0\x82")),
        "key": str(write(tmp_path / "radius.key", "key")),
    }
    assert problems_of(data, tmp_path) == (
        f"directory.ca_file: {tmp_path / 'ca.pem'} holds no PEM certificate"
        " (-----BEGIN CERTIFICATE-----)",
        f"radius.eap.certificate: {tmp_path / 'radius.der'} holds no PEM certificate"
        " (-----BEGIN CERTIFICATE-----)",
    )


def test_an_ldap_proxy_beyond_loopback_without_tls_is_warned_about(tmp_path: Path) -> None:
    data = minimal()
    data["ldap_proxy"] = {"listen": "192.0.2.5:389"}
    assert parse_config(data, tmp_path).warnings == (
        "ldap_proxy.listen: 192.0.2.5 is not a loopback address and there is no"
        " ldap_proxy.tls: passwords and codes would cross the network in clear",
    )
    data["ldap_proxy"] = {"listen": "127.0.0.1:1389"}
    assert parse_config(data, tmp_path).warnings == ()
