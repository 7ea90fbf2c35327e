"""Two daemons on one PostgreSQL database behave as one bridge (SPEC section 9).

Each daemon is a real `mfa-bridge run`; the clients are pyrad-built RADIUS packets and
python-ldap through the LDAP proxy. Whatever one instance decides, the other knows.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ldap
import psycopg
import pytest

from tests.harness import Bridge, RadiusClient, code_for, free_tcp_port, scrape_metrics
from tests.portal_client import PortalClient
from tests.postgres import Postgres
from tests.slapd import Slapd

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
ClientFor = Callable[..., RadiusClient]


@pytest.fixture
def make_pair(
    postgres: Postgres, make_bridge: MakeBridge, tmp_path: Path
) -> Callable[..., tuple[Bridge, Bridge]]:
    """Two daemons, one database, the same key file (as an admin copies it to each)."""

    def make(mode: str = "auto") -> tuple[Bridge, Bridge]:
        url = postgres.url(f"pair{uuid.uuid4().hex[:10]}")
        key = tmp_path / "shared.key"

        def shared(config: dict[str, Any]) -> None:
            config["store"] = {"url": url, "key_file": str(key)}
            config["ldap_proxy"] = {"listen": f"127.0.0.1:{free_tcp_port()}"}
            config["metrics"] = {"listen": f"127.0.0.1:{free_tcp_port()}"}
            config["portal"] = {"listen": f"127.0.0.1:{free_tcp_port()}"}

        return make_bridge(change=shared, mode=mode), make_bridge(change=shared, mode=mode)

    return make


@pytest.fixture
def pair(make_pair: Callable[..., tuple[Bridge, Bridge]]) -> tuple[Bridge, Bridge]:
    return make_pair()


def enroll(bridge: Bridge, user: str) -> str:
    result = bridge.cli("user", "enroll", user, "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["secret"])


def status(bridge: Bridge, user: str) -> dict[str, Any]:
    result = bridge.cli("user", "status", user, "--json")
    assert result.returncode == 0, result.stderr
    view: dict[str, Any] = json.loads(result.stdout)
    return view


def active_user(first: Bridge, client: RadiusClient, user: str) -> str:
    """Enrolled through the CLI, confirmed by a first login on `first`."""
    secret = enroll(first, user)
    reply = client.login(user, f"{user}-pw" + code_for(secret))
    assert reply is not None and reply.accepted
    return secret


def test_an_enrollment_and_a_code_spent_on_one_count_on_the_other(
    pair: tuple[Bridge, Bridge], client_for: ClientFor
) -> None:
    first, second = pair
    a, b = client_for(first), client_for(second)
    grace = b.login("oscar", "oscar-pw")
    assert grace is not None and grace.accepted  # grace, recorded by the second
    assert status(first, "oscar")["state"] == "grace"
    secret = enroll(first, "oscar")
    assert status(second, "oscar")["state"] == "pending"
    code = code_for(secret)
    accepted = b.login("oscar", "oscar-pw" + code)  # confirmed on the second
    assert accepted is not None and accepted.accepted
    replay = a.login("oscar", "oscar-pw" + code)  # the same code on the first
    assert replay is not None and replay.rejected
    assert first.audit_reasons()[-1] == "replay"
    fresh = a.login("oscar", "oscar-pw" + code_for(secret, 1))
    assert fresh is not None and fresh.accepted


def test_failures_count_across_instances_and_a_lock_holds_on_both(
    make_pair: Callable[..., tuple[Bridge, Bridge]], client_for: ClientFor
) -> None:
    first, second = make_pair("append")  # max_failures: 3
    a, b = client_for(first), client_for(second)
    secret = active_user(first, a, "peggy")
    wrong = "000000" if "000000" not in {code_for(secret, i) for i in (-1, 0, 1, 2)} else "999999"
    for client in (a, b, a):
        reply = client.login("peggy", "peggy-pw" + wrong)
        assert reply is not None and reply.rejected
    assert status(second, "peggy")["state"] == "locked"
    locked = b.login("peggy", "peggy-pw" + code_for(secret, 1))
    assert locked is not None and locked.rejected
    assert second.audit_reasons()[-1] == "locked"
    assert first.cli("user", "unlock", "peggy").returncode == 0
    again = b.login("peggy", "peggy-pw" + code_for(secret, 1))
    assert again is not None and again.accepted


def test_a_challenge_issued_by_one_is_answered_through_the_other(
    pair: tuple[Bridge, Bridge], client_for: ClientFor
) -> None:
    """A NAS that fails over between the password and the code: the State still works,
    once; a second answer with it, on either instance, is refused."""
    first, second = pair
    a, b = client_for(first), client_for(second)
    secret = active_user(first, a, "trent")
    challenge = a.login("trent", "trent-pw")
    assert challenge is not None and challenge.challenged
    time.sleep(0.2)  # the State is committed with the next reactor turn's writes
    answer = b.login("trent", code_for(secret, 1), state=challenge.state)
    assert answer is not None and answer.accepted
    again = a.login("trent", code_for(secret, 2), state=challenge.state)
    assert again is not None and again.rejected
    assert first.audit_reasons()[-1] == "bad-state"


def test_a_key_given_or_taken_by_another_writer_counts_at_the_next_login(
    pair: tuple[Bridge, Bridge], client_for: ClientFor, slapd: Slapd
) -> None:
    """An instance chooses a login's password on the record it last read or wrote (no
    round trip to the database before the bind). A key enrolled or reset since by the CLI
    still counts at once, and a wrong password still costs the directory a single bind."""
    first, _second = pair
    a = client_for(first)
    for _ in range(2):  # in grace; the first instance has now seen the record
        grace = a.login("load120", "load120-pw")
        assert grace is not None and grace.accepted
    secret = enroll(first, "load120")  # by the CLI, another process: pending, with a key
    activated = a.login("load120", "load120-pw" + code_for(secret))
    assert activated is not None and activated.accepted
    assert first.audit_reasons()[-1] == "activated"
    binds = slapd.bind_count()
    wrong = a.login("load120", "not-the-pw" + code_for(secret, 1))
    assert wrong is not None and wrong.rejected
    assert first.audit_reasons()[-1] == "bad-password"
    assert slapd.bind_count() - binds == 1
    assert first.cli("user", "reset", "load120").returncode == 0
    again = a.login("load120", "load120-pw")  # no code: the key is gone, grace again
    assert again is not None and again.accepted
    assert first.audit_reasons()[-1] == "grace"
    assert first.cli("user", "lock", "load120").returncode == 0
    locked = a.login("load120", "load120-pw")  # a decision that writes nothing, checked
    assert locked is not None and locked.rejected
    assert first.audit_reasons()[-1] == "locked"


def portal(bridge: Bridge, jar: dict[str, str] | None = None) -> PortalClient:
    host, port = bridge.config["portal"]["listen"].rsplit(":", 1)
    return PortalClient(host, int(port), jar if jar is not None else {})


def test_a_portal_session_started_on_one_instance_goes_on_on_the_other(
    pair: tuple[Bridge, Bridge], client_for: ClientFor
) -> None:
    """Behind a load balancer without stickiness: signed in on the first, the set-up's key
    shown by the first is confirmed on the second, and a sign-out ends it on both."""
    first, second = pair
    on_first = portal(first)
    assert on_first.sign_in("web30", "web30-pw").status == 303
    setup = on_first.get("/setup")
    key = re.search(r'<code id="secret-key">([A-Z2-7]+)</code>', setup.body)
    assert key is not None
    on_second = portal(second, on_first.jar)  # the same browser, the other instance
    assert on_second.get("/setup").body.count(key.group(1)) == 1  # the same key there
    done = on_second.post("/setup", csrf=setup.csrf or "", code=code_for(key.group(1)))
    assert "MFA is set up" in done.body
    assert status(first, "web30")["state"] == "active"
    assert "web30" in portal(first, dict(on_first.jar)).get("/").body  # still signed in
    cookie = dict(on_first.jar)  # as a stolen or stale cookie would be replayed
    on_second.form("/sign-out")
    assert 'name="password"' in portal(first, cookie).get("/").body  # ended on both


def scrape(bridge: Bridge) -> dict[str, float]:
    """The metrics page as {'name{labels}': value}."""
    return scrape_metrics(bridge.config["metrics"]["listen"])


def proxy_url(bridge: Bridge) -> str:
    return f"ldap://{bridge.config['ldap_proxy']['listen']}"


def bind(url: str, dn: str, password: str) -> bool:
    conn = ldap.initialize(url)
    try:
        conn.simple_bind_s(dn, password)
    except ldap.INVALID_CREDENTIALS:
        return False
    finally:
        conn.unbind_s()
    return True


def test_an_app_binding_again_is_recognised_by_either_instance(
    pair: tuple[Bridge, Bridge], client_for: ClientFor, slapd: Slapd
) -> None:
    first, second = pair
    secret = active_user(first, client_for(first), "victor")
    dn, field = slapd.user_dn("victor"), "victor-pw" + code_for(secret, 1)
    assert bind(proxy_url(first), dn, field)
    time.sleep(0.2)  # the rebind row commits with the next reactor turn's writes
    assert bind(proxy_url(second), dn, field)  # the same app, its pool on the other
    assert second.audit_reasons("ldap")[-1] == "rebind"
    assert status(first, "victor")["failures"] == 0


def test_the_database_stopped_under_load_refuses_then_recovers(
    pair: tuple[Bridge, Bridge], client_for: ClientFor, postgres: Postgres
) -> None:
    """Logins keep coming while PostgreSQL is stopped: none is accepted without its state
    (grace users included: their record cannot be read), and both instances accept again
    by themselves once it is back."""
    first, second = pair
    users = [f"load{i:03d}" for i in range(100, 140)]
    answered: list[tuple[float, float, bool]] = []  # sent, answered, accepted
    stop = threading.Event()

    def hammer(bridge: Bridge) -> None:
        client = RadiusClient(bridge.port)
        try:
            while not stop.is_set():
                for user in users:
                    sent = time.monotonic()
                    reply = client.exchange(client.request(user, f"{user}-pw"), timeout=3)
                    if reply is not None:
                        answered.append((sent, time.monotonic(), reply.accepted))
        finally:
            client.close()

    threads = [threading.Thread(target=hammer, args=(b,)) for b in pair]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    postgres.stop()
    down = time.monotonic()
    time.sleep(1.5)
    assert scrape(first)["mfa_bridge_store_up"] == 0  # what an operator's alert watches
    time.sleep(1.5)
    back = time.monotonic()
    postgres.start()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(30)
    outcomes = {"down": [ok for sent, got, ok in answered if sent >= down and got <= back]}
    assert outcomes["down"], "no login was answered while the database was down"
    assert not any(outcomes["down"]), "a login was accepted while the database was down"
    assert any(ok for sent, _got, ok in answered if sent < down)  # before: accepted
    for bridge, client in ((first, client_for(first)), (second, client_for(second))):
        reply = client.login("load150", "load150-pw")
        assert reply is not None and reply.accepted, bridge.log()[-2000:]
    assert "store.unavailable" in first.log()
    assert scrape(second)["mfa_bridge_store_up"] == 1
    assert scrape(second)['mfa_bridge_users{state="grace"}'] >= 41


def test_backup_while_logins_run_restores_into_an_empty_database(
    pair: tuple[Bridge, Bridge], client_for: ClientFor, postgres: Postgres, tmp_path: Path
) -> None:
    first, second = pair
    client = client_for(first)
    for i in range(160, 190):
        reply = client.login(f"load{i:03d}", f"load{i:03d}-pw")
        assert reply is not None and reply.accepted
    secret = active_user(first, client, "walter")
    backup = tmp_path / "backup.db"
    stop = threading.Event()

    def logins_meanwhile() -> None:  # grace users logging in while the backup is taken
        other = RadiusClient(second.port)
        try:
            while not stop.is_set():
                for i in range(190, 200):
                    other.login(f"load{i:03d}", f"load{i:03d}-pw")
        finally:
            other.close()

    thread = threading.Thread(target=logins_meanwhile)
    thread.start()
    try:
        result = first.cli("store", "backup", str(backup), "--json")
    finally:
        stop.set()
        thread.join(30)
    assert result.returncode == 0, result.stderr
    backed_up = json.loads(result.stdout)["users"]
    listed = {u["username"]: u for u in json.loads(first.cli("user", "list", "--json").stdout)}
    assert 31 <= backed_up <= len(listed)  # the 30 grace users and walter, at least
    empty = postgres.url(f"restored{uuid.uuid4().hex[:8]}")
    first.config["store"]["url"] = empty
    restored = first.cli("store", "restore", str(backup), "--json")
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout) == {"added": backed_up, "replaced": 0, "kept": 0}
    after = json.loads(first.cli("user", "list", "--json").stdout)
    assert len(after) == backed_up
    assert all(listed[u["username"]] == u for u in after)  # the same records, as they were
    view = status(first, "walter")
    assert view["state"] == "active"
    # The restored secret still opens with the shared key: walter's next code works.
    first.stop()
    first.start()
    reply = client_for(first).login("walter", "walter-pw" + code_for(secret, 1))
    assert reply is not None and reply.accepted


def test_an_sqlite_store_moves_to_postgresql_by_backup_and_restore(
    make_bridge: MakeBridge, client_for: ClientFor, postgres: Postgres, tmp_path: Path
) -> None:
    """The README's migration: back up the SQLite store, point the config at PostgreSQL
    with the same key file, restore; enrolled users keep their secrets and guards."""
    bridge = make_bridge(mode="append")
    client = client_for(bridge)
    secret = enroll(bridge, "heidi")
    spent = code_for(secret)
    first = client.login("heidi", "heidi-pw" + spent)
    assert first is not None and first.accepted
    grace = client.login("ivan", "ivan-pw")
    assert grace is not None and grace.accepted
    backup = tmp_path / "migrate.db"
    assert bridge.cli("store", "backup", str(backup)).returncode == 0
    again = bridge.cli("store", "backup", str(backup))
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr
    bridge.stop()
    key = Path(bridge.config["store"]["path"]).with_suffix(".key")
    bridge.config["store"] = {"url": postgres.url(f"m{uuid.uuid4().hex[:8]}"), "key_file": str(key)}
    restored = bridge.cli("store", "restore", str(backup), "--json")
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout) == {"added": 2, "replaced": 0, "kept": 0}
    bridge.start()
    assert status(bridge, "ivan")["state"] == "grace"
    replay = client.login("heidi", "heidi-pw" + spent)  # spent before the move
    assert replay is not None and replay.rejected
    reply = client.login("heidi", "heidi-pw" + code_for(secret, 1))
    assert reply is not None and reply.accepted
    missing = bridge.cli("store", "restore", str(tmp_path / "nope.db"))
    assert missing.returncode == 1 and "no such backup file" in missing.stderr


def test_a_slow_database_delays_logins_not_the_daemon(
    pair: tuple[Bridge, Bridge], client_for: ClientFor, postgres: Postgres
) -> None:
    """The users table held by another session's lock: a login waits for it, while the
    same daemon answers Status-Server at once; the login completes when the lock goes."""
    first, _second = pair
    client = client_for(first)
    warm = client.login("load195", "load195-pw")
    assert warm is not None and warm.accepted
    url = first.config["store"]["url"]
    with psycopg.connect(url, autocommit=True) as blocker:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        waiting = RadiusClient(first.port)
        try:
            request = waiting.request("load196", "load196-pw")
            waiting.send_raw(request.RequestPacket())
            started = time.monotonic()
            status = client.status(timeout=2.0)
            assert status is not None  # the reactor is free while the store thread waits
            assert time.monotonic() - started < 1.0
            assert waiting.receive(timeout=1.0) is None  # the login is still waiting
            blocker.execute("ROLLBACK")
            reply = waiting.receive(timeout=5.0)
            assert reply is not None and reply[0] == 2  # Access-Accept, once it could read
        finally:
            waiting.close()
