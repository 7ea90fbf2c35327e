"""The `mfa-bridge` command line (SPEC section 5): check-config and the `user` commands."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from base64 import b32decode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

import bridge.directory
import bridge.service
from bridge.cli import main
from bridge.config import CONFIG_ENV, Config
from bridge.core.types import Identity, LockReason
from bridge.directory import UnavailableError
from bridge.store import SqliteStore
from bridge.store.sealing import Sealer, load_or_create_key
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000  # 2027-01-15T08:00:00Z: the CLI's clock, fixed
DAY = 86_400
DAYS = 14  # mfa.enrollment_days in the test config
ISSUER = "ACME"
SECRET_160 = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # 20 bytes
SECRET_160_B = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # another 20 bytes
SECRET_80 = "JBSWY3DPEHPK3PXP"  # 10 bytes: an older pam_google_authenticator key
QR_CHARS = frozenset("█▀▄ ")
EXEMPT_GROUP = "cn=mfa-exempt,ou=groups,dc=example,dc=org"
DOWN = "ldap://127.0.0.1:1: Can't contact LDAP server"  # the fake directory's failure


def entry(name: str) -> Identity:
    """The directory entry whose name_attribute is `name`."""
    return Identity(entry_id=f"id-{name}", name=name, dn=f"uid={name},ou=people,dc=example,dc=org")


ALICE, BOB, CAROL, DAVE, SVC = map(entry, ["alice", "bob", "carol", "dave", "svc-backup"])


def iso(timestamp: int) -> str:
    """The CLI's ISO 8601 form of a Unix time."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def config_data(tmp_path: Path) -> dict[str, Any]:
    """A minimal valid config: a dummy directory (never contacted), a store in tmp_path."""
    return {
        "directory": {
            "urls": ["ldap://127.0.0.1:1"],
            "bind_dn": "cn=bridge,ou=services,dc=example,dc=org",
            "bind_password": "dummy-password",
            "user_base": "ou=people,dc=example,dc=org",
        },
        "mfa": {"issuer": ISSUER, "enrollment_days": DAYS, "exempt_users": ["svc-backup"]},
        "store": {"path": str(tmp_path / "state" / "bridge.db")},
        "radius": {
            "listen": "127.0.0.1:0",
            "clients": [{"address": "127.0.0.1", "secret": "radius-shared-secret-0123456789"}],
        },
        "log": {"audit": str(tmp_path / "audit.jsonl")},  # admin changes land here
    }


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write `data` as YAML to `path` and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def write_csv(path: Path, *lines: str, newline: str = "\n") -> Path:
    """Write CSV `lines` to `path` and return the path."""
    path.write_text(newline.join(lines) + newline, encoding="utf-8")
    return path


@dataclass
class Clock:
    """The CLI's `time.time()`, moved by hand."""

    now: int = NOW

    def __call__(self) -> float:
        """The current fixed time."""
        return float(self.now)


@dataclass(frozen=True)
class Result:
    """What one CLI run produced."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.out)


Run = Callable[..., Result]


def assert_one_line_error(result: Result, code: int = 1) -> str:
    """The run failed with `code`, nothing on stdout, one line on stderr; returns it."""
    assert result.code == code, result
    assert result.out == ""
    assert "Traceback" not in result.err
    assert result.err.endswith("\n")
    assert result.err.count("\n") == 1, result.err
    return result.err.strip()


@dataclass
class FakeDirectory:
    """The directory the `user` commands ask, in memory: login names to entries."""

    names: dict[str, Identity]  # every login name a user_filter matches -> its entry
    groups: dict[str, set[str]]  # group DN -> entry ids of its members
    down: bool = False  # True: every question raises UnavailableError, as with no server
    lookups: list[FakeLookup] = field(default_factory=list)

    def lookup(self, config: object, exempt_groups: tuple[str, ...] = ()) -> FakeLookup:
        """What `bridge.directory.DirectoryLookup(config, exempt_groups)` builds here."""
        made = FakeLookup(self, exempt_groups)
        self.lookups.append(made)
        return made


class FakeLookup:
    """An in-memory `DirectoryLookup`: resolve, resolve_many, is_exempt, close."""

    def __init__(self, directory: FakeDirectory, exempt_groups: tuple[str, ...]) -> None:
        self.directory = directory
        self.exempt_groups = exempt_groups
        self.asked: list[str] = []
        self.closed = False

    def _answer(self) -> None:
        if self.closed:
            raise AssertionError("asked after close()")
        if self.directory.down:
            raise UnavailableError(DOWN)

    def resolve(self, name: str) -> Identity | None:
        """The entry `name` is a login name of (exact match: the CLI normalises first)."""
        return self.resolve_many([name])[name]

    def resolve_many(self, names: list[str]) -> dict[str, Identity | None]:
        """Each name's entry, None for a name the directory does not know."""
        self._answer()
        self.asked.extend(names)
        return {name: self.directory.names.get(name) for name in names}

    def is_exempt(self, identity: Identity) -> bool:
        """Whether the entry is a member of one of the configured exempt groups."""
        self._answer()
        groups = self.directory.groups
        return any(identity.entry_id in groups.get(dn, set()) for dn in self.exempt_groups)

    def close(self) -> None:
        """Forget the (imaginary) connection."""
        self.closed = True


@pytest.fixture(autouse=True)
def directory(monkeypatch: pytest.MonkeyPatch) -> FakeDirectory:
    """A reachable fake directory where alice, bob and svc-backup also log in by mail."""
    names = {
        "alice": ALICE,
        "alice@example.org": ALICE,
        "bob": BOB,
        "bob@example.org": BOB,
        "carol": CAROL,
        "dave": DAVE,
        "svc-backup": SVC,
        "backup@example.org": SVC,
    }
    fake = FakeDirectory(names, {EXEMPT_GROUP: {DAVE.entry_id}})
    monkeypatch.setattr(bridge.directory, "DirectoryLookup", fake.lookup)
    return fake


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """The minimal valid config file."""
    return write_config(tmp_path / "etc" / "bridge.yaml", config_data(tmp_path))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A fixed clock patched in where the CLI reads the time."""
    clock = Clock()
    monkeypatch.setattr("bridge.cli.time.time", clock)
    return clock


@pytest.fixture(autouse=True)
def no_env_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MFA_BRIDGE_CONFIG, and a working directory without config/bridge.yaml."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cli(config_path: Path, clock: Clock, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `main(argv)` in-process, by default with `--config` appended after the words."""

    def run(*argv: str, config: Path | None = config_path) -> Result:
        args = [*argv, "--config", str(config)] if config is not None else list(argv)
        try:
            code = main(args)
        except SystemExit as exc:  # argparse: usage mistakes and --help
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def store(config_path: Path) -> Iterator[Callable[[], SqliteStore]]:
    """The store the CLI uses, opened (on first call) beside it in this process."""
    data = config_data(config_path.parent.parent)
    db = Path(data["store"]["path"])
    opened: list[SqliteStore] = []

    def get() -> SqliteStore:
        if not opened:
            opened.append(SqliteStore.open(db, db.with_suffix(".key")))
        return opened[0]

    yield get
    for each in opened:
        each.close()


def import_users(cli: Run, tmp_path: Path, *rows: str, replace: bool = False) -> None:
    """Import `username,secret` rows: confirmed, active users (over existing secrets too,
    with `replace`)."""
    path = write_csv(tmp_path / "users.csv", "username,secret", *rows)
    result = cli("user", "import", str(path), *(("--replace",) if replace else ()))
    assert result.code == 0, result


