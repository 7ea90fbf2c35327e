"""The README's five-minute tour, run as written: the demo started by the README's first
command, then every `$ ` command of the tour in order, their output checked against
what the README shows. Only the key and the code the README cannot know are filled in.
It runs twice: as root, and as an account without privileges (the README is written for
"a user who may use sudo"; the tour itself needs no sudo)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.harness import REPO

pytestmark = pytest.mark.integration

README = (REPO / "README.md").read_text(encoding="utf-8")


def section(title: str, until: str) -> str:
    start = README.index(title)
    return README[start : README.index(until, start)]


def commands_with_output(text: str) -> list[tuple[str, list[str]]]:
    """Each `$ command` of the code blocks in `text`, with the lines the README shows
    after it (up to the next command or the block's end)."""
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            stripped = line.strip()
            if stripped.startswith("$ "):
                steps.append((stripped[2:], []))
            elif steps and stripped:
                steps[-1][1].append(stripped)
    return steps


UNPRIVILEGED = "nobody"
CHECKOUT = ("pyproject.toml", "README.md", "LICENSE", "bridge", "config")


def shell(command: str, account: str) -> list[str]:
    if account == "root":
        return ["bash", "-c", command]
    # Debian's own PATH, as a login would give: not this test's virtualenv.
    return ["runuser", "-u", account, "--", "env", "PATH=/usr/bin:/bin", "bash", "-c", command]


def run(
    command: str, cwd: Path, account: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        shell(command, account),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def shown(expected: list[str], output: str) -> None:
    """Every line the README shows is in the output (`...` stands for anything)."""
    for line in expected:
        for piece in (p.strip() for p in line.split("...")):
            assert piece in output, f"{piece!r} not in:\n{output}"


@pytest.fixture(params=["root", UNPRIVILEGED])
def account(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if os.geteuid() != 0:
        message = "switching accounts needs root; run as it is, this run is unprivileged"
        if os.environ.get("CI"):  # CI runs as root: never skip there
            pytest.fail(message)
        pytest.skip(message)
    return name


@pytest.fixture
def workdir(account: str) -> Iterator[Path]:
    """A checkout's worth of files, owned by the account (pytest's own tmp_path is 0700
    root's, out of an unprivileged account's reach)."""
    path = Path(tempfile.mkdtemp(prefix="readme-tour-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def install(account: str, tmp_path: Path, setup: str) -> None:
    """Put the demo where the README's first command would, for the account."""
    if account == "root":
        (tmp_path / "config").mkdir()
        for name in ("demo.yaml", "demo.ldif"):
            shutil.copy(REPO / "config" / name, tmp_path / "config" / name)
        (tmp_path / ".venv").symlink_to(sys.prefix)  # where the first command put the project
        return
    # The checkout, the account's own, and the first command's virtualenv made by it
    # from Debian's python3. Only the packages (sudo apt-get) are taken as installed.
    for name in CHECKOUT:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(REPO / name, tmp_path / name, ignore=ignore)
        else:
            shutil.copy(REPO / name, tmp_path / name)
    entry = pwd.getpwnam(account)
    for path in (tmp_path, *tmp_path.rglob("*")):
        os.lchown(path, entry.pw_uid, entry.pw_gid)
    made = run(setup, tmp_path, account, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr


def test_the_readme_tour_works_as_written(account: str, workdir: Path) -> None:
    require_binary("radtest")
    tmp_path = workdir
    first = section("Try it", "Test it")
    (line,) = re.findall(r"```sh\n(.*?)\n```", first, re.DOTALL)
    parts = line.split(" && ")
    start = next(part for part in parts if part.startswith(".venv/bin/mfa-bridge run"))
    setup = [p for p in parts if not p.startswith("$(command -v sudo)") and p != start]
    install(account, tmp_path, " && ".join(setup))
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            shell(f"exec {start}", account),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        tour = section("## A five-minute tour", "## How a login is decided")
        steps = commands_with_output(tour)
        first_radtest = steps[0][0]
        deadline = time.monotonic() + 20
        while "Received Access-Accept" not in run(first_radtest, tmp_path, account).stdout:
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the demo did not answer radtest"
            time.sleep(0.3)
        tip = re.search(r"`(\.venv/bin/python -c '[^`]*' KEY)`", tour)
        assert tip is not None, "the no-phone tip"
        dave = re.search(r"`(radtest dave [^`]*)`", tour)
        assert dave is not None
        key = code = ""
        for written, expected in steps:
            command = written
            if "123456" in written:  # "the code shown": the app's code, now
                code = run(tip.group(1).replace("KEY", key), tmp_path, account).stdout.strip()
                assert re.fullmatch(r"\d{6}", code)
                command = written.replace("123456", code)
            result = run(command, tmp_path, account)
            if not command.startswith("radtest"):  # radtest exits 1 on a challenge
                assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
            shown(expected, result.stdout)
            if " user enroll " in command:
                (key,) = re.findall(r"^key: (\w+)$", result.stdout, re.MULTILINE)
        assert code, "the tour logs in with a code"
        exempt = run(dave.group(1), tmp_path, account)
        assert "Received Access-Accept" in exempt.stdout, exempt.stdout
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(20)
