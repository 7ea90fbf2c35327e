"""Independent RADIUS clients against the daemon: FreeRADIUS's radclient/radtest, and
pam_radius_auth driven by pamtester (an SSH-style login: password prompt, then code prompt)."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.harness import Bridge, code_for

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]

LEGACY_CLIENT = [
    {"address": "127.0.0.1", "secret": "testing123", "require_message_authenticator": False}
]


def lines(**attrs: str) -> str:
    body = "".join(f'{name.replace("_", "-")} = "{value}"\n' for name, value in attrs.items())
    return body + "Message-Authenticator = 0x00\n"


def enroll(bridge: Bridge, user: str) -> str:
    result = bridge.cli("user", "enroll", user, "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["secret"])


def test_radclient_append_accept_and_reject(make_bridge: MakeBridge) -> None:
    """radclient: password+code is accepted (reply verified by radclient), a wrong code rejected."""
    require_binary("radclient")
    bridge = make_bridge(mode="append")
    secret = enroll(bridge, "alice")
    ok = bridge.radclient(lines(User_Name="alice", User_Password="alice-pw" + code_for(secret)))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Received Access-Accept" in ok.stdout
    wrong = "000000" if code_for(secret, 1) != "000000" else "111111"
    bad = bridge.radclient(lines(User_Name="alice", User_Password="alice-pw" + wrong))
    assert "Received Access-Reject" in bad.stdout


def test_radclient_status_server(make_bridge: MakeBridge) -> None:
    """radclient's Status-Server gets an Access-Accept."""
    bridge = make_bridge()
    result = bridge.radclient("Message-Authenticator = 0x00\n", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Access-Accept" in result.stdout


def test_radclient_challenge_round_trip(make_bridge: MakeBridge) -> None:
    """radclient: the password draws a Challenge; echoing its State with the code is accepted."""
    bridge = make_bridge(mode="auto")
    secret = enroll(bridge, "bob")
    first = bridge.radclient(lines(User_Name="bob", User_Password="bob-pw" + code_for(secret)))
    assert "Received Access-Accept" in first.stdout
    challenge = bridge.radclient(lines(User_Name="bob", User_Password="bob-pw"))
    assert "Received Access-Challenge" in challenge.stdout, challenge.stdout
    match = re.search(r"State = (0x[0-9a-f]+)", challenge.stdout)
    assert match is not None
    answer = lines(User_Name="bob", User_Password=code_for(secret, 1)) + f"State = {match[1]}\n"
    reply = bridge.radclient(answer)
    assert "Received Access-Accept" in reply.stdout, reply.stdout
    again = bridge.radclient(answer)
    assert "Received Access-Reject" in again.stdout


def test_radtest_grace_notice(make_bridge: MakeBridge) -> None:
    """radtest (a plain PAP request) sees the grace notice with the days left."""
    require_binary("radtest")
    bridge = make_bridge()
    result = subprocess.run(
        ["radtest", "carol", "carol-pw", f"127.0.0.1:{bridge.port}", "0", "testing123"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "Received Access-Accept" in result.stdout, result.stdout + result.stderr
    assert 'Reply-Message = "14 days left to set up MFA"' in result.stdout


def test_radclient_without_message_authenticator_dropped(make_bridge: MakeBridge) -> None:
    """radclient without Message-Authenticator gets no answer when it is required."""
    bridge = make_bridge()
    result = bridge.radclient('User-Name = "carol"\nUser-Password = "carol-pw"\n')
    assert "Received" not in result.stdout
    assert result.returncode != 0


def test_radclient_chap_rejected(make_bridge: MakeBridge) -> None:
    """CHAP cannot carry a bind-checked password: it is rejected, not crashed on."""
    bridge = make_bridge()
    result = bridge.radclient(
        'User-Name = "carol"\nCHAP-Password = "carol-pw"\nMessage-Authenticator = 0x00\n'
    )
    assert "Received Access-Reject" in result.stdout
    status = bridge.radclient("Message-Authenticator = 0x00\n", "status")
    assert "Received Access-Accept" in status.stdout


@pytest.fixture
def pam_service(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """A PAM service using pam_radius_auth against a port; removed from /etc/pam.d after."""
    require_binary("pamtester")
    if not Path("/etc/pam.d").is_dir() or not list(Path("/").glob("*lib*/**/pam_radius_auth.so")):
        pytest.fail("pam_radius_auth is not installed (apt-get install libpam-radius-auth)")
    created: list[Path] = []

    def make(port: int) -> str:
        name = f"mfa-bridge-test-{uuid.uuid4().hex[:8]}"
        server_conf = tmp_path / f"{name}.conf"
        server_conf.write_text(f"127.0.0.1:{port} testing123 3\n")
        server_conf.chmod(0o600)
        service = Path("/etc/pam.d") / name
        service.write_text(
            f"auth required pam_radius_auth.so conf={server_conf} client_id=pamtester\n"
            "account required pam_permit.so\n"
        )
        created.append(service)
        return name

    yield make
    for path in created:
        path.unlink(missing_ok=True)


def pamtester(service: str, user: str, answers: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pamtester", "-v", service, user, "authenticate"],
        input="".join(a + "\n" for a in answers),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_pam_radius_password_then_code(
    make_bridge: MakeBridge, pam_service: Callable[[int], str]
) -> None:
    """pam_radius_auth: the password prompt, then the bridge's code prompt, then success."""
    bridge = make_bridge(mode="challenge", clients=LEGACY_CLIENT)
    secret_csv = bridge.workdir / "heidi.csv"
    key = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXQ"
    secret_csv.write_text(f"username,secret\nheidi,{key}\n")
    assert bridge.cli("user", "import", str(secret_csv)).returncode == 0
    service = pam_service(bridge.port)
    result = pamtester(service, "heidi", ["heidi-pw", code_for(key)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "successfully authenticated" in result.stderr + result.stdout
    assert "Enter the 6-digit code" in result.stdout + result.stderr
    wrong = pamtester(
        service, "heidi", ["heidi-pw", "000000" if code_for(key, 1) != "000000" else "111111"]
    )
    assert wrong.returncode != 0
    bad_password = pamtester(service, "heidi", ["not-the-password"])
    assert bad_password.returncode != 0
