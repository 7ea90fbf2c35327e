"""A bounded run of each fuzzer in fuzz/ (atheris): CI's share of the fuzzing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
RUNS = 30_000


@pytest.mark.parametrize(
    ("harness", "seeds"), [("radius.py", "radius"), ("ldap_stream.py", "ldap")]
)
def test_a_bounded_fuzzing_run_breaks_no_invariant(
    harness: str, seeds: str, tmp_path: Path
) -> None:
    """30,000 inputs grown from the seeds: no invariant broken, nothing but the allowed errors."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            str(FUZZ / harness),
            f"-runs={RUNS}",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
            str(FUZZ / "seeds" / seeds),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Done {RUNS} runs" in result.stderr
    assert not list(tmp_path.glob("crash-*"))
