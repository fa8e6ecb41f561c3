"""Every way scripts start ridestream still starts it: the `ridestream` CLI and the module names they use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["-m", "stack.cli", "--help"], "consume"),
        (["-m", "shared.cli", "--help"], "consume"),  # the CLI's module name before stack/ existed
        (["-m", "producer", "--help"], "--rides"),  # = ridestream produce
        (["-m", "stack.faust_engine", "--help"], "--batched"),
        (["-m", "shared.faust_engine", "--help"], "--batched"),  # the Faust engine's old module name
    ],
)
def test_an_entry_point_answers_help(command: list[str], expected: str) -> None:
    if "faust_engine" in command[1]:
        pytest.importorskip("faust")
    done = subprocess.run(
        [sys.executable, *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected in done.stdout


def test_a_service_entry_point_reports_bad_settings_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "consumers.tip"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "TIP_BATCH_SIZE": "0", "KAFKA_BOOTSTRAP_SERVERS": "x:1"},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("ridestream: invalid settings: batch_size")
