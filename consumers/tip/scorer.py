"""The tip service's pure scoring step: ride_started events → expected recorded tip (USD)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from consumers.compiled import load_compiled_model
from consumers.features import START_FEATURES, StartColumns
from consumers.scoring import Predictor, StartScorer, tip_where_recorded
from schemas.predictions import TipPrediction

MODEL_NAME = "tip"


def recorded_tip(predicted_tip: np.ndarray, columns: StartColumns) -> np.ndarray:
    """The card-tip model's estimate, 0 where tips go unrecorded (cash, no charge, ...)."""
    return tip_where_recorded(predicted_tip, columns.payment_type)


def tip_scorer(model: Predictor, model_version: str) -> StartScorer:
    """Predicts the tip the meter will record."""
    return StartScorer(TipPrediction, MODEL_NAME, "predicted_tip_usd", recorded_tip, model, model_version)


def load_scorer(models_dir: Path, versions: Mapping[str, str] | None = None) -> StartScorer:
    """The champion, or the registry version `versions` names."""
    loaded = load_compiled_model(models_dir, MODEL_NAME, START_FEATURES, (versions or {}).get(MODEL_NAME))
    return tip_scorer(loaded.model, loaded.version)
