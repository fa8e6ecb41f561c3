"""Integration fixtures beyond the broker: trained model artifacts, shared by every fleet test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models trained once per session on synthetic rides (no data files needed)."""
    from consumers.training import train_models
    from producer.synthetic import synthesize_trips

    models_dir = tmp_path_factory.mktemp("models")
    train_models(synthesize_trips(20_000, seed=3).trips, models_dir)
    return models_dir
