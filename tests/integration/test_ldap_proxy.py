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
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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


def test_a_connection_per_login_adds_no_log_lines_of_twisteds(
    slapd: Slapd, make_bridge: MakeBridge
) -> None:
    """An app connecting per login opens an upstream connection per login: Twisted's
    "Starting factory" and "Stopping factory" lines for each would cost the proxy CPU
    and fill the log at debug level."""
    bridge = make_bridge(change=with_proxy())
    before = bridge.log().count(" factory ")
    for user in ["load154", "load155", "load156"]:
        result = whoami(proxy_url(bridge), slapd.user_dn(user), password_of(user))
        assert result.returncode == 0, result.stderr + bridge.log()
    assert settled(lambda: bridge.log().count("ldap.bind.ok"), 3) == 3
    assert bridge.log().count(" factory ") == before


def test_enrolled_user_needs_the_code(slapd: Slapd, make_bridge: MakeBridge) -> None:
    """An enrolled user binds with password+code; a wrong code and (rebinds off) a replayed
    one get 49."""
    bridge = make_bridge(change=with_proxy(rebind_seconds=0))
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


def test_an_app_binding_per_request_keeps_working(slapd: Slapd, make_bridge: MakeBridge) -> None:
    """Seven ldapsearch -D ... -w password+code in a row, as an app binding per request
    does: all answered, the user still active with no failure; audit reason rebind."""
    bridge = make_bridge(change=with_proxy())
    user = "load153"
    dn, url = slapd.user_dn(user), proxy_url(bridge)
    code = code_for(enroll(bridge, user))
    for _ in range(7):
        found = tool(
            "ldapsearch", "-x", "-H", url, "-D", dn, "-w", password_of(user) + code,
            "-b", dn, "-s", "base", "uid",
        )  # fmt: skip
        assert found.returncode == 0, found.stderr
        assert f"uid: {user}" in found.stdout
    status = json.loads(bridge.cli("user", "status", user, "--json").stdout)
    assert (status["state"], status["failures"]) == ("active", 0)
    assert bridge.audit_reasons("ldap") == ["activated"] + ["rebind"] * 6


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
    assert bridge.audit_reasons() == ["activated", "replay"]
    assert [a["protocol"] for a in bridge.audit()] == ["ldap", "radius"]


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


def settled(count: Callable[[], int], expected: int) -> int:
    """`count()` once it reaches `expected` (slapd writes its log a moment later), or at 3 s."""
    deadline = time.monotonic() + 3
    while (value := count()) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_each_login_costs_one_bind_on_one_upstream_connection(
    slapd: Slapd, make_bridge: MakeBridge
) -> None:
    """Users binding one after another on a connection: one bind each at slapd, one socket."""
    bridge = make_bridge(change=with_proxy())
    warm = whoami(proxy_url(bridge), slapd.user_dn("load163"), password_of("load163"))
    assert warm.returncode == 0, warm.stderr + bridge.log()  # the directory's pools are open
    users = ["load160", "load161", "load162"]
    binds = settled(slapd.bind_count, 0)
    accepted = slapd.log_text().count(" ACCEPT from ")
    conn = ldap.initialize(proxy_url(bridge))
    try:
        for user in users:
            conn.simple_bind_s(slapd.user_dn(user), password_of(user))
            assert conn.whoami_s().lower() == f"dn:{slapd.user_dn(user)}".lower()
    finally:
        conn.unbind_s()
    assert settled(slapd.bind_count, binds + len(users)) == binds + len(users)
    assert slapd.log_text().count(" ACCEPT from ") == accepted + 1


def test_empty_password_never_binds(slapd: Slapd, make_bridge: MakeBridge) -> None:
    """A DN with an empty password is refused with 49 (slapd would bind it as anonymous)."""
    bridge = make_bridge(change=with_proxy())
    conn = ldap.initialize(proxy_url(bridge))
    try:
        with pytest.raises(ldap.INVALID_CREDENTIALS):
            conn.simple_bind_s(slapd.user_dn("load154"), "")
    finally:
        conn.unbind_s()
    assert bridge.audit_reasons("ldap") == ["empty-password"]


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
    assert bridge.audit_reasons("ldap")[-1] == "locked"


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


