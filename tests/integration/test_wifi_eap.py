"""Wi-Fi logins (SPEC section 10) with wpa_supplicant's eapol_test as the supplicant.

eapol_test runs one 802.1X conversation against the daemon, as an access point would
forward it, and after an accept compares the MS-MPPE keys of the Access-Accept with
the keys it derived from the TLS session itself: "MPPE keys OK" means the access point
would get working Wi-Fi keys, not only an accept.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.certs import make_ca, make_server_cert
from tests.conftest import require_binary
from tests.harness import Bridge, code_for, free_tcp_port, scrape_metrics, wait_for
from tests.slapd import Slapd

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
METHODS = {"ttls": ("TTLS", "auth=PAP"), "peap": ("PEAP", "auth=GTC")}


@dataclass(frozen=True)
class Wifi:
    """A daemon serving EAP, and the CA its clients trust."""

    bridge: Bridge
    ca: Path


@dataclass(frozen=True)
class Run:
    """One eapol_test conversation: its verdict and what it printed."""

    success: bool
    keys_ok: bool
    output: str


def eapol(
    wifi: Wifi,
    user: str,
    password: str,
    *,
    method: str = "ttls",
    tls13: bool = True,
    outer: str = "anonymous",
    eap: str | None = None,
    fragment_size: int | None = None,
) -> Run:
    """Run eapol_test for `user` with `password` (password+code) over `method`."""
    binary = require_binary("eapol_test")
    name, phase2 = METHODS[method]
    lines = [
        "network={",
        "  key_mgmt=WPA-EAP",
        f"  eap={eap or name}",
        f'  identity="{user}"',
        f'  anonymous_identity="{outer}"',
        f'  password="{password}"',
        f'  ca_cert="{wifi.ca}"',
        f'  phase2="{phase2}"',
    ]
    lines.append(f'  phase1="tls_disable_tlsv1_3={0 if tls13 else 1}"')
    if fragment_size is not None:
        lines.append(f"  fragment_size={fragment_size}")
    conf = wifi.bridge.workdir / f"eapol-{user}-{method}.conf"
    conf.write_text("\n".join([*lines, "}"]) + "\n", encoding="utf-8")
    port = wifi.bridge.config["radius"]["listen"].rsplit(":", 1)[1]
    command = [binary, "-c", str(conf), "-a", "127.0.0.1", "-p", port]
    command += ["-s", "testing123", "-t", "15", "-r", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    output = done.stdout + done.stderr
    last = output.strip().splitlines()[-1] if output.strip() else ""
    return Run(last == "SUCCESS", "MPPE keys OK: 1  mismatch: 0" in output, output)


@pytest.fixture
def wifi(make_bridge: MakeBridge, tmp_path: Path) -> Callable[..., Wifi]:
    """A daemon with radius.eap configured (a test CA, a server certificate it issued)."""

    def make(names: int = 1, change: Any = None, **radius: Any) -> Wifi:
        ca = make_ca(tmp_path, "Wi-Fi Test CA")
        sans: list[x509.GeneralName] = [x509.DNSName("radius.example.org")]
        sans += [x509.DNSName(f"ap{i:03d}.wifi.example.org") for i in range(names - 1)]
        certificate, key = make_server_cert(ca, tmp_path, "radius", sans)
        eap = {"certificate": str(certificate), "key": str(key), "ca_file": str(ca.path)}
        return Wifi(make_bridge(mode="append", eap=eap, change=change, **radius), ca.path)

    return make


def enroll(bridge: Bridge, user: str) -> str:
    result = bridge.cli("user", "enroll", user, "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["secret"])


@pytest.mark.parametrize("method", ["ttls", "peap"])
@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
def test_password_and_code_accepted_with_working_keys(
    wifi: Callable[..., Wifi], method: str, tls13: bool
) -> None:
    """TTLS/PAP and PEAP/GTC over TLS 1.2 and 1.3: accepted, and eapol_test confirms the
    MS-MPPE keys; the audit line names the method, the user and the outer identity."""
    net = wifi()
    secret = enroll(net.bridge, "carol")
    run = eapol(net, "carol", "carol-pw" + code_for(secret), method=method, tls13=tls13)
    assert run.success, run.output[-3000:]
    assert run.keys_ok, run.output[-3000:]
    version = "TLSv1.3" if tls13 else "TLSv1.2"
    assert f"SSL: Using TLS version {version}" in run.output
    line = net.bridge.audit()[-1]
    assert line["protocol"] == ("eap-ttls" if method == "ttls" else "peap")
    assert (line["user"], line["reason"], line["outer_identity"]) == (
        "carol",
        "activated",  # an enrolled user's first code
        "anonymous",
    )


@pytest.fixture
def net(wifi: Callable[..., Wifi]) -> Wifi:
    return wifi()


def wrong_code(secret: str) -> str:
    return next(c for c in ("000000", "111111", "222222") if c != code_for(secret))


@pytest.mark.parametrize("method", ["ttls", "peap"])
def test_wrong_code_replayed_code_and_locked_user_are_rejected(net: Wifi, method: str) -> None:
    """A wrong code, a code used once already, and a user locked after too many wrong
    codes: each an EAP-Failure (eapol_test FAILURE), audited with its reason."""
    secret = enroll(net.bridge, "erin")
    code = code_for(secret)
    assert eapol(net, "erin", "erin-pw" + code, method=method).success
    replayed = eapol(net, "erin", "erin-pw" + code, method=method)
    assert not replayed.success and "EAP-Failure" in replayed.output
    for _ in range(2):  # with the replay, mfa.max_failures (3): locked
        assert not eapol(net, "erin", "erin-pw" + wrong_code(secret), method=method).success
    later = code_for(secret, 1)
    assert not eapol(net, "erin", "erin-pw" + later, method=method).success
    reasons = [line["reason"] for line in net.bridge.audit() if line["user"] == "erin"]
    assert reasons == ["activated", "replay", "wrong-code", "wrong-code", "locked"]
    listed = net.bridge.cli("user", "status", "erin", "--json")
    assert json.loads(listed.stdout)["state"] == "locked"


def test_grace_and_exempt_users_log_in_with_the_password_alone(net: Wifi) -> None:
    """A user in the enrollment period and a member of the exempt group: password only."""
    grace = eapol(net, "frank", "frank-pw")
    assert grace.success and grace.keys_ok, grace.output[-2000:]
    exempt = eapol(net, "dave", "dave-pw", method="peap")
    assert exempt.success and exempt.keys_ok, exempt.output[-2000:]
    reasons = {line["user"]: line["reason"] for line in net.bridge.audit()}
    assert reasons == {"frank": "grace", "dave": "exempt"}


def test_a_wrong_password_is_rejected_and_the_peer_told_nothing(net: Wifi) -> None:
    """A wrong password: EAP-Failure, no Reply-Message, audited as bad-password."""
    run = eapol(net, "grace", "not-her-password", method="peap")
    assert not run.success
    assert "Reply-Message" not in run.output
    assert net.bridge.audit()[-1]["reason"] == "bad-password"


def test_eap_md5_is_refused_with_the_method_named_in_the_log(
    wifi: Callable[..., Wifi],
) -> None:
    """A supplicant set up for EAP-MD5 Naks TTLS without asking for PEAP: EAP-Failure,
    audited as unsupported, and the log names the method it asked for. The metrics
    count EAP's rounds, accepts and failures."""
    port = free_tcp_port()
    net = wifi(change=lambda c: c.update(metrics={"listen": f"127.0.0.1:{port}"}))
    assert eapol(net, "heidi", "heidi-pw").success
    run = eapol(net, "heidi", "heidi-pw", eap="MD5")
    assert not run.success
    assert "EAP-Failure" in run.output
    line = net.bridge.audit()[-1]
    assert (line["reason"], line["user"]) == ("unsupported", "anonymous")
    assert "MD5_CHALLENGE" in net.bridge.log()
    assert "offered TTLS,PEAP" in net.bridge.log()
    metrics = scrape_metrics(f"127.0.0.1:{port}")
    assert metrics['mfa_bridge_eap_steps_total{kind="accepts"}'] == 1
    assert metrics['mfa_bridge_eap_steps_total{kind="failures"}'] == 1
    assert metrics['mfa_bridge_eap_steps_total{kind="rounds"}'] >= 4
    assert metrics['mfa_bridge_eap_conversations_dropped_total{cause="expired"}'] == 0
    grace = 'mfa_bridge_decisions_total{client="127.0.0.1/32",outcome="accept",'
    assert metrics[grace + 'protocol="eap-ttls",reason="grace"}'] == 1


