"""ldaps:// and StartTLS to the directory: certificates are verified (chain and host name)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.certs import Ca, make_ca, make_server_cert
from tests.conftest import require_binary
from tests.harness import Bridge, RadiusClient
from tests.slapd import Slapd, SlapdUser

pytestmark = pytest.mark.integration

USER, PASSWORD = "grace", "grace-pw"
STARTTLS_OID = "1.3.6.1.4.1.1466.20037"
MODES = ["ldaps", "starttls"]


@dataclass(frozen=True)
class _Pki:
    """The test CA, an unrelated CA, and server certificates from the test CA."""

    ca: Ca
    other_ca: Ca
    good: tuple[Path, Path]  # for IP 127.0.0.1
    wrong_name: tuple[Path, Path]  # for DNS:ldap.example.org only


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> _Pki:
    """Certificates written to a temporary directory."""
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "Bridge Test CA")
    other = make_ca(directory, "Unrelated CA")
    good = make_server_cert(
        ca, directory, "ip", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    wrong = make_server_cert(ca, directory, "dns", [x509.DNSName("ldap.example.org")])
    return _Pki(ca, other, good, wrong)


def _start_slapd(workdir: Path, tls: tuple[Path, Path]) -> Slapd:
    require_binary("slapd")
    require_binary("ldapwhoami")
    server = Slapd(workdir, users=[SlapdUser(USER, PASSWORD)], tls=tls)
    server.start()
    return server


@pytest.fixture(scope="module")
def tls_slapd(tmp_path_factory: pytest.TempPathFactory, pki: _Pki) -> Iterator[Slapd]:
    """A slapd whose certificate (from the test CA) is valid for 127.0.0.1."""
    server = _start_slapd(tmp_path_factory.mktemp("slapd-tls"), pki.good)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def misnamed_slapd(tmp_path_factory: pytest.TempPathFactory, pki: _Pki) -> Iterator[Slapd]:
    """A slapd whose certificate (from the test CA) names ldap.example.org only."""
    server = _start_slapd(tmp_path_factory.mktemp("slapd-misnamed"), pki.wrong_name)
    yield server
    server.stop()


def _point_at(server: Slapd, mode: str, ca_file: Path | None) -> Callable[[dict[str, Any]], None]:
    """A `make_bridge(change=...)` that uses `server` over ldaps:// or StartTLS."""

    def change(config: dict[str, Any]) -> None:
        directory = config["directory"]
        directory.update(
            urls=[server.ldaps_url if mode == "ldaps" else server.url],
            bind_dn=server.service_dn,
            bind_password=server.service_password,
            user_base=server.people_dn,
            timeout=2,
        )
        if mode == "starttls":
            directory["start_tls"] = True
        if ca_file is not None:
            directory["ca_file"] = str(ca_file)
        config["mfa"]["exempt_groups"] = []

    return change


def _wait_for_log(bridge: Bridge, text: str, timeout: float = 5.0) -> str:
    """The daemon's log once it contains `text` (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        log = bridge.log()
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def _assert_refused(
    server: Slapd,
    bridge: Bridge,
    client_for: Callable[..., RadiusClient],
) -> None:
    """The login is rejected, the directory reported unavailable, nobody bound at slapd."""
    binds = server.bind_count()
    reply = client_for(bridge).login(USER, PASSWORD)
    assert reply is not None and reply.rejected, reply and reply.message
    log = _wait_for_log(bridge, "directory.unavailable")
    assert "directory.unavailable" in log, log
    assert "certificate" in log.lower(), log
    assert server.bind_count() == binds  # no password ever went over the unverified link


@pytest.mark.parametrize("mode", MODES)
def test_verified_certificate_is_accepted(
    mode: str,
    tls_slapd: Slapd,
    pki: _Pki,
    make_bridge: Callable[..., Bridge],
    client_for: Callable[..., RadiusClient],
) -> None:
    """With ca_file = the test CA, a login over ldaps:// or StartTLS is accepted."""
    starttls_before = tls_slapd.log_text().count(STARTTLS_OID)
    bridge = make_bridge(change=_point_at(tls_slapd, mode, pki.ca.path))
    reply = client_for(bridge).login(USER, PASSWORD)
    assert reply is not None and reply.accepted, (reply and reply.message, bridge.log())
    assert "directory.unavailable" not in bridge.log()
    if mode == "starttls":
        assert tls_slapd.log_text().count(STARTTLS_OID) > starttls_before


@pytest.mark.parametrize("mode", MODES)
def test_unrelated_ca_is_rejected(
    mode: str,
    tls_slapd: Slapd,
    pki: _Pki,
    make_bridge: Callable[..., Bridge],
    client_for: Callable[..., RadiusClient],
) -> None:
    """With ca_file = an unrelated CA, the server certificate is refused and so is the login."""
    bridge = make_bridge(change=_point_at(tls_slapd, mode, pki.other_ca.path))
    _assert_refused(tls_slapd, bridge, client_for)


@pytest.mark.parametrize("mode", MODES)
def test_certificate_for_another_host_is_rejected(
    mode: str,
    misnamed_slapd: Slapd,
    pki: _Pki,
    make_bridge: Callable[..., Bridge],
    client_for: Callable[..., RadiusClient],
) -> None:
    """A certificate from the trusted CA but for ldap.example.org only is refused at 127.0.0.1."""
    bridge = make_bridge(change=_point_at(misnamed_slapd, mode, pki.ca.path))
    _assert_refused(misnamed_slapd, bridge, client_for)


@pytest.mark.parametrize("mode", MODES)
def test_no_ca_file_uses_system_trust_store(
    mode: str,
    tls_slapd: Slapd,
    make_bridge: Callable[..., Bridge],
    client_for: Callable[..., RadiusClient],
) -> None:
    """Without ca_file the system trust store applies, which does not know the test CA."""
    bridge = make_bridge(change=_point_at(tls_slapd, mode, None))
    _assert_refused(tls_slapd, bridge, client_for)