# --- TLS towards clients: StartTLS, LDAPS, require_tls ----------------------------------

CONFIDENTIALITY_REQUIRED = 13


@dataclass(frozen=True)
class _ProxyPki:
    """The proxy's certificate for 127.0.0.1 and the CA clients trust it with."""

    ca: Path
    certificate: Path
    key: Path


@pytest.fixture(scope="module")
def proxy_pki(tmp_path_factory: pytest.TempPathFactory) -> _ProxyPki:
    pki = tmp_path_factory.mktemp("proxy-client-pki")
    ca = make_ca(pki, "Proxy Listener CA")
    ip = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]  # ldap tools check the name
    certificate, key = make_server_cert(ca, pki, "proxy-listener", ip)
    return _ProxyPki(ca.path, certificate, key)


def with_tls_proxy(pki: _ProxyPki, **extra: Any) -> Callable[[dict[str, Any]], None]:
    """A proxy section with a certificate, StartTLS on `listen` and LDAPS on `listen_tls`."""
    tls = {"certificate": str(pki.certificate), "key": str(pki.key)}
    return with_proxy(tls=tls, listen_tls=f"127.0.0.1:{free_tcp_port()}", **extra)


def ldaps_url(bridge: Bridge) -> str:
    return f"ldaps://{bridge.config['ldap_proxy']['listen_tls']}"


def tls_whoami(
    pki: _ProxyPki, url: str, dn: str, password: str, *options: str
) -> subprocess.CompletedProcess[str]:
    """ldapwhoami trusting the test CA only, with the certificate required (and its name
    checked). LDAPNOINIT would also ignore the LDAPTLS_* variables, so it is not set here;
    the variables override the machine's ldap.conf."""
    require_binary("ldapwhoami")
    env = {
        **os.environ,
        "LC_ALL": "C",
        "LDAPRC": "/dev/null",
        "LDAPTLS_CACERT": str(pki.ca),
        "LDAPTLS_REQCERT": "demand",
    }
    env.pop("LDAPNOINIT", None)
    args = ["ldapwhoami", "-x", *options, "-H", url, "-D", dn, "-w", password]
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False, env=env)


def test_starttls_and_ldaps_bind_a_grace_user(
    slapd: Slapd, make_bridge: MakeBridge, proxy_pki: _ProxyPki
) -> None:
    """ldapwhoami -ZZ on the plain listener and ldaps:// on the LDAPS one, verifying the
    proxy's certificate against the test CA, bind a user in grace through the proxy."""
    bridge = make_bridge(change=with_tls_proxy(proxy_pki))
    user = "load162"
    dn = slapd.user_dn(user)
    for url, options in ((proxy_url(bridge), ("-ZZ",)), (ldaps_url(bridge), ())):
        result = tls_whoami(proxy_pki, url, dn, password_of(user), *options)
        assert result.returncode == 0, result.stderr + bridge.log()
        assert result.stdout.strip().lower() == f"dn:{dn}".lower()
    assert "ldap.starttls" in bridge.log()


def test_require_tls_refuses_clear_binds(
    slapd: Slapd, make_bridge: MakeBridge, proxy_pki: _ProxyPki
) -> None:
    """With require_tls a bind in clear gets confidentialityRequired (13), for users and
    service accounts alike; with StartTLS or LDAPS it succeeds."""
    bridge = make_bridge(
        change=with_tls_proxy(proxy_pki, require_tls=True, passthrough_dns=[slapd.service_dn])
    )
    user = "load163"
    dn = slapd.user_dn(user)
    clear = whoami(proxy_url(bridge), dn, password_of(user))
    assert clear.returncode == CONFIDENTIALITY_REQUIRED, clear.stderr
    service = whoami(proxy_url(bridge), slapd.service_dn, slapd.service_password)
    assert service.returncode == CONFIDENTIALITY_REQUIRED, service.stderr
    assert "reason=confidentiality-required" in bridge.log()
    assert "ldap.bind.ok" not in bridge.log()
    started = tls_whoami(proxy_pki, proxy_url(bridge), dn, password_of(user), "-ZZ")
    assert started.returncode == 0, started.stderr + bridge.log()
    ldaps = tls_whoami(proxy_pki, ldaps_url(bridge), slapd.service_dn, slapd.service_password)
    assert ldaps.returncode == 0, ldaps.stderr + bridge.log()


