"""The LDAP bind proxy against the real slapd, driven by ldapwhoami, ldapsearch and python-ldap.

Each test starts its own daemon (its own state store) with an `ldap_proxy` section on a
free port, and uses users load150..load199, which no other test binds over LDAP.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap
import pytest
from cryptography import x509

from tests.certs import make_ca, make_server_cert
from tests.conftest import require_binary
from tests.harness import Bridge, RadiusClient, code_for, free_tcp_port
from tests.slapd import Slapd, SlapdUser

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
ClientFor = Callable[..., RadiusClient]
INVALID_CREDENTIALS = 49
UNAVAILABLE = 52


def password_of(user: str) -> str:
    return f"{user}-pw"


def with_proxy(**extra: Any) -> Callable[[dict[str, Any]], None]:
    """A `make_bridge(change=...)` that adds an `ldap_proxy` section on a free port."""

    def change(config: dict[str, Any]) -> None:
        config["ldap_proxy"] = {"listen": f"127.0.0.1:{free_tcp_port()}", **extra}

    return change


def proxy_url(bridge: Bridge) -> str:
    return f"ldap://{bridge.config['ldap_proxy']['listen']}"


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    """An OpenLDAP client tool, with no ldaprc or ldap.conf of the machine applying."""
    require_binary(args[0])
    env = {**os.environ, "LDAPNOINIT": "1", "LC_ALL": "C"}
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False, env=env)


def whoami(url: str, dn: str, password: str) -> subprocess.CompletedProcess[str]:
    return tool("ldapwhoami", "-x", "-H", url, "-D", dn, "-w", password)


def enroll(bridge: Bridge, user: str) -> str:
    """Enroll through the CLI and return the base32 key it printed."""
    result = bridge.cli("user", "enroll", user, "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["secret"])


def state_of(bridge: Bridge, user: str) -> str:
    result = bridge.cli("user", "status", user, "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["state"])


def entries(ldif: str) -> list[str]:
    """The entries of `ldapsearch -LLL` output, each as its sorted lines."""
    blocks = [b for b in ldif.strip().split("\n\n") if b.strip()]
    return sorted("\n".join(sorted(b.strip().splitlines())) for b in blocks)


def test_grace_user_binds_with_password_only(slapd: Slapd, make_bridge: MakeBridge) -> None:
    """A user in grace binds with the password alone, and whoami answers the user's DN."""
    bridge = make_bridge(change=with_proxy())
    user = "load150"
    result = whoami(proxy_url(bridge), slapd.user_dn(user), password_of(user))
    assert result.returncode == 0, result.stderr + bridge.log()
    assert result.stdout.strip().lower() == f"dn:{slapd.user_dn(user)}".lower()
    assert state_of(bridge, user) == "grace"


def test_enrolled_user_needs_the_code(slapd: Slapd, make_bridge: MakeBridge) -> None:
    """An enrolled user binds with password+code; a wrong code and a replayed one get 49."""
    bridge = make_bridge(change=with_proxy())
    user = "load151"
    dn, url = slapd.user_dn(user), proxy_url(bridge)
    secret = enroll(bridge, user)
    code = code_for(secret)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert whoami(url, dn, password_of(user) + wrong).returncode == INVALID_CREDENTIALS
    ok = whoami(url, dn, password_of(user) + code)
    assert ok.returncode == 0, ok.stderr + bridge.log()
    assert ok.stdout.strip().lower() == f"dn:{dn}".lower()
    assert whoami(url, dn, password_of(user) + code).returncode == INVALID_CREDENTIALS
    assert whoami(url, dn, password_of(user)).returncode == INVALID_CREDENTIALS
    assert state_of(bridge, user) == "active"


