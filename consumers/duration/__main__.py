"""`python -m consumers.duration`: the dynamic-duration service (settings from DURATION_* env)."""

from __future__ import annotations

from typing import Any

from consumers.duration.scorer import load_scorer
from consumers.duration.settings import DurationSettings
from shared.runner import RunStats
from shared.service import run_service
from shared.settings import KafkaSettings


def serve(overrides: dict[str, Any] | None = None, kafka: KafkaSettings | None = None) -> RunStats:
    """Settings → model → clients → runner → run. `overrides` are CLI flags that beat the environment."""
    settings = DurationSettings(**(overrides or {}))
    scorer = load_scorer(settings.models_dir)
    return run_service(settings, kafka or KafkaSettings(), scorer)


if __name__ == "__main__":
    from shared.cli import run_guarded

    run_guarded(serve)
