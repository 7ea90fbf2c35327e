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
from tests.harness import Bridge, code_for

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
    if not tls13:
        lines.append('  phase1="tls_disable_tlsv1_3=1"')
    else:
        lines.append('  phase1="tls_disable_tlsv1_3=0"')
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

    def make(**radius: Any) -> Wifi:
        ca = make_ca(tmp_path, "Wi-Fi Test CA")
        certificate, key = make_server_cert(
            ca, tmp_path, "radius", [x509.DNSName("radius.example.org")]
        )
        eap = {"certificate": str(certificate), "key": str(key), "ca_file": str(ca.path)}
        return Wifi(make_bridge(mode="append", eap=eap, **radius), ca.path)

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
