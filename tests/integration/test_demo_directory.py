"""Integration tests of bridge.demo: the embedded directory that config/demo.yaml starts.

The server runs in a child process (the global reactor never runs in the test process)
and is driven with ldap3, the client the bridge itself uses.
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest
from ldap3.utils.conv import escape_filter_chars

from bridge.config import DirectoryConfig, load_config

# ldaptor imports passlib, which imports the stdlib `crypt` module (deprecated in 3.11):
# that warning is attributed to passlib, which pyproject.toml does not filter.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning:passlib.*"),
]

REPO = Path(__file__).resolve().parents[2]
DEMO_LDIF = REPO / "config" / "demo.ldif"
DEMO_YAML = REPO / "config" / "demo.yaml"
SUFFIX = "dc=example,dc=org"
PEOPLE = f"ou=people,{SUFFIX}"
SERVICE_DN = f"cn=bridge,ou=services,{SUFFIX}"
EXEMPT_GROUP = f"cn=mfa-exempt,ou=groups,{SUFFIX}"
ACCOUNTS = {  # as documented at the top of config/demo.ldif
    f"uid=alice,{PEOPLE}": "alice-pass",
    f"uid=bob,{PEOPLE}": "bob-pass",
    f"uid=carol,{PEOPLE}": "carol-pass",
    f"uid=dave,{PEOPLE}": "dave-pass",
    SERVICE_DN: "bridge-pass",
}
START_TIMEOUT = 30.0
INVALID_CREDENTIALS = 49
UNWILLING_TO_PERFORM = 53

# Runs the demo directory on a free loopback port, prints the port, and stops when its
# stdin closes (the test process closed the pipe, or died).
_SERVER = """
import sys, threading
from pathlib import Path
from twisted.internet import reactor
from bridge.demo import demo_service

service = demo_service(Path(sys.argv[1]), "127.0.0.1", 0, reactor)
service.startService()
print(service.port, flush=True)

def _stop_at_eof():
    sys.stdin.buffer.read()
    reactor.callFromThread(reactor.stop)

threading.Thread(target=_stop_at_eof, daemon=True).start()
reactor.run()
"""


def _read_port(proc: subprocess.Popen[bytes], log: Path) -> int:
    """The port the child prints, or a test failure showing its stderr."""
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.2):
                line = proc.stdout.readline().strip()
                if line.isdigit():
                    return int(line)
                break
            if proc.poll() is not None:
                break
    pytest.fail(f"demo directory did not start: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def demo_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Port of a demo directory serving config/demo.ldif in a child process."""
    log = tmp_path_factory.mktemp("demo-directory") / "stderr.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(DEMO_LDIF)],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        yield _read_port(proc, log)
    finally:  # also when the child failed to start
        proc.kill()
        proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _connection(port: int, user: str | None = None, password: str | None = None) -> Any:
    """An unbound ldap3 connection to the demo directory (results, not exceptions)."""
    server = ldap3.Server("127.0.0.1", port=port, get_info=ldap3.NONE, connect_timeout=5)
    return ldap3.Connection(
        server, user=user, password=password, receive_timeout=5, raise_exceptions=False
    )


@pytest.fixture
def service(demo_port: int) -> Iterator[Any]:
    """A connection bound as the bridge's service account."""
    conn = _connection(demo_port, SERVICE_DN, ACCOUNTS[SERVICE_DN])
    assert conn.bind(), conn.result
    yield conn
    conn.unbind()


def _entries(conn: Any) -> list[dict[str, Any]]:
    return [r for r in conn.response or [] if r.get("type") == "searchResEntry"]


def test_service_account_finds_alice_by_uid(service: Any) -> None:
    """A subtree search for (uid=alice) under ou=people finds exactly alice's entry."""
    assert service.search(PEOPLE, "(uid=alice)", ldap3.SUBTREE, attributes=["uid", "cn"])
    entries = _entries(service)
    assert [e["dn"] for e in entries] == [f"uid=alice,{PEOPLE}"]
    assert entries[0]["attributes"]["uid"] == ["alice"]