def test_code_used_over_ldap_is_refused_over_radius(
    slapd: Slapd, make_bridge: MakeBridge, client_for: ClientFor
) -> None:
    """One login decision for both protocols: a code spent over LDAP is a replay over RADIUS."""
    bridge = make_bridge(change=with_proxy(), mode="append")
    user = "load152"
    secret = enroll(bridge, user)
    code = code_for(secret)
    ok = whoami(proxy_url(bridge), slapd.user_dn(user), password_of(user) + code)
    assert ok.returncode == 0, ok.stderr + bridge.log()
    reply = client_for(bridge).login(user, password_of(user) + code)
    assert reply is not None and reply.rejected
    assert "reason=replay" in bridge.log()


def test_search_after_bind_returns_what_the_directory_returns(
    slapd: Slapd, make_bridge: MakeBridge
) -> None:
    """ldapsearch through the proxy returns the same entries as slapd does for that user."""
    bridge = make_bridge(change=with_proxy())
    user = "load153"
    dn = slapd.user_dn(user)
    for base in (dn, slapd.people_dn):  # the user may read their own entry, not the OU
        query = ["-LLL", "-b", base, "(objectClass=*)", "*", "+"]
        bind = ["-x", "-D", dn, "-w", password_of(user)]
        direct = tool("ldapsearch", "-H", slapd.url, *bind, *query)
        proxied = tool("ldapsearch", "-H", proxy_url(bridge), *bind, *query)
        assert proxied.returncode == direct.returncode, proxied.stderr + bridge.log()
        assert entries(proxied.stdout) == entries(direct.stdout)
        assert proxied.stderr == direct.stderr
    assert entries(proxied.stdout) == [] and entries(direct.stdout) == []
    own = tool("ldapsearch", "-H", proxy_url(bridge), *bind, "-LLL", "-b", dn, "uid")
    assert own.stdout.strip().splitlines() == [f"dn: {dn}", f"uid: {user}"]


def test_empty_password_never_binds(slapd: Slapd, make_bridge: MakeBridge) -> None:
    """A DN with an empty password is refused with 49 (slapd would bind it as anonymous)."""
    bridge = make_bridge(change=with_proxy())
    conn = ldap.initialize(proxy_url(bridge))
    try:
        with pytest.raises(ldap.INVALID_CREDENTIALS):
            conn.simple_bind_s(slapd.user_dn("load154"), "")
    finally:
        conn.unbind_s()
    assert "reason=empty-password" in bridge.log()


def test_anonymous_bind_refused_by_default(make_bridge: MakeBridge) -> None:
    """An anonymous bind gets 49, and a search without a bind is refused (50)."""
    bridge = make_bridge(change=with_proxy())
    result = tool("ldapwhoami", "-x", "-H", proxy_url(bridge))
    assert result.returncode == INVALID_CREDENTIALS, result.stderr
    conn = ldap.initialize(proxy_url(bridge))
    try:
        with pytest.raises(ldap.INSUFFICIENT_ACCESS):
            conn.search_s("dc=example,dc=org", ldap.SCOPE_SUBTREE, "(objectClass=*)")
    finally:
        conn.unbind_s()


def test_root_dse_readable_before_bind(make_bridge: MakeBridge) -> None:
    """The RootDSE read clients make on connect is answered without a bind (ldapsearch -x
    always binds anonymously first, so python-ldap reads it, as many applications do)."""
    bridge = make_bridge(change=with_proxy())
    conn = ldap.initialize(proxy_url(bridge))
    try:
        found = conn.search_s("", ldap.SCOPE_BASE, "(objectClass=*)", ["+", "*"])
    finally:
        conn.unbind_s()
    assert len(found) == 1
    dn, attrs = found[0]
    assert dn == "" and attrs["supportedLDAPVersion"] == [b"3"]


