"""The private slapd used by the integration tests behaves as the tests rely on."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.certs import self_signed
from tests.conftest import require_binary
from tests.slapd import Slapd, SlapdError, SlapdUser

pytestmark = pytest.mark.integration

USERS = [
    SlapdUser("alice", "alice-pw", cn="Alice Example"),
    SlapdUser("bob", "bob-pw"),
    SlapdUser("józsef", "józsef-jelszó"),
    SlapdUser("mary ann", "mary-pw"),
    SlapdUser("o'brien, jr+x", "ob-pw"),
]
GROUPS = {"vpn-users": ["alice", "józsef"], "admins": ["bob"], "empty": []}


@pytest.fixture(autouse=True)
def _binaries() -> None:
    for name in ("slapd", "slapadd", "ldapwhoami", "ldapsearch", "ldapmodify"):
        require_binary(name)


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Slapd]:
    with Slapd(tmp_path / "slapd", users=USERS, groups=GROUPS) as d:
        yield d


def ldap(
    tool: str, url: str, *args: str, timeout: float = 10, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run an ldap-utils client with simple auth against ``url``."""
    return subprocess.run(
        [tool, "-x", "-H", url, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else {**os.environ, "LDAPNOINIT": "1"},
        check=False,
    )


def whoami(d: Slapd, dn: str, password: str, **kw: float) -> subprocess.CompletedProcess[str]:
    """``ldapwhoami -x -H url -D dn -w password``."""
    return ldap("ldapwhoami", d.url, "-D", dn, "-w", password, **kw)


def search(d: Slapd, base: str, filt: str, *attrs: str) -> subprocess.CompletedProcess[str]:
    """``ldapsearch`` as the service account."""
    return ldap(
        "ldapsearch",
        d.url,
        "-LLL",
        "-o",
        "ldif_wrap=no",
        "-D",
        d.service_dn,
        "-w",
        d.service_password,
        "-b",
        base,
        filt,
        *attrs,
    )


def count_entries(ldif: str) -> int:
    """Entries in ldapsearch -LLL output (``dn:`` or base64 ``dn::`` lines)."""
    return sum(line.startswith("dn:") for line in ldif.splitlines())


def test_user_binds_with_right_password_and_not_with_wrong(directory: Slapd) -> None:
    """A user binds with the right password; a wrong one gets invalidCredentials (49)."""
    ok = whoami(directory, directory.user_dn("alice"), "alice-pw")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().lower() == "dn:" + directory.user_dn("alice").lower()

    bad = whoami(directory, directory.user_dn("alice"), "wrong")
    assert bad.returncode == 49
    assert "Invalid credentials (49)" in bad.stderr


def test_empty_password_with_user_dn_binds_as_anonymous(directory: Slapd) -> None:
    """With `allow bind_anon_dn` an empty password and a user DN succeed as anonymous."""
    res = whoami(directory, directory.user_dn("alice"), "")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "anonymous"


def test_service_account_reads_users_but_not_passwords(directory: Slapd) -> None:
    """The service account finds users and their attributes but never userPassword."""
    res = search(directory, directory.people_dn, "(uid=alice)", "*", "userPassword")
    assert res.returncode == 0, res.stderr
    assert f"dn: {directory.user_dn('alice')}" in res.stdout
    assert "cn: Alice Example" in res.stdout
    assert "userPassword" not in res.stdout

    everyone = search(directory, directory.people_dn, "(objectClass=inetOrgPerson)", "uid")
    assert count_entries(everyone.stdout) == len(USERS)


def test_users_read_only_their_own_entry(directory: Slapd) -> None:
    """A user reads its own entry (without the password) and nobody else's."""
    bob = ("-LLL", "-D", directory.user_dn("bob"), "-w", "bob-pw", "-s", "base")
    own = ldap(
        "ldapsearch", directory.url, *bob, "-b", directory.user_dn("bob"), "*", "userPassword"
    )
    assert own.returncode == 0, own.stderr
    assert f"dn: {directory.user_dn('bob')}" in own.stdout
    assert "userPassword" not in own.stdout

    other = ldap("ldapsearch", directory.url, *bob, "-b", directory.user_dn("alice"))
    assert other.returncode == 32  # noSuchObject: not even its existence is disclosed
    listing = ldap(
        "ldapsearch",
        directory.url,
        "-LLL",
        "-D",
        directory.user_dn("bob"),
        "-w",
        "bob-pw",
        "-b",
        directory.people_dn,
        "(uid=*)",
    )
    assert count_entries(listing.stdout) == 0

    anon = ldap("ldapsearch", directory.url, "-LLL", "-b", directory.people_dn, "(uid=*)")
    assert "dn:" not in anon.stdout


def test_group_membership_is_visible(directory: Slapd) -> None:
    """Groups are groupOfNames with member DNs the service account can search by."""
    member = directory.user_dn("józsef")
    res = search(directory, directory.groups_dn, f"(member={member})", "cn")
    assert res.returncode == 0, res.stderr
    assert "cn: vpn-users" in res.stdout
    assert "admins" not in res.stdout

    admins = search(directory, directory.group_dn("admins"), "(objectClass=*)", "member")
    assert f"member: {directory.user_dn('bob')}" in admins.stdout

    empty = search(directory, directory.group_dn("empty"), "(objectClass=*)", "member")
    assert empty.returncode == 0, empty.stderr


@pytest.mark.parametrize("uid", ["józsef", "mary ann", "o'brien, jr+x"])
def test_unusual_uids_bind(directory: Slapd, uid: str) -> None:
    """Non-ASCII uids, uids with spaces and uids needing DN escapes bind."""
    password = directory.users[uid].password
    res = whoami(directory, directory.user_dn(uid), password)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith("dn:uid=")
    assert whoami(directory, directory.user_dn(uid), password + "x").returncode == 49


def test_bind_count_counts_each_bind_once(directory: Slapd) -> None:
    """bind_count rises by exactly one per bind, whatever its outcome."""
    before = directory.bind_count()
    assert before >= 1  # start() itself waits with a service-account bind

    whoami(directory, directory.user_dn("alice"), "alice-pw")
    assert directory.bind_count() == before + 1
    whoami(directory, directory.user_dn("alice"), "wrong")
    assert directory.bind_count() == before + 2
    whoami(directory, directory.user_dn("alice"), "")
    assert directory.bind_count() == before + 3
    search(directory, directory.people_dn, "(uid=bob)")
    assert directory.bind_count() == before + 4

    # A connection that sends nothing is not a bind.
    with socket.create_connection(("127.0.0.1", directory.port)):
        pass
    time.sleep(0.1)
    assert directory.bind_count() == before + 4


def test_pause_hangs_binds_and_resume_recovers(directory: Slapd) -> None:
    """A paused slapd accepts connections but never answers; resume brings it back."""
    directory.pause()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            whoami(directory, directory.user_dn("alice"), "alice-pw", timeout=1.0)
    finally:
        directory.resume()
    res = whoami(directory, directory.user_dn("alice"), "alice-pw", timeout=5.0)
    assert res.returncode == 0, res.stderr


def test_restart_keeps_data_and_port(directory: Slapd) -> None:
    """restart() serves the same data, including users added while running, on the same URL."""
    directory.add_user(SlapdUser("carol", "carol-pw"))
    assert whoami(directory, directory.user_dn("carol"), "carol-pw").returncode == 0
    url, pid = directory.url, directory.pid

    directory.restart()
    assert directory.url == url
    assert directory.pid != pid
    assert whoami(directory, directory.user_dn("carol"), "carol-pw").returncode == 0
    assert whoami(directory, directory.user_dn("alice"), "alice-pw").returncode == 0


def test_add_user_rejects_duplicates(directory: Slapd) -> None:
    """Adding an existing uid is refused instead of silently changing the directory."""
    with pytest.raises(ValueError, match="duplicate"):
        directory.add_user(SlapdUser("alice", "other"))


def test_stop_is_idempotent_and_leaves_no_process(tmp_path: Path) -> None:
    """stop() ends slapd (even while paused) and may be called again."""
    d = Slapd(tmp_path, users=USERS[:1])
    d.start()
    pid = d.pid
    assert pid is not None
    d.pause()
    d.stop()
    d.stop()
    assert not d.running
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more
        socket.create_connection(("127.0.0.1", d.port), timeout=1).close()


def test_start_failure_reports_slapd_log(tmp_path: Path) -> None:
    """If slapd cannot start, the error carries slapd's own output."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        d = Slapd(tmp_path, port=blocker.getsockname()[1])
        with pytest.raises(SlapdError, match=r"slapd exited .*\n(.|\n)*daemon"):
            d.start()
    assert not d.running


def test_two_thousand_users_start_quickly(tmp_path: Path) -> None:
    """2,000 users load and the directory answers within a few seconds."""
    users = [SlapdUser(f"user{i:04d}", f"pw-{i}") for i in range(2000)]
    t0 = time.monotonic()
    with Slapd(tmp_path, users=users, groups={"all": [u.uid for u in users]}) as d:
        elapsed = time.monotonic() - t0
        assert elapsed < 3.0, f"start took {elapsed:.2f} s"
        assert whoami(d, d.user_dn("user1999"), "pw-1999").returncode == 0
        res = search(d, d.people_dn, "(objectClass=inetOrgPerson)", "1.1")
        assert res.returncode == 0, res.stderr
        assert count_entries(res.stdout) == 2000


def test_tls_serves_ldaps_and_starttls(tmp_path: Path) -> None:
    """With tls=(cert, key) slapd also listens on ldaps://PORT+1 and offers StartTLS."""
    cert, key = self_signed(tmp_path, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    env = {**os.environ, "LDAPTLS_CACERT": str(cert), "LDAPTLS_REQCERT": "demand"}
    with Slapd(tmp_path / "slapd", users=USERS[:1], tls=(cert, key)) as d:
        assert d.ldaps_url == f"ldaps://127.0.0.1:{d.port + 1}"
        args = ("-D", d.user_dn("alice"), "-w", "alice-pw")
        ldaps = ldap("ldapwhoami", d.ldaps_url, *args, env=env)
        assert ldaps.returncode == 0, ldaps.stderr
        starttls = ldap("ldapwhoami", d.url, "-ZZ", *args, env=env)
        assert starttls.returncode == 0, starttls.stderr

        untrusted = {**os.environ, "LDAPTLS_CACERT": "/dev/null", "LDAPTLS_REQCERT": "demand"}
        assert ldap("ldapwhoami", d.ldaps_url, *args, env=untrusted).returncode != 0
