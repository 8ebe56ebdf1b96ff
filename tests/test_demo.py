"""The main job: the demo runs end to end and is deterministic for a seed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "demo.py"


def run_demo(db: Path, seed: int) -> str:
    done = subprocess.run(
        [sys.executable, str(DEMO), "--db", str(db), "--seed", str(seed), "--companies", "60"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\n", 1)[1]  # past the title line, which names the file


@pytest.mark.slow
def test_the_demo_runs_the_whole_pipeline_and_is_deterministic(tmp_path: Path) -> None:
    first = run_demo(tmp_path / "a.db", seed=3)
    again = run_demo(tmp_path / "b.db", seed=3)
    other = run_demo(tmp_path / "c.db", seed=4)
    assert first == again
    assert first != other
    for line in ("Notion sync: 15 companies", "Collectors:", "Gate:", "Processing", "History of", "Hash chain: OK"):
        assert line in first
