"""The shipped Kubernetes manifests run commands and flags the CLI has (outside scripts copy them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer.main
import yaml

from stack.cli import app

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def command_of(words: list[str]) -> Any:
    """The click command `ridestream <words>` runs (typer vendors click: looked up by its attributes)."""
    command: Any = typer.main.get_command(app)
    for word in words:
        assert hasattr(command, "commands"), f"{word!r} follows a command that takes no subcommand"
        assert word in command.commands, f"ridestream has no command {word!r} there"
        command = command.commands[word]
    return command


def test_the_batch_cronjob_runs_the_batch_score_command_with_flags_it_takes() -> None:
    job = yaml.safe_load((MANIFESTS / "batch-cronjob.yaml").read_text())
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][0] == "ridestream"
    command = command_of(container["command"][1:])
    flags = {flag for param in command.params for flag in getattr(param, "opts", [])}
    given = [arg for arg in container["args"] if arg.startswith("--")]
    assert set(given) <= flags, f"flags the command does not take: {set(given) - flags}"
    # The schedule's window must come from the clock, so the command never changes between runs.
    assert "--window" in given and "--since" not in given
