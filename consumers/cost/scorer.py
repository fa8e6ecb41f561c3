"""The cost service's pure scoring step: ride_started events → predicted total charged (USD)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from consumers.compiled import load_compiled_model
from consumers.features import START_FEATURES, StartColumns
from consumers.scoring import Predictor, StartScorer
from schemas.predictions import CostPrediction

MODEL_NAME = "cost"


def non_negative_total(predicted_total: np.ndarray, _columns: StartColumns) -> np.ndarray:
    """The ride's total_amount (fare, surcharges, tolls and the recorded tip), never below 0. np.maximum
    keeps NaN, so a broken row is still reported rather than clipped to 0."""
    total: np.ndarray = np.maximum(predicted_total, 0.0)
    return total


def cost_scorer(model: Predictor, model_version: str) -> StartScorer:
    """Predicts the ride's total charge."""
    return StartScorer(
        CostPrediction, MODEL_NAME, "predicted_total_usd", non_negative_total, model, model_version
    )


def load_scorer(models_dir: Path, versions: Mapping[str, str] | None = None) -> StartScorer:
    """The champion, or the registry version `versions` names."""
    loaded = load_compiled_model(models_dir, MODEL_NAME, START_FEATURES, (versions or {}).get(MODEL_NAME))
    return cost_scorer(loaded.model, loaded.version)
