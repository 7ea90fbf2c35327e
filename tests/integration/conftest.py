"""Fixtures for tests against real parts: a private slapd and the daemon as a subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary
from tests.harness import Bridge, RadiusClient, free_udp_port
from tests.postgres import Postgres, server_bin
from tests.slapd import Slapd, SlapdUser

USERS = [
    SlapdUser("alice", "alice-pw"),
    SlapdUser("bob", "bob-pw"),
    SlapdUser("carol", "carol-pw"),
    SlapdUser("dave", "dave-pw"),
    SlapdUser("erin", "erin-pw"),
    SlapdUser("frank", "frank-pw"),
    SlapdUser("grace", "grace-pw"),
    SlapdUser("heidi", "heidi-pw"),
    SlapdUser("ivan", "ivan-pw"),
    SlapdUser("judy", "judy-pw"),
    SlapdUser("mallory", "mallory-pw"),
    SlapdUser("oscar", "oscar-pw"),
    SlapdUser("peggy", "peggy-pw"),
    SlapdUser("trent", "trent-pw"),
    SlapdUser("victor", "victor-pw"),
    SlapdUser("walter", "walter-pw"),
    SlapdUser("józsef", "józsef-pw"),
    SlapdUser("mary ann", "mary-ann-pw"),
    SlapdUser("u", "u-pw"),
    SlapdUser("u1", "u1-pw"),
    SlapdUser("digits", "pass123456"),  # a password that ends in six digits
    # Users with several login names (SPEC section 8): a mail address, a second uid.
    SlapdUser("kim", "kim-pw", mail="kim@example.org", aliases=("kim.lee",)),
    SlapdUser("jo smith", "pw-jo smith", mail="jo.smith@example.org"),
    SlapdUser("olga", "olga-pw", mail="olga@example.org"),
    SlapdUser("pia", "pia-pw", mail="pia@example.org"),
    SlapdUser("quinn", "quinn-pw", mail="quinn@example.org"),
    *(SlapdUser(f"load{i:03d}", f"load{i:03d}-pw") for i in range(200)),
    *(SlapdUser(f"web{i:02d}", f"web{i:02d}-pw") for i in range(40)),  # the portal's tests
]


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """One directory for the session; tests use distinct users so they stay independent."""
    require_binary("slapd")
    require_binary("ldapwhoami")
    groups = {
        "mfa-exempt": ["dave"],
        "vpn-admins": ["load190"],  # the per-client policy tests' (SPEC 11)
        "wifi-staff": ["load190", "load191", "load192"],
    }
    server = Slapd(tmp_path_factory.mktemp("slapd"), users=USERS, groups=groups)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """One PostgreSQL cluster for the session; each test takes a database of its own."""
    try:
        server_bin()
    except FileNotFoundError:
        require_binary("initdb")  # not on PATH either: fails in CI, skips elsewhere
    server = Postgres(tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.stop()


def base_config(slapd: Slapd, workdir: Path, **radius: Any) -> dict[str, Any]:
    """A config pointing at `slapd`, listening on a free port, with no reject delay."""
    config: dict[str, Any] = {
        "directory": {
            "urls": [slapd.url],
            "bind_dn": slapd.service_dn,
            "bind_password": slapd.service_password,
            "user_base": slapd.people_dn,
            "user_filter": "(uid={username})",
            "timeout": 2,
        },
        "mfa": {
            "issuer": "Example Corp",
            "enrollment_days": 14,
            "max_failures": 3,
            "window": 1,
            "exempt_groups": [slapd.group_dn("mfa-exempt")],
        },
        "store": {"path": str(workdir / "state.db")},
        "radius": {
            "listen": f"127.0.0.1:{free_udp_port()}",
            "mode": "auto",
            "require_message_authenticator": True,
            "reject_delay": 0,
            "clients": [{"address": "127.0.0.1/32", "secret": "testing123"}],
            **radius,
        },
        "log": {"level": "debug", "format": "text"},
    }
    return config


@pytest.fixture
def make_bridge(slapd: Slapd, tmp_path: Path) -> Iterator[Callable[..., Bridge]]:
    """Start daemons with a base config changed by the caller; all are stopped after."""
    require_binary("radclient")
    started: list[Bridge] = []

    def make(
        start: bool = True, change: Callable[[dict[str, Any]], None] | None = None, **radius: Any
    ) -> Bridge:
        workdir = tmp_path / f"bridge{len(started)}"
        workdir.mkdir()
        config = base_config(slapd, workdir, **radius)
        if change is not None:
            change(config)
        bridge = Bridge(workdir, config)
        started.append(bridge)
        if start:
            bridge.start()
        return bridge

    yield make
    for bridge in started:
        bridge.stop()


@pytest.fixture
def client_for() -> Iterator[Callable[..., RadiusClient]]:
    """RADIUS clients (pyrad-built packets on a UDP socket), closed after the test."""
    clients: list[RadiusClient] = []

    def make(bridge: Bridge, **kw: Any) -> RadiusClient:
        client = RadiusClient(bridge.port, **kw)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