def test_starttls_with_an_untrusted_ca_fails_on_the_client(
    slapd: Slapd, make_bridge: MakeBridge, proxy_pki: _ProxyPki, tmp_path: Path
) -> None:
    """A client that trusts another CA refuses the proxy's certificate (no bind is sent)."""
    bridge = make_bridge(change=with_tls_proxy(proxy_pki))
    other = _ProxyPki(
        make_ca(tmp_path, "Not The Proxy CA").path, proxy_pki.certificate, proxy_pki.key
    )
    user = "load164"
    result = tls_whoami(other, proxy_url(bridge), slapd.user_dn(user), password_of(user), "-ZZ")
    assert result.returncode != 0
    assert "ldap.bind" not in bridge.log()


# --- limits and robustness against a running daemon --------------------------------------


def proxy_address(bridge: Bridge) -> tuple[str, int]:
    host, port = bridge.config["ldap_proxy"]["listen"].rsplit(":", 1)
    return host, int(port)


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the proxy closed `sock` (EOF or reset) within `timeout`, ignoring any data."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_huge_pdu_and_random_bytes_close_only_their_connection(
    slapd: Slapd, make_bridge: MakeBridge
) -> None:
    """A 10 MB request and random bytes each close their own connection, while another
    client's bound session on the same proxy carries on."""
    bridge = make_bridge(change=with_proxy())
    user = "load165"
    session = ldap.initialize(proxy_url(bridge))
    session.set_option(ldap.OPT_NETWORK_TIMEOUT, 5)
    session.set_option(ldap.OPT_TIMEOUT, 10)
    try:
        session.simple_bind_s(slapd.user_dn(user), password_of(user))
        size = 10 * 1024 * 1024
        header = b"\x30\x84" + size.to_bytes(4, "big")  # an LDAPMessage of 10 MiB announced
        junk = bytearray(os.urandom(4096))
        junk[0] = 0xFF if junk[0] == 0x30 else junk[0]  # never a plausible header
        for first, rest in ((header, b"\x02\x01\x01" + b"\x00" * (size - 3)), (bytes(junk), b"")):
            with socket.create_connection(proxy_address(bridge), timeout=5) as sock:
                try:
                    sock.sendall(first)
                    for offset in range(0, len(rest), 1 << 20):
                        sock.sendall(rest[offset : offset + (1 << 20)])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # closed by the proxy while we were still sending: as expected
                assert closed_by_peer(sock)
            found = session.search_s(slapd.user_dn(user), ldap.SCOPE_BASE, "(objectClass=*)")
            assert [dn for dn, _ in found] == [slapd.user_dn(user)]
        assert session.whoami_s().lower() == f"dn:{slapd.user_dn(user)}".lower()
    finally:
        session.unbind_s()
    assert bridge.log().count("ldap.drop") >= 2