def test_search_for_unknown_user_finds_nothing(service: Any) -> None:
    """A search for a uid that is not in the file succeeds with no entries."""
    service.search(PEOPLE, "(uid=mallory)", ldap3.SUBTREE, attributes=[])
    assert service.result["result"] == 0
    assert _entries(service) == []


def test_search_never_returns_passwords(service: Any) -> None:
    """userPassword is left out even when asked for by name or with '*'."""
    service.search(PEOPLE, "(uid=*)", ldap3.SUBTREE, attributes=["*", "userPassword"])
    entries = _entries(service)
    assert len(entries) == 4
    for entry in entries:
        assert not entry["raw_attributes"].get("userPassword")  # ldap3 lists asked-for names
        assert entry["raw_attributes"]["uid"]


@pytest.mark.parametrize(("dn", "password"), sorted(ACCOUNTS.items()))
def test_documented_password_binds(demo_port: int, dn: str, password: str) -> None:
    """Every account binds with the password the LDIF's comments document ({SSHA} hashes)."""
    conn = _connection(demo_port, dn, password)
    try:
        assert conn.bind(), conn.result
        assert conn.result["result"] == 0
    finally:
        conn.unbind()


@pytest.mark.parametrize(
    ("dn", "password"),
    [
        (f"uid=alice,{PEOPLE}", "bob-pass"),
        (f"uid=alice,{PEOPLE}", "alice-pass "),
        (f"uid=alice,{PEOPLE}", "ALICE-PASS"),
        (f"uid=mallory,{PEOPLE}", "alice-pass"),
    ],
)
def test_wrong_password_is_invalid_credentials(demo_port: int, dn: str, password: str) -> None:
    """A wrong password, or a DN that does not exist, gets invalidCredentials (49)."""
    conn = _connection(demo_port, dn, password)
    try:
        assert not conn.bind()
        assert conn.result["result"] == INVALID_CREDENTIALS
    finally:
        conn.unbind()


def test_rebind_switches_between_users(demo_port: int) -> None:
    """One connection re-bound user after user (as the bridge does) keeps answering right."""
    conn = _connection(demo_port)
    try:
        assert conn.bind()  # anonymous
        assert conn.rebind(f"uid=bob,{PEOPLE}", "bob-pass")
        assert not conn.rebind(f"uid=bob,{PEOPLE}", "alice-pass")
        assert conn.result["result"] == INVALID_CREDENTIALS
        assert conn.rebind(f"uid=carol,{PEOPLE}", "carol-pass")
    finally:
        conn.unbind()


@pytest.mark.parametrize(("uid", "member"), [("dave", True), ("alice", False)])
def test_exempt_group_base_search(service: Any, uid: str, member: bool) -> None:
    """The bridge's group filter, as a base search on cn=mfa-exempt, finds dave, not alice."""
    service.search(PEOPLE, f"(uid={uid})", ldap3.SUBTREE, attributes=[])
    (found,) = _entries(service)
    template = DirectoryConfig(urls=(), bind_dn="", bind_password="", user_base="").group_filter
    query = template.replace("{dn}", escape_filter_chars(found["dn"])).replace(
        "{username}", escape_filter_chars(uid)
    )
    assert service.search(EXEMPT_GROUP, query, ldap3.BASE, attributes=[]) is member
    assert service.result["result"] == 0
    assert [e["dn"] for e in _entries(service)] == ([EXEMPT_GROUP] if member else [])