# --- check-config ---------------------------------------------------------------------------


def test_check_config_ok(cli: Run) -> None:
    """A valid config: exit 0, "config OK" on stdout, nothing on stderr."""
    result = cli("check-config")
    assert (result.code, result.out, result.err) == (0, "config OK\n", "")


def test_config_may_come_before_the_command_and_the_version_is_printed(
    cli: Run, config_path: Path
) -> None:
    """`mfa-bridge --config F check-config` as well as after; `--version` says which."""
    before = cli("--config", str(config_path), "check-config", config=None)
    assert (before.code, before.out) == (0, "config OK\n")
    missing = cli("--config", "/nowhere.yaml", "check-config", config=None)
    assert missing.code == 1 and "/nowhere.yaml" in missing.err
    version = cli("--version", config=None)
    assert version.code == 0
    assert re.fullmatch(r"mfa-bridge \d+\.\d+\.\d+\S*\n", version.out), version.out


def test_check_config_warnings_go_to_stderr(cli: Run, tmp_path: Path) -> None:
    """Warnings do not fail the check; they are printed on stderr, one a line."""
    data = config_data(tmp_path)
    data["radius"]["clients"][0]["secret"] = "short"
    path = write_config(tmp_path / "warn.yaml", data)
    result = cli("check-config", config=path)
    assert result.code == 0
    assert result.out == "config OK\n"
    assert result.err.startswith("warning: radius.clients[0].secret: ")
    assert result.err.count("\n") == 1


def test_check_config_two_errors_each_on_its_own_line(cli: Run, tmp_path: Path) -> None:
    """Two mistakes: exit 1 and each on its own stderr line, naming its key path."""
    data = config_data(tmp_path)
    data["mfa"]["max_failures"] = 0
    data["radius"]["mode"] = "sometimes"
    result = cli("check-config", config=write_config(tmp_path / "bad.yaml", data))
    assert result.code == 1
    assert result.out == ""
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert len(lines) == 2, lines
    assert all(line.startswith("config error: ") for line in lines)
    assert any("mfa.max_failures: " in line for line in lines)
    assert any("radius.mode: " in line for line in lines)


def test_check_config_missing_file(cli: Run, tmp_path: Path) -> None:
    """A config file that is not there: exit 1, one line naming it."""
    missing = tmp_path / "nowhere.yaml"
    line = assert_one_line_error(cli("check-config", config=missing))
    assert str(missing) in line


def test_user_command_with_broken_config(cli: Run, tmp_path: Path) -> None:
    """A `user` command refuses a broken config the same way: exit 1, no store touched."""
    data = config_data(tmp_path)
    data["mfa"]["issuer"] = "AC:ME"
    line = assert_one_line_error(
        cli("user", "list", config=write_config(tmp_path / "b.yaml", data))
    )
    assert "mfa.issuer" in line
    assert not (tmp_path / "state").exists()


# --- where the config comes from ------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["user", "status", "alice", "--json", "--config", "{}"],
        ["user", "status", "--config", "{}", "alice", "--json"],
        ["user", "status", "alice", "--config", "{}", "--json"],
    ],
)
def test_config_option_after_the_command_words(
    cli: Run, config_path: Path, argv: list[str]
) -> None:
    """`--config PATH` is accepted after (and between) the command's words."""
    assert cli("user", "enroll", "alice").code == 0
    result = cli(*(arg.format(config_path) for arg in argv), config=None)
    assert result.code == 0, result
    assert result.json()["username"] == "alice"