def test_connection_limit_per_address_and_idle_timeout(
    slapd: Slapd, make_bridge: MakeBridge
) -> None:
    """Beyond max_connections_per_address a new connection is closed at once; idle
    connections are closed after idle_timeout, which frees their places."""
    bridge = make_bridge(change=with_proxy(max_connections_per_address=2, idle_timeout=2))
    held = [socket.create_connection(proxy_address(bridge), timeout=5) for _ in range(2)]
    try:
        with socket.create_connection(proxy_address(bridge), timeout=5) as extra:
            assert closed_by_peer(extra, timeout=2)
        assert "ldap.connection.refused reason=max-connections-per-address" in bridge.log()
        for sock in held:  # a Notice of Disconnection, then the end of the connection
            assert closed_by_peer(sock, timeout=6)
    finally:
        for sock in held:
            sock.close()
    result = whoami(proxy_url(bridge), slapd.user_dn("load166"), password_of("load166"))
    assert result.returncode == 0, result.stderr + bridge.log()
    assert "reason=idle timeout" in bridge.log()


def test_hundred_concurrent_connections_bind_and_search(
    slapd: Slapd, make_bridge: MakeBridge
) -> None:
    """100 python-ldap connections open at once, each bound as a user in grace (50 users,
    two connections each), then each searching its own entry: all succeed."""
    bridge = make_bridge(change=with_proxy())
    url = proxy_url(bridge)
    users = [f"load{150 + i % 50:03d}" for i in range(100)]
    all_open = threading.Barrier(len(users), timeout=60)

    def session(user: str) -> str:
        conn = ldap.initialize(url)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 10)
        conn.set_option(ldap.OPT_TIMEOUT, 30)
        try:
            conn.simple_bind_s(slapd.user_dn(user), password_of(user))
            all_open.wait()  # every connection is open and bound before any searches
            found = conn.search_s(slapd.user_dn(user), ldap.SCOPE_BASE, "(objectClass=*)", ["uid"])
            ((_dn, attrs),) = found
            return attrs["uid"][0].decode()
        finally:
            conn.unbind_s()

    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        results = list(pool.map(session, users))
    assert results == users, bridge.log()[-3000:]


@pytest.fixture
def own_slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A directory of this test's own, free to be stopped and restarted."""
    server = Slapd(tmp_path / "own-slapd", users=[SlapdUser("user01", "user01-pw")])
    server.start()
    yield server
    server.stop()


def test_directory_down_answers_49_then_recovers(own_slapd: Slapd, make_bridge: MakeBridge) -> None:
    """With the directory stopped a bind gets 49 (and a log line); once back, binds work."""

    def change(config: dict[str, Any]) -> None:
        config["directory"].update(
            urls=[own_slapd.url],
            bind_dn=own_slapd.service_dn,
            bind_password=own_slapd.service_password,
            user_base=own_slapd.people_dn,
        )
        with_proxy()(config)

    bridge = make_bridge(change=change)
    dn = own_slapd.user_dn("user01")
    assert whoami(proxy_url(bridge), dn, "user01-pw").returncode == 0
    own_slapd.stop()
    assert whoami(proxy_url(bridge), dn, "user01-pw").returncode == INVALID_CREDENTIALS
    assert bridge.audit_reasons("ldap")[-1] == "directory-down"
    own_slapd.start()
    deadline = time.monotonic() + 10
    while (result := whoami(proxy_url(bridge), dn, "user01-pw")).returncode != 0:
        assert time.monotonic() < deadline, result.stderr + bridge.log()
        time.sleep(0.2)
    assert result.stdout.strip().lower() == f"dn:{dn}".lower()


def test_allowed_groups_limit_who_binds_through_the_proxy(
    slapd: Slapd, make_bridge: MakeBridge
) -> None:
    """ldap_proxy.allowed_groups (SPEC 11's rule for an app): a member binds, a
    non-member with the right password gets 49, audited not-allowed."""
    bridge = make_bridge(change=with_proxy(allowed_groups=[slapd.group_dn("wifi-staff")]))
    member = whoami(proxy_url(bridge), slapd.user_dn("load191"), password_of("load191"))
    assert member.returncode == 0, member.stderr
    outsider = whoami(proxy_url(bridge), slapd.user_dn("load196"), password_of("load196"))
    assert outsider.returncode == 49, outsider.stdout + outsider.stderr
    assert bridge.audit_reasons("ldap") == ["grace", "not-allowed"]