def test_directory_is_read_only(service: Any) -> None:
    """Adds, deletes and modifies are refused with unwillingToPerform (53)."""
    alice = f"uid=alice,{PEOPLE}"
    assert not service.add(f"uid=eve,{PEOPLE}", ["inetOrgPerson"], {"sn": "eve", "cn": "eve"})
    assert service.result["result"] == UNWILLING_TO_PERFORM
    assert not service.delete(f"uid=bob,{PEOPLE}")
    assert service.result["result"] == UNWILLING_TO_PERFORM
    assert not service.modify(alice, {"userPassword": [(ldap3.MODIFY_REPLACE, ["x"])]})
    assert service.result["result"] == UNWILLING_TO_PERFORM
    conn = _connection(service.server.port, alice, "alice-pass")
    try:
        assert conn.bind(), conn.result  # her password is unchanged
    finally:
        conn.unbind()


# --- load_ldif, in-process (ldaptor's in-memory tree answers synchronously) --------------


def _now(deferred: Any) -> Any:
    """The result of a Deferred that has already fired (re-raising a failure)."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    result = results[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def test_demo_ldif_loads() -> None:
    """config/demo.ldif loads: root dc=example,dc=org, the users, and dave in the group."""
    from bridge.demo import load_ldif  # noqa: PLC0415 - imports ldaptor (and its warnings)

    root = load_ldif(DEMO_LDIF)
    assert root.dn.getText() == SUFFIX
    for dn, password in ACCOUNTS.items():
        entry = _now(root.lookup(dn))
        assert entry.dn.getText() == dn
        assert _now(entry.bind(password.encode())) is entry
    group = _now(root.lookup(EXEMPT_GROUP))
    assert [bytes(v) for v in group["member"]] == [f"uid=dave,{PEOPLE}".encode()]


def test_demo_yaml_matches_demo_ldif() -> None:
    """config/demo.yaml loads, and its directory section points at the demo directory."""
    config = load_config(DEMO_YAML)
    demo = config.demo
    assert demo is not None
    assert demo.ldif == DEMO_LDIF
    assert (demo.listen_host, demo.listen_port) == ("127.0.0.1", 10389)
    assert config.directory.urls == (f"ldap://{demo.listen_host}:{demo.listen_port}",)
    assert ACCOUNTS.get(config.directory.bind_dn) == config.directory.bind_password
    assert config.directory.user_base == PEOPLE
    assert config.mfa.exempt_groups == (EXEMPT_GROUP,)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"", "no LDIF entries"),
        (b"# nothing but a comment\n", "no LDIF entries"),
        (b"dn: dc=x\ndc: x\nthis line has no colon\n", "not a valid LDIF file"),
        (b"dn: dc=x\ndc: x\n\ndn: uid=a,ou=missing,dc=x\nuid: a\n", "'ou=missing,dc=x'"),
        (b"dn: dc=x\nuserPassword:: not-base64!\n", "not a valid LDIF file"),
    ],
)
def test_bad_ldif_is_a_value_error_naming_the_file(
    tmp_path: Path, text: bytes, expected: str
) -> None:
    """A broken LDIF file raises ValueError that names the file and the problem."""
    from bridge.demo import load_ldif  # noqa: PLC0415 - imports ldaptor (and its warnings)

    path = tmp_path / "broken.ldif"
    path.write_bytes(text)
    with pytest.raises(ValueError, match=re.escape(str(path))) as caught:
        load_ldif(path)
    assert expected in str(caught.value)


def test_ldif_without_final_blank_line_or_with_crlf_loads(tmp_path: Path) -> None:
    """The last entry needs no closing blank line, and CRLF line ends are accepted."""
    from bridge.demo import load_ldif  # noqa: PLC0415 - imports ldaptor (and its warnings)

    path = tmp_path / "crlf.ldif"
    path.write_bytes(b"dn: dc=x\r\ndc: x\r\n\r\ndn: ou=a,dc=x\r\nou: a\r\nuserPassword: pw")
    root = load_ldif(path)
    entry = _now(root.lookup("ou=a,dc=x"))
    assert _now(entry.bind(b"pw")) is entry
