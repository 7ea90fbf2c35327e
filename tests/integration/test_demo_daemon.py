"""The README's first command: the daemon with config/demo.yaml and its embedded directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_binary
from tests.harness import REPO, Bridge, free_tcp_port, free_udp_port

pytestmark = pytest.mark.integration


def test_demo_config_serves_radtest(tmp_path: Path) -> None:
    """config/demo.yaml as shipped (ports and store moved aside) answers radtest with the notice."""
    require_binary("radtest")
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    ldap_port = free_tcp_port()
    config["demo"]["ldif"] = str(REPO / "config" / "demo.ldif")
    config["demo"]["listen"] = f"127.0.0.1:{ldap_port}"
    config["directory"]["urls"] = [f"ldap://127.0.0.1:{ldap_port}"]
    config["store"]["path"] = str(tmp_path / "state.db")
    config["radius"]["listen"] = f"127.0.0.1:{free_udp_port()}"
    portal = f"127.0.0.1:{free_tcp_port()}"
    config["portal"].update(listen=portal, public_url=f"http://{portal}/")
    bridge = Bridge(tmp_path, config)
    bridge.start()
    try:
        result = subprocess.run(
            ["radtest", "alice", "alice-pass", f"127.0.0.1:{bridge.port}", "0", "testing123"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "Received Access-Accept" in result.stdout, result.stdout + bridge.log()
        assert f"14 days left to set up MFA at http://{portal}/" in result.stdout
        exempt = subprocess.run(
            ["radtest", "dave", "dave-pass", f"127.0.0.1:{bridge.port}", "0", "testing123"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "Received Access-Accept" in exempt.stdout
    finally:
        bridge.stop()