def test_env_var_sets_the_default_config(
    cli: Run, config_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """MFA_BRIDGE_CONFIG names the config when --config is not given."""
    monkeypatch.setenv(CONFIG_ENV, str(config_path))
    assert cli("check-config", config=None).code == 0
    assert cli("user", "enroll", "alice", "--json", config=None).code == 0
    assert (tmp_path / "state" / "bridge.db").exists()
    assert cli("user", "status", "alice", "--json", config=None).json()["state"] == "pending"


def test_config_option_beats_the_env_var(
    cli: Run, config_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An explicit --config wins over MFA_BRIDGE_CONFIG."""
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.yaml"))
    assert cli("check-config").code == 0
    assert cli("check-config", config=None).code == 1


def test_default_config_path_when_nothing_is_given(cli: Run) -> None:
    """Without --config or MFA_BRIDGE_CONFIG: config/bridge.yaml, here missing, one line."""
    line = assert_one_line_error(cli("check-config", config=None))
    assert str(Path("config/bridge.yaml")) in line


# --- enroll -----------------------------------------------------------------------------------


def test_enroll_json(cli: Run) -> None:
    """`enroll --json`: one object, pending, deadline, days left, base32 secret and its URI."""
    result = cli("user", "enroll", "alice", "--json")
    assert result.code == 0
    assert result.err == ""
    assert result.out.count("\n") == 1
    view = result.json()
    assert view["username"] == "alice"
    assert view["state"] == "pending"
    assert view["deadline"] == iso(NOW + DAYS * DAY)
    assert datetime.fromisoformat(view["deadline"]) == datetime.fromtimestamp(NOW + DAYS * DAY, UTC)
    assert view["days_left"] == DAYS
    assert view["failures"] == 0
    secret = view["secret"]
    assert len(b32decode(secret + "=" * (-len(secret) % 8))) == 20
    uri = urlsplit(view["uri"])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert unquote(uri.path) == f"/{ISSUER}:alice"
    query = parse_qs(uri.query)
    assert query["secret"] == [secret]
    assert query["issuer"] == [ISSUER]


def test_enroll_text_prints_qr_key_and_uri(cli: Run) -> None:
    """Without --json: a QR code of block characters, the key and the otpauth URI."""
    result = cli("user", "enroll", "alice")
    assert result.code == 0
    assert result.err == ""
    lines = result.out.splitlines()
    colours = ("\x1b[30;107m", "\x1b[0m")  # black on white, whatever the terminal's theme
    drawn = [line for line in lines if line.startswith(colours[0]) and line.endswith(colours[1])]
    qr = [line.removeprefix(colours[0]).removesuffix(colours[1]) for line in drawn]
    assert all(len(line) >= 21 and set(line) <= QR_CHARS for line in qr)
    assert len(qr) >= 10, result.out
    assert any(set(line) & {"▀", "▄"} for line in qr)
    keys = [line.removeprefix("key: ") for line in lines if line.startswith("key: ")]
    uris = [line.removeprefix("uri: ") for line in lines if line.startswith("uri: ")]
    assert len(keys) == len(uris) == 1
    assert uris[0].startswith(f"otpauth://totp/{ISSUER}:alice?")
    assert parse_qs(urlsplit(uris[0]).query)["secret"] == keys


def test_enroll_issues_a_new_secret_each_time(cli: Run, clock: Clock) -> None:
    """Enrolling again replaces the secret and keeps the running enrollment deadline."""
    first = cli("user", "enroll", "alice", "--json").json()
    clock.now += 2 * DAY
    second = cli("user", "enroll", "alice", "--json").json()
    assert second["secret"] != first["secret"]
    assert second["deadline"] == first["deadline"]
    assert second["days_left"] == DAYS - 2


def test_enroll_of_an_active_user_needs_a_new_code(cli: Run, tmp_path: Path) -> None:
    """Re-enrolling an active user makes them pending with no password-only period."""
    import_users(cli, tmp_path, f"alice,{SECRET_160}")
    view = cli("user", "enroll", "alice", "--json").json()
    assert (view["state"], view["deadline"], view["days_left"]) == ("pending", None, None)


# --- status -----------------------------------------------------------------------------------


def test_status_json_fields(cli: Run) -> None:
    """`status --json`: one object with username, state, deadline, days_left, failures."""
    cli("user", "enroll", "alice")
    result = cli("user", "status", "alice", "--json")
    assert result.code == 0
    assert result.err == ""
    view = result.json()
    assert isinstance(view, dict)
    assert {"username", "state", "deadline", "days_left", "failures"} <= view.keys()
    assert view["username"] == "alice"
    assert view["state"] == "pending"
    assert view["deadline"] == iso(NOW + DAYS * DAY)
    assert view["days_left"] == DAYS
    assert view["failures"] == 0
    assert "secret" not in view


def test_status_text(cli: Run) -> None:
    """Without --json: one line with the state, days left and deadline."""
    cli("user", "enroll", "alice")
    result = cli("user", "status", "alice")
    assert result.code == 0
    assert result.out == f"alice: pending {DAYS} days left, deadline {iso(NOW + DAYS * DAY)}\n"


@pytest.mark.parametrize(
    ("elapsed", "left"),
    [
        (0, DAYS),
        (1, DAYS),  # 13 days and 86399 s: rounded up
        (DAY - 1, DAYS),
        (DAY, DAYS - 1),
        (DAY + 1, DAYS - 1),
        ((DAYS - 1) * DAY + 1, 1),
        (DAYS * DAY - 1, 1),  # one second left is a day left
    ],
)
def test_days_left_is_rounded_up(cli: Run, clock: Clock, elapsed: int, left: int) -> None:
    """days_left counts a part of a day as a whole day."""
    cli("user", "enroll", "alice")
    clock.now = NOW + elapsed
    view = cli("user", "status", "alice", "--json").json()
    assert (view["state"], view["days_left"]) == ("pending", left)


def test_status_after_the_deadline_is_locked(cli: Run, clock: Clock) -> None:
    """Once the enrollment period is over the user shows as locked, with no days left."""
    cli("user", "enroll", "alice")
    clock.now = NOW + DAYS * DAY
    view = cli("user", "status", "alice", "--json").json()
    assert view["state"] == "locked"
    assert view["lock_reason"] == "enrollment-expired"
    assert view["days_left"] is None


def test_status_unknown_user(cli: Run) -> None:
    """An unknown user: exit 1, one line on stderr, nothing on stdout."""
    line = assert_one_line_error(cli("user", "status", "nobody"))
    assert "nobody" in line
    assert_one_line_error(cli("user", "status", "nobody", "--json"))


@pytest.mark.parametrize(
    "spelling", ["ALICE", "Alice", " alice ", "\uff41\uff4c\uff49\uff43\uff45"]
)
def test_user_names_are_normalised(cli: Run, directory: FakeDirectory, spelling: str) -> None:
    """`status ALICE` (or full-width, or padded) asks the directory for alice and finds her."""
    cli("user", "enroll", "alice")
    result = cli("user", "status", spelling, "--json")
    assert result.code == 0, result
    assert result.json()["username"] == "alice"
    assert directory.lookups[-1].asked == ["alice"]


def test_enroll_stores_the_normalised_name(cli: Run) -> None:
    """`enroll BOB` creates bob."""
    assert cli("user", "enroll", "BOB", "--json").json()["username"] == "bob"
    assert [view["username"] for view in cli("user", "list", "--json").json()] == ["bob"]


def test_unusable_user_name(cli: Run) -> None:
    """A blank or control-character name is a one-line error, never a traceback."""
    assert_one_line_error(cli("user", "enroll", "   "))
    assert_one_line_error(cli("user", "status", "al\nice"))


def test_status_of_an_exempt_user(cli: Run) -> None:
    """A user exempt in the config is known even without a record."""
    view = cli("user", "status", "SVC-backup", "--json").json()
    assert (view["username"], view["state"]) == ("svc-backup", "exempt")


def test_exempt_users_match_the_entry_name_not_the_typed_one(cli: Run) -> None:
    """`status` by another login name of an exempt_users entry shows exempt, by its name."""
    result = cli("user", "status", "backup@example.org", "--json")
    assert (result.code, result.err) == (0, "")
    assert (result.json()["username"], result.json()["state"]) == ("svc-backup", "exempt")
    assert cli("user", "status", "backup@example.org").out == "svc-backup: exempt\n"


def test_status_of_an_exempt_group_member(
    cli: Run, tmp_path: Path, directory: FakeDirectory
) -> None:
    """A member of an mfa.exempt_groups group shows as exempt, not as an unknown user."""
    data = config_data(tmp_path)
    data["mfa"]["exempt_groups"] = [EXEMPT_GROUP]
    config = write_config(tmp_path / "groups.yaml", data)
    result = cli("user", "status", "dave", "--json", config=config)
    assert (result.code, result.err) == (0, "")
    assert (result.json()["username"], result.json()["state"]) == ("dave", "exempt")
    assert directory.lookups[-1].exempt_groups == (EXEMPT_GROUP,)
    line = assert_one_line_error(cli("user", "status", "dave"))  # no exempt_groups configured
    assert "unknown user: dave" in line


def test_exempt_state_wins_over_a_stored_record(cli: Run) -> None:
    """An exempt user who has a record (enrolled before the exemption) still shows exempt."""
    cli("user", "enroll", "svc-backup")
    view = cli("user", "status", "svc-backup", "--json").json()
    assert (view["username"], view["state"]) == ("svc-backup", "exempt")


# --- list ---------------------------------------------------------------------------------------


def test_list_empty_store_json(cli: Run) -> None:
    """`list --json` on an empty store prints []."""
    result = cli("user", "list", "--json")
    assert (result.code, result.err) == (0, "")
    assert result.json() == []


def test_list_empty_store_text(cli: Run) -> None:
    """`list` on an empty store says so."""
    result = cli("user", "list")
    assert (result.code, result.out) == (0, "no users\n")


def test_list_json_array(cli: Run, tmp_path: Path) -> None:
    """`list --json` prints one array of user objects, by name."""
    cli("user", "enroll", "carol")
    import_users(cli, tmp_path, f"bob,{SECRET_160}")
    cli("user", "enroll", "alice")
    views = cli("user", "list", "--json").json()
    assert isinstance(views, list)
    assert [view["username"] for view in views] == ["alice", "bob", "carol"]
    assert [view["state"] for view in views] == ["pending", "active", "pending"]
    for view in views:
        assert {"username", "state", "deadline", "days_left", "failures"} <= view.keys()
        assert "secret" not in view


def test_list_text_one_line_per_user(cli: Run) -> None:
    """`list` prints one line per user."""
    cli("user", "enroll", "alice")
    cli("user", "enroll", "bob")
    lines = cli("user", "list").out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["alice", "bob"]


# --- lock, unlock, reset ------------------------------------------------------------------------


def test_lock(cli: Run, tmp_path: Path) -> None:
    """`lock`: state locked, lock_reason admin, shown at once and by a later status."""
    import_users(cli, tmp_path, f"alice,{SECRET_160}")
    view = cli("user", "lock", "ALICE", "--json").json()
    assert (view["username"], view["state"], view["lock_reason"]) == ("alice", "locked", "admin")
    again = cli("user", "status", "alice", "--json").json()
    assert (again["state"], again["lock_reason"]) == ("locked", "admin")
    assert cli("user", "lock", "alice").out == "alice: locked (admin)\n"


@pytest.mark.parametrize("days", [[], ["--days", "3"]])
def test_unlock_confirmed_user_is_active(cli: Run, tmp_path: Path, days: list[str]) -> None:
    """`unlock` returns a user with a confirmed secret to active, failures 0, no deadline."""
    import_users(cli, tmp_path, f"alice,{SECRET_160}")
    cli("user", "lock", "alice")
    view = cli("user", "unlock", "alice", *days, "--json").json()
    assert view["state"] == "active"
    assert (view["failures"], view["lock_reason"], view["deadline"]) == (0, None, None)
    assert cli("user", "status", "alice", "--json").json()["state"] == "active"


def test_unlock_unconfirmed_user_gets_a_fresh_period(cli: Run, clock: Clock) -> None:
    """An expired, never-confirmed user is unlocked into grace with a new full period."""
    cli("user", "enroll", "alice")
    clock.now = NOW + 20 * DAY
    assert cli("user", "status", "alice", "--json").json()["state"] == "locked"
    view = cli("user", "unlock", "alice", "--json").json()
    assert view["state"] == "grace"
    assert view["deadline"] == iso(clock.now + DAYS * DAY)
    assert view["days_left"] == DAYS
    assert view["failures"] == 0


def test_unlock_days_is_honoured(cli: Run, clock: Clock) -> None:
    """`unlock --days N` gives an unconfirmed user N days of grace."""
    cli("user", "enroll", "alice")
    cli("user", "lock", "alice")
    clock.now = NOW + 5
    view = cli("user", "unlock", "alice", "--days", "3", "--json").json()
    assert (view["state"], view["days_left"]) == ("grace", 3)
    assert view["deadline"] == iso(NOW + 5 + 3 * DAY)


def test_unlock_days_zero_forgets_an_unconfirmed_user(cli: Run) -> None:
    """`--days 0`: no period at all, so the record goes and the user must be enrolled."""
    cli("user", "enroll", "alice")
    result = cli("user", "unlock", "alice", "--days", "0", "--json")
    assert result.code == 0
    assert result.json()["state"] is None
    assert_one_line_error(cli("user", "status", "alice"))


def test_reset_forgets_the_secret(
    cli: Run, tmp_path: Path, clock: Clock, store: Callable[[], SqliteStore]
) -> None:
    """`reset`: back to grace with a fresh period, and the stored secret is gone."""
    import_users(cli, tmp_path, f"alice,{SECRET_160}")
    clock.now = NOW + 100
    result = cli("user", "reset", "alice", "--json")
    assert result.code == 0
    assert result.json()["state"] == "grace"
    view = cli("user", "status", "alice", "--json").json()
    assert (view["state"], view["days_left"]) == ("grace", DAYS)
    assert view["deadline"] == iso(NOW + 100 + DAYS * DAY)
    assert view["enrolled"] is False
    record = store().get(ALICE.entry_id)
    assert record is not None
    assert (record.secret, record.confirmed) == (None, False)


@pytest.mark.parametrize(
    ("action", "name"),
    [
        ("lock", "nobody"),
        ("unlock", "nobody"),
        ("unlock", "carol"),
        ("reset", "nobody"),
        ("reset", "carol"),
    ],
)
def test_change_of_an_unknown_user(cli: Run, action: str, name: str) -> None:
    """lock/unlock/reset of a name not in the directory, unlock/reset of one with no record:
    exit 1, nothing made."""
    line = assert_one_line_error(cli("user", action, name))
    assert f"unknown user: {name}" in line
    assert cli("user", "list", "--json").json() == []


def test_lock_of_a_directory_user_with_no_record_yet(
    cli: Run, store: Callable[[], SqliteStore]
) -> None:
    """A compromised account is locked before its first login; unlock then gives a period."""
    locked = cli("user", "lock", "carol", "--json")
    assert locked.code == 0, locked.err
    assert (locked.json()["username"], locked.json()["state"]) == ("carol", "locked")
    record = store().get(CAROL.entry_id)
    assert record is not None and record.lock_reason is LockReason.ADMIN
    unlocked = cli("user", "unlock", "carol", "--json").json()
    assert (unlocked["state"], unlocked["days_left"]) == ("grace", DAYS)


# --- import -------------------------------------------------------------------------------------


def test_import_makes_active_users(
    cli: Run, tmp_path: Path, store: Callable[[], SqliteStore]
) -> None:
    """Imported users are active with the secret from the file."""
    path = write_csv(
        tmp_path / "users.csv", "username,secret", f"alice,{SECRET_160}", f"Bob,{SECRET_160_B}"
    )
    result = cli("user", "import", str(path))
    assert (result.code, result.err) == (0, "")
    assert "2" in result.out
    for name in ("alice", "bob"):
        view = cli("user", "status", name, "--json").json()
        assert (view["state"], view["deadline"], view["enrolled"]) == ("active", None, True)
    alice = store().get(ALICE.entry_id)
    assert alice is not None
    assert alice.secret == b32decode(SECRET_160)


def test_import_json_reports_the_count(cli: Run, tmp_path: Path) -> None:
    """`import --json` prints how many users were imported."""
    path = write_csv(tmp_path / "u.csv", "username,secret", f"alice,{SECRET_160}")
    assert cli("user", "import", str(path), "--json").json() == {"imported": 1}


def test_import_bad_secret_names_the_line_and_imports_nothing(cli: Run, tmp_path: Path) -> None:
    """A bad secret on line 3: exit 1, the message names line 3, and no row is imported."""
    path = write_csv(
        tmp_path / "users.csv",
        "username,secret",
        f"alice,{SECRET_160}",
        "bob,not-base32!",
        f"carol,{SECRET_160_B}",
    )
    line = assert_one_line_error(cli("user", "import", str(path)))
    assert "line 3" in line
    assert "not-base32" not in line  # the secret is never echoed
    assert cli("user", "list", "--json").json() == []


@pytest.mark.parametrize(
    "header", ["user,secret", "username,secret,extra", "secret,username", "username"]
)
def test_import_wrong_header(cli: Run, tmp_path: Path, header: str) -> None:
    """A header other than username,secret: exit 1, nothing imported."""
    path = write_csv(tmp_path / "users.csv", header, f"alice,{SECRET_160}")
    line = assert_one_line_error(cli("user", "import", str(path)))
    assert "header" in line
    assert cli("user", "list", "--json").json() == []


def test_import_empty_file(cli: Run, tmp_path: Path) -> None:
    """An empty file has no header: exit 1."""
    path = tmp_path / "empty.csv"
    path.write_text("", encoding="utf-8")
    assert_one_line_error(cli("user", "import", str(path)))


def test_import_missing_file(cli: Run, tmp_path: Path) -> None:
    """A file that is not there: exit 1, one line naming it."""
    missing = tmp_path / "nowhere.csv"
    line = assert_one_line_error(cli("user", "import", str(missing)))
    assert str(missing) in line


def test_import_takes_an_80_bit_key_with_a_warning_and_refuses_shorter(
    cli: Run, tmp_path: Path
) -> None:
    """An 80-bit key (older pam_google_authenticator files) is imported with a note that
    names the risk; 64 bits is refused."""
    path = write_csv(tmp_path / "users.csv", "username,secret", f"alice,{SECRET_80}")
    taken = cli("user", "import", str(path))
    assert taken.code == 0, taken
    assert "line 2: alice: a 80-bit key" in taken.err and "RFC 4226" in taken.err
    short = write_csv(tmp_path / "short.csv", "username,secret", "bob,GEZDGNBVGY3TQ===")
    line = assert_one_line_error(cli("user", "import", str(short)))
    assert "line 2" in line and "64 bits" in line


def test_import_refuses_duplicates(cli: Run, tmp_path: Path) -> None:
    """The same user twice (after normalising the name) is refused, nothing imported."""
    path = write_csv(
        tmp_path / "users.csv", "username,secret", f"alice,{SECRET_160}", f"ALICE,{SECRET_160_B}"
    )
    line = assert_one_line_error(cli("user", "import", str(path)))
    assert "line 3" in line
    assert cli("user", "list", "--json").json() == []


def test_import_accepts_lowercase_spaced_base32(
    cli: Run, tmp_path: Path, store: Callable[[], SqliteStore]
) -> None:
    """Keys as apps show them (lower case, in groups of four) are accepted."""
    spaced = " ".join(SECRET_160[i : i + 4] for i in range(0, len(SECRET_160), 4)).lower()
    path = write_csv(tmp_path / "users.csv", "username,secret", f"alice,{spaced}")
    assert cli("user", "import", str(path)).code == 0
    record = store().get(ALICE.entry_id)
    assert record is not None
    assert record.secret == b32decode(SECRET_160)


def test_import_accepts_a_spreadsheet_export(cli: Run, tmp_path: Path) -> None:
    """A BOM, CRLF line ends, a header in capitals and a blank line are all fine."""
    path = tmp_path / "users.csv"
    path.write_bytes(b"\xef\xbb\xbfUsername,Secret\r\nalice," + SECRET_160.encode() + b"\r\n\r\n")
    assert cli("user", "import", str(path), "--json").json() == {"imported": 1}
    assert cli("user", "status", "alice", "--json").json()["state"] == "active"


def test_import_unparsable_csv_is_one_line(cli: Run, tmp_path: Path) -> None:
    """A field the csv module refuses (too large) is a bad file, not a traceback."""
    path = write_csv(tmp_path / "users.csv", "username,secret", "alice," + "A" * 200_000)
    line = assert_one_line_error(cli("user", "import", str(path)))
    assert "line 2" in line


def test_import_over_existing_users(cli: Run, tmp_path: Path) -> None:
    """A pending user has a secret too (maybe scanned already): --replace is needed, and
    then they are active with the imported one."""
    cli("user", "enroll", "alice")
    path = write_csv(tmp_path / "users.csv", "username,secret", f"alice,{SECRET_160}")
    assert "--replace" in assert_one_line_error(cli("user", "import", str(path)))
    assert cli("user", "import", str(path), "--replace").code == 0
    view = cli("user", "status", "alice", "--json").json()
    assert (view["state"], view["deadline"]) == ("active", None)


# --- one record per directory entry (SPEC section 8) -------------------------------------------


def test_enroll_by_another_login_name_enrolls_the_entry(
    cli: Run, store: Callable[[], SqliteStore]
) -> None:
    """`enroll alice@example.org` enrolls alice's entry: username and URI carry its name."""
    result = cli("user", "enroll", "Alice@Example.org", "--json")
    assert (result.code, result.err) == (0, "")
    view = result.json()
    assert (view["username"], view["state"]) == ("alice", "pending")
    assert unquote(urlsplit(view["uri"]).path) == f"/{ISSUER}:alice"
    records = store().list()
    assert [(r.entry_id, r.username) for r in records] == [(ALICE.entry_id, "alice")]
    assert records[0].secret == b32decode(view["secret"] + "=" * (-len(view["secret"]) % 8))


def test_enroll_text_by_another_login_name_shows_the_entry_name(cli: Run) -> None:
    """Without --json the URI and the closing status line name the entry, not the alias."""
    lines = cli("user", "enroll", "alice@example.org").out.splitlines()
    assert any(line.startswith(f"uri: otpauth://totp/{ISSUER}:alice?") for line in lines)
    assert lines[-1].startswith("alice: pending ")


def test_enroll_of_a_name_the_directory_does_not_know(
    cli: Run, store: Callable[[], SqliteStore]
) -> None:
    """A typo is a user error: exit 1, one line naming it, and no record is created."""
    line = assert_one_line_error(cli("user", "enroll", "alcie", "--json"))
    assert "unknown user: alcie" in line
    assert store().list() == []
    assert cli("user", "list", "--json").json() == []


def test_enroll_again_by_another_name_replaces_the_one_record(
    cli: Run, store: Callable[[], SqliteStore]
) -> None:
    """Enrolling alice, then alice@example.org, leaves one record with the second secret."""
    cli("user", "enroll", "alice")
    second = cli("user", "enroll", "alice@example.org", "--json").json()
    records = store().list()
    assert [r.entry_id for r in records] == [ALICE.entry_id]
    assert records[0].secret == b32decode(second["secret"])


def test_status_and_lock_by_another_login_name_act_on_the_entry(
    cli: Run, tmp_path: Path, store: Callable[[], SqliteStore]
) -> None:
    """`status`/`lock` by alias show and change the entry's record, under the entry's name."""
    import_users(cli, tmp_path, f"alice,{SECRET_160}")
    view = cli("user", "status", "ALICE@example.org", "--json").json()
    assert (view["username"], view["state"]) == ("alice", "active")
    locked = cli("user", "lock", "alice@example.org", "--json")
    assert (locked.code, locked.err) == (0, "")
    view = locked.json()
    assert (view["username"], view["state"], view["lock_reason"]) == ("alice", "locked", "admin")
    assert cli("user", "status", "alice").out == "alice: locked (admin)\n"
    assert [(r.entry_id, r.state.value) for r in store().list()] == [(ALICE.entry_id, "locked")]


def test_unlock_and_reset_by_another_login_name(cli: Run, tmp_path: Path) -> None:
    """`unlock` and `reset` by alias change the entry's record and show its name."""
    import_users(cli, tmp_path, f"alice,{SECRET_160}")
    cli("user", "lock", "alice")
    view = cli("user", "unlock", "alice@example.org", "--json").json()
    assert (view["username"], view["state"]) == ("alice", "active")
    view = cli("user", "reset", "alice@example.org", "--json").json()
    assert (view["username"], view["state"], view["days_left"]) == ("alice", "grace", DAYS)


def test_status_of_an_entry_without_a_record(cli: Run) -> None:
    """An entry the bridge has no record of (and not exempt) is an unknown user: exit 1."""
    line = assert_one_line_error(cli("user", "status", "carol"))
    assert "unknown user: carol" in line


def test_list_shows_entry_names(cli: Run, tmp_path: Path) -> None:
    """Users enrolled or imported by another login name are listed under the entry's name."""
    cli("user", "enroll", "bob@example.org")
    import_users(cli, tmp_path, f"alice@example.org,{SECRET_160}")
    views = cli("user", "list", "--json").json()
    assert [(v["username"], v["state"]) for v in views] == [
        ("alice", "active"),
        ("bob", "pending"),
    ]
    assert [line.split(":")[0] for line in cli("user", "list").out.splitlines()] == [
        "alice",
        "bob",
    ]


def test_every_user_command_closes_the_directory(cli: Run, directory: FakeDirectory) -> None:
    """Each `user` command builds one lookup and closes it, on success and on error."""
    cli("user", "enroll", "alice")
    cli("user", "enroll", "nobody")
    cli("user", "list")
    assert len(directory.lookups) == 3
    assert all(lookup.closed for lookup in directory.lookups)


# --- import resolves names ----------------------------------------------------------------------


def test_import_of_an_unknown_name_names_its_line(
    cli: Run, tmp_path: Path, store: Callable[[], SqliteStore]
) -> None:
    """A name the directory does not know fails the import on its line; nothing is imported."""
    path = write_csv(
        tmp_path / "users.csv",
        "username,secret",
        f"alice,{SECRET_160}",
        f"nobody,{SECRET_160_B}",
        f"bob,{SECRET_160_B}",
    )
    line = assert_one_line_error(cli("user", "import", str(path)))
    assert "line 3" in line
    assert "nobody" in line
    assert store().list() == []


def test_import_of_two_names_of_one_person(
    cli: Run, tmp_path: Path, store: Callable[[], SqliteStore]
) -> None:
    """alice and alice@example.org in one file are one person: exit 1, nothing imported."""
    path = write_csv(
        tmp_path / "users.csv",
        "username,secret",
        f"alice,{SECRET_160}",
        f"bob,{SECRET_160_B}",
        f"alice@example.org,{SECRET_160_B}",
    )
    line = assert_one_line_error(cli("user", "import", str(path)))
    assert "line 4" in line
    assert "alice@example.org" in line
    assert "line 2" in line  # where the same person came first
    assert store().list() == []


def test_import_keys_records_by_entry(
    cli: Run, tmp_path: Path, store: Callable[[], SqliteStore]
) -> None:
    """Imported rows are stored under the entry's id and name, whichever name the file used."""
    import_users(cli, tmp_path, f"ALICE@example.org,{SECRET_160}", f"bob,{SECRET_160_B}")
    records = store().list()
    assert [(r.entry_id, r.username, r.state.value) for r in records] == [
        (ALICE.entry_id, "alice", "active"),
        (BOB.entry_id, "bob", "active"),
    ]
    assert records[0].secret == b32decode(SECRET_160)


@pytest.mark.parametrize(
    ("secret", "kept"), [(SECRET_160, 4_000), (SECRET_160_B, None)], ids=["same", "other"]
)
def test_import_again_keeps_the_replay_guard_only_for_the_same_key(
    cli: Run, tmp_path: Path, store: Callable[[], SqliteStore], secret: str, kept: int | None
) -> None:
    """Re-importing the same key keeps last_step (no code reused); a new key starts afresh."""
    import_users(cli, tmp_path, f"alice,{SECRET_160}")
    store().update(ALICE.entry_id, lambda old: (old and old.evolve(last_step=4_000), None))
    import_users(cli, tmp_path, f"alice@example.org,{secret}", replace=True)
    record = store().get(ALICE.entry_id)
    assert record is not None
    assert (record.secret, record.last_step) == (b32decode(secret), kept)


# --- the directory unreachable ------------------------------------------------------------------


def test_lock_by_stored_name_while_the_directory_is_down(
    cli: Run, tmp_path: Path, directory: FakeDirectory, store: Callable[[], SqliteStore]
) -> None:
    """`lock` goes ahead by the stored name (exit 0) and says so in a note on stderr."""
    import_users(cli, tmp_path, f"alice,{SECRET_160}")
    directory.down = True
    result = cli("user", "lock", "Alice")
    assert (result.code, result.out) == (0, "alice: locked (admin)\n")
    assert result.err.startswith("note: directory unreachable: ")
    assert result.err.count("\n") == 1
    assert "locked by the stored name (1 records: alice)" in result.err
    record = store().get(ALICE.entry_id)
    assert record is not None
    assert (record.state.value, record.lock_reason) == ("locked", "admin")


def test_status_by_stored_name_while_the_directory_is_down(
    cli: Run, tmp_path: Path, directory: FakeDirectory
) -> None:
    """`status` shows the stored record by its name, with a note that the directory is down."""
    import_users(cli, tmp_path, f"alice,{SECRET_160}")
    directory.down = True
    result = cli("user", "status", "alice", "--json")
    assert result.code == 0
    assert (result.json()["username"], result.json()["state"]) == ("alice", "active")
    assert result.err.startswith("note: directory unreachable: ")


def test_another_login_name_is_not_found_while_the_directory_is_down(
    cli: Run, tmp_path: Path, directory: FakeDirectory
) -> None:
    """Only the stored name works without the directory: an alias is a one-line error."""
    import_users(cli, tmp_path, f"alice,{SECRET_160}")
    directory.down = True
    line = assert_one_line_error(cli("user", "lock", "alice@example.org"))
    assert "directory unreachable" in line
    assert cli("user", "status", "alice", "--json").json()["state"] == "active"


@pytest.mark.parametrize(
    "argv",
    [["enroll", "alice"], ["enroll", "carol"], ["unlock", "alice"], ["reset", "alice"]],
)
def test_commands_that_need_the_directory_fail_while_it_is_down(
    cli: Run,
    tmp_path: Path,
    directory: FakeDirectory,
    store: Callable[[], SqliteStore],
    argv: list[str],
) -> None:
    """enroll, unlock and reset: exit 1, one line saying the directory is unreachable."""
    import_users(cli, tmp_path, f"alice,{SECRET_160}")
    before = store().list()
    directory.down = True
    line = assert_one_line_error(cli("user", *argv))
    assert line.startswith("error: directory unreachable: ")
    assert store().list() == before


def test_import_fails_while_the_directory_is_down(
    cli: Run, tmp_path: Path, directory: FakeDirectory, store: Callable[[], SqliteStore]
) -> None:
    """`import` cannot resolve its names: exit 1, one line, nothing imported."""
    directory.down = True
    path = write_csv(tmp_path / "users.csv", "username,secret", f"alice,{SECRET_160}")
    line = assert_one_line_error(cli("user", "import", str(path)))
    assert "directory unreachable" in line
    assert store().list() == []


# --- a store from the previous release (schema 2, keyed by the name typed) ---------------------

SCHEMA_2 = """
CREATE TABLE users (
    username    TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('grace', 'pending', 'active', 'locked')),
    deadline    INTEGER,
    failures    INTEGER NOT NULL DEFAULT 0,
    last_step   INTEGER,
    secret      BLOB,
    lock_reason TEXT,
    confirmed   INTEGER NOT NULL DEFAULT 0,
    created     INTEGER NOT NULL,
    updated     INTEGER NOT NULL,
    version     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
"""


@dataclass(frozen=True)
class OldRow:
    """One row of a schema-2 store: a record keyed by the name the user typed."""

    username: str
    state: str
    deadline: int | None = None
    last_step: int | None = None
    secret: str | None = None  # base32
    confirmed: bool = False
    created: int = NOW - 30 * DAY
    updated: int = NOW - 30 * DAY


# Before SPEC 8 alice got a second record (a fresh grace period) by typing her mail address.
OLD_ROWS = (
    OldRow("alice", "active", last_step=4_000, secret=SECRET_160, confirmed=True,
           created=NOW - 200 * DAY, updated=NOW - 20 * DAY),
    OldRow("alice@example.org", "grace", deadline=NOW + 5 * DAY,
           created=NOW - 9 * DAY, updated=NOW - 9 * DAY),
    OldRow("bob", "pending", deadline=NOW + 3 * DAY, secret=SECRET_160_B),
    OldRow("ghost", "grace", deadline=NOW + DAY),  # gone from the directory
)  # fmt: skip


def write_schema_2_store(config_path: Path, rows: tuple[OldRow, ...] = OLD_ROWS) -> None:
    """Write the config's store as the previous release did, secrets sealed by user name."""
    db = Path(config_data(config_path.parent.parent)["store"]["path"])
    db.parent.mkdir(parents=True, exist_ok=True)
    sealer = Sealer(load_or_create_key(db.with_suffix(".key")))
    con = sqlite3.connect(db)
    try:
        with con:
            con.execute(SCHEMA_2)
            con.executemany(
                "INSERT INTO users VALUES (?, ?, ?, 0, ?, ?, NULL, ?, ?, ?, 3)",
                [
                    (
                        row.username,
                        row.state,
                        row.deadline,
                        row.last_step,
                        sealer.seal(row.username, b32decode(row.secret)) if row.secret else None,
                        int(row.confirmed),
                        row.created,
                        row.updated,
                    )
                    for row in rows
                ],
            )
        con.execute("PRAGMA user_version = 2")
    finally:
        con.close()


def test_old_store_is_attached_by_list(
    cli: Run, config_path: Path, store: Callable[[], SqliteStore]
) -> None:
    """`list` attaches old rows to their entries; alice's two records merge, active kept."""
    write_schema_2_store(config_path)
    result = cli("user", "list", "--json")
    assert result.code == 0, result
    views = result.json()
    assert [(v["username"], v["state"], v.get("unattached")) for v in views] == [
        ("alice", "active", None),
        ("bob", "pending", None),
        ("ghost", None, True),
    ]
    notes = [line for line in result.err.splitlines() if "alice@example.org" in line]
    assert len(notes) == 1, result.err
    assert notes[0].startswith("note: ")
    assert "'alice' (active)" in notes[0]
    assert "'alice@example.org' (grace)" in notes[0]
    assert "kept active" in notes[0]
    alice = store().get(ALICE.entry_id)
    assert alice is not None
    assert (alice.username, alice.state.value, alice.confirmed) == ("alice", "active", True)
    assert (alice.secret, alice.last_step) == (b32decode(SECRET_160), 4_000)
    assert alice.created == NOW - 200 * DAY
    bob = store().get(BOB.entry_id)
    assert bob is not None
    assert (bob.state.value, bob.secret) == ("pending", b32decode(SECRET_160_B))
    assert store().legacy_names() == ["ghost"]


def test_old_store_is_attached_once(cli: Run, config_path: Path) -> None:
    """A second `list` finds nothing more to attach: no notes, the same users."""
    write_schema_2_store(config_path)
    first = cli("user", "list", "--json")
    second = cli("user", "list", "--json")
    assert (second.code, second.err) == (0, "")
    assert second.json() == first.json()


def test_old_store_status_by_mail_is_the_active_record(cli: Run, config_path: Path) -> None:
    """An active user of the old store who types the mail address is active, not in grace."""
    write_schema_2_store(config_path)
    result = cli("user", "status", "alice@example.org", "--json")
    assert result.code == 0, result
    assert (result.json()["username"], result.json()["state"]) == ("alice", "active")
    assert "kept active" in result.err


def test_old_store_waits_while_the_directory_is_down(
    cli: Run, config_path: Path, directory: FakeDirectory
) -> None:
    """Directory down: `list` shows the old rows as unattached, with a note; none is lost."""
    write_schema_2_store(config_path)
    directory.down = True
    result = cli("user", "list", "--json")
    assert result.code == 0, result
    views = result.json()
    assert [v["username"] for v in views] == ["alice", "alice@example.org", "bob", "ghost"]
    assert all(v["unattached"] is True and v["state"] is None for v in views)
    assert result.err.startswith("note: 4 records of an earlier release wait for the directory")
    assert result.err.count("\n") == 1
    directory.down = False
    views = cli("user", "list", "--json").json()
    assert [(v["username"], v["state"]) for v in views] == [
        ("alice", "active"),
        ("bob", "pending"),
        ("ghost", None),
    ]


# --- found while updating the tests to SPEC 8, fixed since ------------------------------------


def test_forgotten_user_json_shows_the_entry_name(cli: Run) -> None:
    """`unlock alice@example.org --days 0 --json` of a forgotten record names the entry."""
    cli("user", "enroll", "alice")
    view = cli("user", "unlock", "alice@example.org", "--days", "0", "--json").json()
    assert (view["username"], view["state"]) == ("alice", None)


def test_lock_of_an_old_record_while_the_directory_is_down(
    cli: Run, config_path: Path, directory: FakeDirectory
) -> None:
    """Right after an upgrade, with the directory down, `lock alice` still locks her."""
    write_schema_2_store(config_path)
    directory.down = True
    assert cli("user", "lock", "alice").code == 0
    directory.down = False
    assert cli("user", "status", "alice", "--json").json()["state"] == "locked"


def test_list_text_of_unattached_rows(cli: Run, config_path: Path) -> None:
    """`list` (text) shows an old row not yet attached without a Python None."""
    write_schema_2_store(config_path)
    lines = cli("user", "list").out.splitlines()
    assert lines[-1].startswith("ghost: ")
    assert "None" not in lines[-1]


# --- bad usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frob"],
        ["user"],
        ["user", "frob"],
        ["user", "status"],
        ["user", "enroll"],
        ["user", "import"],
        ["user", "status", "alice", "bob"],
        ["user", "status", "alice", "--bogus"],
        ["user", "unlock", "alice", "--days", "abc"],
        ["user", "unlock", "alice", "--days", "-1"],
        ["user", "unlock", "alice", "--days"],
        ["check-config", "--json"],
        ["check-config", "--config"],
    ],
)
def test_bad_usage_exits_2(cli: Run, argv: list[str]) -> None:
    """Usage mistakes: exit 2 with a one-line error on stderr."""
    line = assert_one_line_error(cli(*argv, config=None), code=2)
    assert "error:" in line