def test_a_large_certificate_and_small_client_fragments(wifi: Callable[..., Wifi]) -> None:
    """A certificate chain several EAP packets long, and a supplicant that cuts its own
    messages into 100-octet fragments: both directions reassembled, keys confirmed."""
    net = wifi(names=120)
    assert len(Path(net.bridge.config["radius"]["eap"]["certificate"]).read_bytes()) > 4000
    for method, tls13 in (("ttls", False), ("peap", True)):
        run = eapol(net, "ivan", "ivan-pw", method=method, tls13=tls13, fragment_size=100)
        assert run.success and run.keys_ok, run.output[-3000:]
        assert "Flags 0xc0" in run.output  # the server's first fragment: L and M
        assert "more fragments will follow" in run.output  # the supplicant's own


def test_without_radius_eap_an_eap_request_gets_eap_failure(make_bridge: MakeBridge) -> None:
    """No radius.eap: EAP is refused at once with EAP-Failure inside the reject, so the
    supplicant gives up cleanly (not after a timeout)."""
    bridge = make_bridge(mode="append")
    run = eapol(Wifi(bridge, bridge.workdir / "none.pem"), "judy", "judy-pw")
    assert not run.success
    assert "EAP-Failure" in run.output
    assert "could not extract EAP-Message" not in run.output
    assert bridge.audit()[-1]["reason"] == "unsupported"


