"""Each default is defined once; the settings, the CLI help and README's settings table show that number."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from consumers.registry import SERVICES
from shared.guarantees import COMMIT_INTERVAL_S, COMMIT_MAX_MESSAGES
from shared.runner import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BATCH_TIMEOUT_S,
    DEFAULT_BROKER_LOSS_TIMEOUT_S,
    RunnerConfig,
)
from stack.cli import app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def readme_default(setting: str) -> str:
    """The default column of README's settings-table row that names `setting`."""
    row = next(line for line in README.splitlines() if line.startswith("|") and f"`{setting}`" in line)
    return row.split("|")[2].strip()


def test_every_service_and_the_runner_share_one_set_of_loop_defaults() -> None:
    runner = RunnerConfig(service="x", output_topic="o", dlq_topic="d")
    for spec in SERVICES:
        settings = spec.settings({})
        assert (settings.batch_size, settings.batch_timeout_s) == (
            DEFAULT_BATCH_SIZE,
            DEFAULT_BATCH_TIMEOUT_S,
        )
        assert settings.broker_loss_timeout_s == DEFAULT_BROKER_LOSS_TIMEOUT_S
        assert (settings.commit_max_messages, settings.commit_interval_s) == (
            COMMIT_MAX_MESSAGES,
            COMMIT_INTERVAL_S,
        )
        assert settings.runner_config().batch_size == runner.batch_size == DEFAULT_BATCH_SIZE


def test_readme_shows_the_defaults_the_code_has() -> None:
    assert readme_default("BATCH_SIZE") == f"{DEFAULT_BATCH_SIZE}, {DEFAULT_BATCH_TIMEOUT_S}"
    assert readme_default("COMMIT_MAX_MESSAGES") == f"{COMMIT_MAX_MESSAGES}, {COMMIT_INTERVAL_S}"
    assert readme_default("BROKER_LOSS_TIMEOUT_S") == f"{DEFAULT_BROKER_LOSS_TIMEOUT_S:g}"


def test_the_cli_help_shows_the_default_batch_size() -> None:
    result = CliRunner().invoke(app, ["consume", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert re.search(rf"default\s+{DEFAULT_BATCH_SIZE}\)", result.output), result.output