def test_help_exits_0(cli: Run) -> None:
    """--help prints the usage on stdout and exits 0."""
    result = cli("user", "--help", config=None)
    assert result.code == 0
    assert "enroll" in result.out


# --- the store ------------------------------------------------------------------------------------


def test_unopenable_store_is_one_line(cli: Run, tmp_path: Path) -> None:
    """A store path that cannot be created: exit 1, one line."""
    (tmp_path / "blocker").write_text("a file, not a directory", encoding="utf-8")
    data = config_data(tmp_path)
    data["store"]["path"] = str(tmp_path / "blocker" / "bridge.db")
    assert_one_line_error(cli("user", "list", config=write_config(tmp_path / "s.yaml", data)))


def test_wrong_key_file_is_one_line(cli: Run, tmp_path: Path) -> None:
    """Secrets that do not open with the key file: exit 1, one line."""
    cli("user", "enroll", "alice")
    (tmp_path / "state" / "bridge.key").unlink()  # a new key is made on the next open
    line = assert_one_line_error(cli("user", "status", "alice"))
    assert "key" in line


def test_busy_store_is_one_line(cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store held by another writer past the busy timeout: exit 1, one line."""

    def open_store(config: Config) -> SqliteStore:
        config.store.path.parent.mkdir(parents=True, exist_ok=True)
        sealer = Sealer(load_or_create_key(config.store.key_file))
        return SqliteStore(config.store.path, sealer, busy_timeout=0.05)

    monkeypatch.setattr(bridge.service, "open_store", open_store)
    cli("user", "enroll", "alice")
    other = sqlite3.connect(tmp_path / "state" / "bridge.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        line = assert_one_line_error(cli("user", "lock", "alice"))
        assert "locked" in line
    finally:
        other.close()
    assert cli("user", "lock", "alice").code == 0


# --- as a program ---------------------------------------------------------------------------------


def run_program(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a command in a child process from the repository root, without the env config."""
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONIOENCODING"] = "utf-8"
    return subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_python_m_bridge(config_path: Path, tmp_path: Path) -> None:
    """`python -m bridge` is the command, and its exit statuses reach the shell."""
    conf = ["--config", str(config_path)]
    python = [sys.executable, "-m", "bridge"]
    # A child process gets the real directory: the config's ldap://127.0.0.1:1 never answers.
    ok = run_program([*python, "user", "list", "--json", *conf], tmp_path)
    assert (ok.returncode, json.loads(ok.stdout)) == (0, []), ok.stderr
    for argv in (["status", "nobody"], ["enroll", "alice", "--json"]):
        failed = run_program([*python, "user", *argv, *conf], tmp_path)
        assert (failed.returncode, failed.stdout) == (1, ""), failed.stderr
        assert failed.stderr.count("\n") == 1
        assert "directory unreachable" in failed.stderr
        assert "Traceback" not in failed.stderr
    usage = run_program(python, tmp_path)
    assert (usage.returncode, usage.stdout) == (2, "")
    assert usage.stderr.count("\n") == 1


def test_console_script_entry_point(config_path: Path, tmp_path: Path) -> None:
    """The `mfa-bridge` entry point in pyproject runs main and exits with its status."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["scripts"]
    assert scripts["mfa-bridge"] == "bridge.cli:main"
    # What pip's console-script wrapper does: sys.exit(<entry point>()).
    wrapper = (
        "import sys; from importlib.metadata import EntryPoint; "
        "sys.exit(EntryPoint('mfa-bridge', 'bridge.cli:main', 'console_scripts').load()())"
    )
    command = [sys.executable, "-c", wrapper]
    assert (
        run_program([*command, "check-config", "--config", str(config_path)], tmp_path).returncode
        == 0
    )
    missing = run_program([*command, "check-config", "--config", "nowhere.yaml"], tmp_path)
    assert missing.returncode == 1
    assert run_program([*command, "user"], tmp_path).returncode == 2


def test_installed_mfa_bridge_command(config_path: Path, tmp_path: Path) -> None:
    """The installed `mfa-bridge` script works (skipped where the project is not installed)."""
    beside = Path(sys.executable).parent / "mfa-bridge"
    script = (
        str(beside)
        if beside.exists()
        else shutil.which("mfa-bridge") or require_binary("mfa-bridge")
    )
    ok = run_program([script, "check-config", "--config", str(config_path)], tmp_path)
    assert (ok.returncode, ok.stdout) == (0, "config OK\n"), ok.stderr
    assert (
        run_program([script, "user", "status", "x", "--config", "no.yaml"], tmp_path).returncode
        == 1
    )
    assert run_program([script], tmp_path).returncode == 2


# --- admin changes are audited (SPEC 12) ------------------------------------------------------


def audit_lines(config_path: Path) -> list[dict[str, Any]]:
    path = Path(config_data(config_path.parent.parent)["log"]["audit"])
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_admin_change_writes_an_audit_line(
    cli: Run, config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """enroll, lock, unlock, reset, import and store restore: one line each (one per user
    for an import), protocol admin, the account behind sudo as the client, states."""
    monkeypatch.setenv("SUDO_USER", "maria")
    assert cli("user", "enroll", "alice").code == 0
    assert cli("user", "lock", "alice").code == 0
    assert cli("user", "unlock", "alice").code == 0
    assert cli("user", "reset", "alice").code == 0
    import_users(cli, tmp_path, f"bob,{SECRET_160}")
    backup = tmp_path / "backup.db"
    assert cli("store", "backup", str(backup)).code == 0
    assert cli("store", "restore", str(backup)).code == 0
    assert cli("user", "status", "alice").code == 0  # a read: no line
    assert cli("user", "delete", "bob").code == 0
    lines = audit_lines(config_path)
    assert [(x["event"], x["user"], x["state_before"], x["state_after"]) for x in lines] == [
        ("admin.enroll", "alice", None, "pending"),
        ("admin.lock", "alice", "pending", "locked"),
        ("admin.unlock", "alice", "locked", "grace"),
        ("admin.reset", "alice", "grace", "grace"),
        ("admin.import", "bob", None, "active"),
        ("admin.restore", "*", None, None),
        ("admin.delete", "bob", "active", None),
    ]
    assert {(x["protocol"], x["client"]) for x in lines} == {("admin", "cli:maria")}
    assert lines[-2]["kept"] == 2 and lines[-2]["source"] == str(backup)
    assert all("secret" not in line for line in lines)


# --- import: formats and overwrites ------------------------------------------------------------


def test_import_reads_otpauth_uris_and_hex_seeds(cli: Run, tmp_path: Path, clock: Clock) -> None:
    """otpauth:// URIs (with the bridge's period, digits and algorithm) and hex: seeds
    give the same keys as their base32; other settings are refused, naming them."""
    key = bytes(range(20))
    b32 = base64.b32encode(key).decode()
    uri = f"otpauth://totp/ACME:alice?secret={b32}&issuer=ACME&period=30&digits=6"
    path = write_csv(
        tmp_path / "users.csv", "username,secret", f"alice,{uri}", f"bob,hex:{key.hex()}"
    )
    assert cli("user", "import", str(path)).code == 0
    for user in ("alice", "bob"):
        view = cli("user", "status", user, "--json").json()
        assert view["state"] == "active"
    for bad, why in (
        (uri.replace("period=30", "period=60"), "period=60"),
        (uri.replace("totp", "hotp", 1), "type hotp"),
        (f"{uri}&algorithm=SHA256", "algorithm=SHA256"),
        ("hex:xyz", "hex"),
    ):
        wrong = write_csv(tmp_path / "wrong.csv", "username,secret", f"carol,{bad}")
        line = assert_one_line_error(cli("user", "import", str(wrong)))
        assert "line 2" in line and why in line, line


def test_import_refuses_to_overwrite_secrets_unless_replace(cli: Run, tmp_path: Path) -> None:
    """A user who has a secret keeps it: the import is refused whole, naming who; with
    --replace it goes through, each user audited."""
    import_users(cli, tmp_path, f"alice,{SECRET_160}")
    again = write_csv(
        tmp_path / "again.csv", "username,secret", f"bob,{SECRET_160_B}", f"alice,{SECRET_160_B}"
    )
    line = assert_one_line_error(cli("user", "import", str(again)))
    assert "1 users have a secret already: alice (line 3)" in line
    assert "--replace" in line
    assert [u["username"] for u in cli("user", "list", "--json").json()] == ["alice"]
    replaced = cli("user", "import", str(again), "--replace")
    assert replaced.code == 0, replaced
    assert sorted(u["username"] for u in cli("user", "list", "--json").json()) == ["alice", "bob"]


def test_delete_forgets_the_record_and_the_next_login_starts_afresh(
    cli: Run, tmp_path: Path, store: Callable[[], SqliteStore]
) -> None:
    """`user delete`: the record is gone (secret, guard, state), the user unknown to the
    bridge; deleting again is an error naming the user."""
    import_users(cli, tmp_path, f"alice,{SECRET_160}")
    result = cli("user", "delete", "alice")
    assert (result.code, result.out) == (0, "alice: forgotten (enroll to set up MFA)\n")
    assert store().get(ALICE.entry_id) is None
    assert cli("user", "list", "--json").json() == []
    again = assert_one_line_error(cli("user", "delete", "alice"))
    assert "alice has no MFA record yet" in again