def test_a_certificate_not_issued_by_ca_file_stops_the_start(
    make_bridge: MakeBridge, tmp_path: Path
) -> None:
    """radius.eap.ca_file names another CA: the daemon does not start, and says why."""
    ours, theirs = make_ca(tmp_path, "Our CA"), make_ca(tmp_path, "Another CA")
    certificate, key = make_server_cert(ours, tmp_path, "radius", [x509.DNSName("r.example")])
    eap = {"certificate": str(certificate), "key": str(key), "ca_file": str(theirs.path)}
    bridge = make_bridge(start=False, eap=eap)
    result = bridge.cli("run")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"radius.eap: {certificate} is not issued by a CA in {theirs.path}" in result.stderr
    eap["key"] = str(make_server_cert(ours, tmp_path, "other", [x509.DNSName("o")])[1])
    eap["ca_file"] = str(ours.path)
    mismatched = bridge.cli("run")
    assert mismatched.returncode == 1
    assert "radius.eap:" in mismatched.stderr and "key" in mismatched.stderr


def test_a_renewed_certificate_is_taken_on_sighup(
    wifi: Callable[..., Wifi], tmp_path: Path
) -> None:
    """The certificate files replaced and SIGHUP sent: new tunnels use the new certificate
    (a supplicant that trusts only the new CA logs in); no restart."""
    net = wifi()
    assert eapol(net, "judy", "judy-pw").success
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    new_ca = make_ca(renewed, "Renewed CA")
    certificate, key = make_server_cert(new_ca, renewed, "radius", [x509.DNSName("r.example")])
    eap = net.bridge.config["radius"]["eap"]
    Path(eap["certificate"]).write_bytes(certificate.read_bytes())
    Path(eap["key"]).write_bytes(key.read_bytes())
    eap["ca_file"] = str(new_ca.path)
    net.bridge.reload()
    assert wait_for(lambda: "config.reloaded" in net.bridge.log()), net.bridge.log()
    assert eapol(Wifi(net.bridge, new_ca.path), "judy", "judy-pw").success
    assert not eapol(net, "judy", "judy-pw").success  # the old CA no longer vouches for it


def test_wifi_gets_its_vlan_and_a_remembered_device_its_password_alone(
    wifi: Callable[..., Wifi], slapd: Slapd
) -> None:
    """SPEC 11 over EAP: a staff member's Access-Accept carries the VLAN of the reply
    rule beside the MPPE keys; after one login with password+code, the same device
    (Calling-Station-Id) re-authenticates with the password alone, audited remembered."""
    replies = [
        {
            "group": slapd.group_dn("wifi-staff"),
            "attributes": {
                "Tunnel-Type": "VLAN",
                "Tunnel-Medium-Type": "IEEE-802",
                "Tunnel-Private-Group-Id": "42",
            },
        }
    ]
    client = {"address": "127.0.0.1/32", "secret": "testing123", "remember_seconds": 3600}
    net = wifi(replies=replies, clients=[client])
    secret = enroll(net.bridge, "load191")
    first = eapol(net, "load191", "load191-pw" + code_for(secret), method="peap")
    assert first.success and first.keys_ok, first.output[-2000:]
    assert "Attribute 81 (Tunnel-Private-Group-Id) length=4" in first.output, first.output[-3000:]
    again = eapol(net, "load191", "load191-pw")
    assert again.success and again.keys_ok
    assert [line["reason"] for line in net.bridge.audit()] == ["activated", "remembered"]


def test_with_several_workers_each_conversation_stays_with_one(
    wifi: Callable[..., Wifi],
) -> None:
    """server.workers with EAP: the kernel keeps each NAS address and port on one worker,
    which holds the conversation's TLS state; conversations from several ports reach
    several workers, and every one completes with working keys."""

    def workers(config: dict[str, Any]) -> None:
        config["server"] = {"workers": 3}

    net = wifi(change=workers)
    bridge = net.bridge
    assert wait_for(lambda: bridge.log().count("directory.ready") == 3, timeout=15)
    for _ in range(10):  # each eapol_test run: a new source port
        run = eapol(net, "frank", "frank-pw")
        assert run.success and run.keys_ok, run.output[-2000:]
    answered = {
        line.partition("worker=")[2][:1] or "0"
        for line in bridge.log().splitlines()
        if "auth.decision" in line and "user=frank" in line
    }
    assert len(answered) > 1, answered
    assert [line["reason"] for line in bridge.audit()] == ["grace"] * 10
