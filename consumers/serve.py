"""Run one service of the registry: settings → model → clients → runner → run.

`python -m consumers.<name>` and `ridestream consume <name>` both end here; nothing on this path imports the
CLI libraries or the operator's stack, so a scoring process loads only what it runs.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from consumers.registry import ServiceSpec, service_spec
from shared.lifecycle import run_guarded
from shared.runner import RunStats
from shared.service import run_service
from shared.settings import KafkaSettings


def serve(
    spec: ServiceSpec,
    overrides: Mapping[str, Any] | None = None,
    kafka: KafkaSettings | None = None,
    stop: threading.Event | None = None,
) -> RunStats:
    """`overrides` are CLI flags that beat the environment. Without `stop`, SIGTERM/SIGINT stop the run."""
    settings = spec.settings(overrides)
    scorer = spec.load_scorer(settings.models_dir)
    return run_service(settings, kafka or KafkaSettings(), scorer, stop)


def main(name: str) -> None:
    """The `python -m consumers.<name>` entry point: configured by environment only."""
    spec = service_spec(name)
    run_guarded(lambda: serve(spec))
