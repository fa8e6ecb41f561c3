"""Integration fixtures beyond the broker: trained model artifacts, shared by every fleet test, and the
registry and controller of the rollout tests."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.integration.topics import REPO


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models trained once per session on synthetic rides (no data files needed)."""
    from consumers.training import train_models
    from producer.synthetic import synthesize_trips

    models_dir = tmp_path_factory.mktemp("models")
    train_models(synthesize_trips(20_000, seed=3).trips, models_dir)
    return models_dir


@pytest.fixture(scope="session")
def registry_with_challengers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cost v1 the champion, v2 another training run, v3 fit on shuffled targets (worthless). Trained once
    per session: each test that moves an alias puts cost's champion back to v1 first."""
    from consumers.training import train_models
    from producer.synthetic import synthesize_trips

    models = tmp_path_factory.mktemp("canary-registry")
    train_models(synthesize_trips(6000, seed=41).trips, models)
    train_models(synthesize_trips(6000, seed=42).trips, models, only=["cost"])
    shuffled = synthesize_trips(6000, seed=43).trips
    shuffled["total_amount_usd"] = np.random.default_rng(0).permutation(
        shuffled["total_amount_usd"].to_numpy()
    )
    train_models(shuffled, models, only=["cost"])
    return models


@pytest.fixture
def controller(
    kafka_bootstrap: str, registry_with_challengers: Path, tmp_path: Path
) -> Iterator[dict[str, str]]:
    names = {
        "control": f"control-{uuid.uuid4().hex[:10]}",
        "evaluations": f"evaluations-{uuid.uuid4().hex[:10]}",
        "evaluator_group": f"test-evaluator-{uuid.uuid4().hex[:6]}",
    }
    log = (tmp_path / "controller.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "stack.cli", "deploy", "controller",
            "--models", str(registry_with_challengers), "-b", kafka_bootstrap,
            "--control-topic", names["control"], "--evaluations-topic", names["evaluations"],
            "--evaluator-group", names["evaluator_group"], "--interval", "1",
            "--group", f"test-controller-{uuid.uuid4().hex[:6]}",
        ],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        yield {**names, "log": str(tmp_path / "controller.log")}
    finally:
        process.terminate()
        process.wait(30)
        log.close()