def test_passthrough_then_user_bind_on_one_connection(
    slapd: Slapd, make_bridge: MakeBridge
) -> None:
    """A service account binds without a code and searches; the user then binds on the same
    connection, and the connection's identity is the user's from then on."""
    bridge = make_bridge(change=with_proxy(passthrough_dns=[slapd.service_dn]))
    user = "load155"
    conn = ldap.initialize(proxy_url(bridge))
    try:
        conn.simple_bind_s(slapd.service_dn, slapd.service_password)
        assert conn.whoami_s().lower() == f"dn:{slapd.service_dn}".lower()
        found = conn.search_s(slapd.people_dn, ldap.SCOPE_SUBTREE, f"(uid={user})", ["1.1"])
        assert [dn for dn, _ in found] == [slapd.user_dn(user)]
        conn.simple_bind_s(slapd.user_dn(user), password_of(user))
        assert conn.whoami_s().lower() == f"dn:{slapd.user_dn(user)}".lower()
        with pytest.raises(ldap.NO_SUCH_OBJECT):  # unlike the service account, as slapd says
            conn.search_s(slapd.people_dn, ldap.SCOPE_SUBTREE, "(uid=load156)", ["1.1"])
        with pytest.raises(ldap.INVALID_CREDENTIALS):
            conn.simple_bind_s(slapd.service_dn, "wrong")
        with pytest.raises(ldap.INSUFFICIENT_ACCESS):  # the failed bind left it unbound
            conn.search_s(slapd.people_dn, ldap.SCOPE_SUBTREE, f"(uid={user})")
    finally:
        conn.unbind_s()


def test_passthrough_with_a_code_appended_is_refused(slapd: Slapd, make_bridge: MakeBridge) -> None:
    """A passthrough DN is bound as given: only its real password works."""
    bridge = make_bridge(change=with_proxy(passthrough_dns=[slapd.service_dn]))
    result = whoami(proxy_url(bridge), slapd.service_dn, slapd.service_password + "123456")
    assert result.returncode == INVALID_CREDENTIALS


def test_locked_user_refused(slapd: Slapd, make_bridge: MakeBridge) -> None:
    """A locked user's correct password gets 49."""
    bridge = make_bridge(change=with_proxy())
    user = "load157"
    assert whoami(proxy_url(bridge), slapd.user_dn(user), password_of(user)).returncode == 0
    locked = bridge.cli("user", "lock", user)
    assert locked.returncode == 0, locked.stderr
    result = whoami(proxy_url(bridge), slapd.user_dn(user), password_of(user))
    assert result.returncode == INVALID_CREDENTIALS
    assert "reason=locked" in bridge.log()


def test_wrong_password_and_unknown_dn_refused(slapd: Slapd, make_bridge: MakeBridge) -> None:
    """A wrong password, an unknown user, a DN outside the user base: all 49."""
    bridge = make_bridge(change=with_proxy())
    url = proxy_url(bridge)
    assert whoami(url, slapd.user_dn("load158"), "nope").returncode == INVALID_CREDENTIALS
    assert whoami(url, slapd.user_dn("nobody"), "x").returncode == INVALID_CREDENTIALS
    outside = f"uid=load158,ou=services,{slapd.suffix}"
    assert whoami(url, outside, password_of("load158")).returncode == INVALID_CREDENTIALS


def test_bare_user_name_binds(slapd: Slapd, make_bridge: MakeBridge) -> None:
    """A bind with a plain user name instead of a DN is mapped through the directory."""
    bridge = make_bridge(change=with_proxy())
    result = whoami(proxy_url(bridge), "load159", password_of("load159"))
    assert result.returncode == 0, result.stderr + bridge.log()
    assert result.stdout.strip().lower() == f"dn:{slapd.user_dn('load159')}".lower()


def test_sasl_bind_refused(make_bridge: MakeBridge) -> None:
    """A SASL bind is answered authMethodNotSupported (7), not left hanging."""
    bridge = make_bridge(change=with_proxy())
    conn = ldap.initialize(proxy_url(bridge))
    conn.set_option(ldap.OPT_TIMEOUT, 5)
    try:
        with pytest.raises(ldap.STRONG_AUTH_NOT_SUPPORTED):  # result code 7
            conn.sasl_bind_s("", "PLAIN", b"\0load161\0load161-pw")
    finally:
        conn.unbind_s()


