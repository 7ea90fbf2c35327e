"""The README's five-minute tour, run as written: the demo started by the README's first
command, then every `$ ` command of the tour in order, their output checked against
what the README shows. Only the key and the code the README cannot know are filled in."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
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


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def shown(expected: list[str], output: str) -> None:
    """Every line the README shows is in the output (`...` stands for anything)."""
    for line in expected:
        for piece in (p.strip() for p in line.split("...")):
            assert piece in output, f"{piece!r} not in:\n{output}"


def test_the_readme_tour_works_as_written(tmp_path: Path) -> None:
    require_binary("radtest")
    (tmp_path / "config").mkdir()
    for name in ("demo.yaml", "demo.ldif"):
        shutil.copy(REPO / "config" / name, tmp_path / "config" / name)
    (tmp_path / ".venv").symlink_to(sys.prefix)  # where the first command put the project
    first = section("Try it", "Test it")
    (line,) = re.findall(r"```sh\n(.*?)\n```", first, re.DOTALL)
    start = next(part for part in line.split(" && ") if part.startswith(".venv/bin/mfa-bridge run"))
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            ["bash", "-c", f"exec {start}"],
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
        while "Received Access-Accept" not in run(first_radtest, tmp_path).stdout:
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
                code = run(tip.group(1).replace("KEY", key), tmp_path).stdout.strip()
                assert re.fullmatch(r"\d{6}", code)
                command = written.replace("123456", code)
            result = run(command, tmp_path)
            if not command.startswith("radtest"):  # radtest exits 1 on a challenge
                assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
            shown(expected, result.stdout)
            if " user enroll " in command:
                (key,) = re.findall(r"^key: (\w+)$", result.stdout, re.MULTILINE)
        assert code, "the tour logs in with a code"
        exempt = run(dave.group(1), tmp_path)
        assert "Received Access-Accept" in exempt.stdout, exempt.stdout
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(20)