def test_garbage_closes_only_that_connection(slapd: Slapd, make_bridge: MakeBridge) -> None:
    """Random bytes and a huge PDU header each close their own connection; the proxy serves on."""
    bridge = make_bridge(change=with_proxy())
    host, port = bridge.config["ldap_proxy"]["listen"].rsplit(":", 1)
    for junk in (b"\x16\x03\x01\x02\x00" + os.urandom(64), b"\x30\x84\x7f\xff\xff\xff" + b"x" * 10):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(junk)
            assert sock.recv(100) == b""  # closed by the proxy
    result = whoami(proxy_url(bridge), slapd.user_dn("load160"), password_of("load160"))
    assert result.returncode == 0, result.stderr


# --- verified TLS from the proxy to the directory ---------------------------------------

TLS_USER = SlapdUser("tlsuser", "tlsuser-pw")


@dataclass(frozen=True)
class _Tls:
    """A slapd with a certificate for 127.0.0.1, one for another name, and the CAs."""

    good: Slapd
    misnamed: Slapd
    ca: Path
    other_ca: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Tls]:
    """Two TLS slapds (right and wrong host name) from a test CA, and an unrelated CA."""
    require_binary("slapd")
    pki = tmp_path_factory.mktemp("proxy-pki")
    ca, other = make_ca(pki, "Proxy Test CA"), make_ca(pki, "Unrelated CA")
    ip = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    good_cert = make_server_cert(ca, pki, "ip", ip)
    wrong_cert = make_server_cert(ca, pki, "dns", [x509.DNSName("ldap.example.org")])
    good = Slapd(tmp_path_factory.mktemp("proxy-tls"), users=[TLS_USER], tls=good_cert)
    misnamed = Slapd(tmp_path_factory.mktemp("proxy-misnamed"), users=[TLS_USER], tls=wrong_cert)
    good.start()
    try:
        misnamed.start()
        try:
            yield _Tls(good, misnamed, ca.path, other.path)
        finally:
            misnamed.stop()
    finally:
        good.stop()


def over_tls(server: Slapd, mode: str, ca_file: Path) -> Callable[[dict[str, Any]], None]:
    """Point the daemon at `server` over ldaps:// or StartTLS, with a proxy section."""

    def change(config: dict[str, Any]) -> None:
        config["directory"].update(
            urls=[server.ldaps_url if mode == "ldaps" else server.url],
            bind_dn=server.service_dn,
            bind_password=server.service_password,
            user_base=server.people_dn,
            start_tls=mode == "starttls",
            ca_file=str(ca_file),
        )
        config["mfa"]["exempt_groups"] = []
        with_proxy(passthrough_dns=[server.service_dn])(config)

    return change


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_upstream_tls_verified(mode: str, tls: _Tls, make_bridge: MakeBridge) -> None:
    """Over ldaps:// or StartTLS with the right CA, users and service accounts bind through."""
    bridge = make_bridge(change=over_tls(tls.good, mode, tls.ca))
    url = proxy_url(bridge)
    user = whoami(url, tls.good.user_dn(TLS_USER.uid), TLS_USER.password)
    assert user.returncode == 0, user.stderr + bridge.log()
    service = whoami(url, tls.good.service_dn, tls.good.service_password)
    assert service.returncode == 0, service.stderr + bridge.log()
    assert service.stdout.strip().lower() == f"dn:{tls.good.service_dn}".lower()


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
@pytest.mark.parametrize("case", ["unrelated CA", "wrong host name"])
def test_upstream_tls_failure_sends_no_password(
    mode: str, case: str, tls: _Tls, make_bridge: MakeBridge
) -> None:
    """A certificate that does not verify fails closed (49) and no bind reaches slapd."""
    server = tls.misnamed if case == "wrong host name" else tls.good
    ca = tls.ca if case == "wrong host name" else tls.other_ca
    bridge = make_bridge(change=over_tls(server, mode, ca))
    binds = server.bind_count()
    result = whoami(proxy_url(bridge), server.service_dn, server.service_password)
    assert result.returncode == INVALID_CREDENTIALS, result.stderr + bridge.log()
    assert "ldap.bind.unavailable" in bridge.log()
    assert server.bind_count() == binds
