"""The cost service's pure scoring step: ride_started events → predicted total charged (USD)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from consumers.features import START_FEATURES, start_columns_from_events, start_features
from consumers.scoring import (
    EncodedPrediction,
    Event,
    Predictor,
    ScoreResult,
    check_labels,
    encode_prediction,
    not_scored_failures,
    predict_rows,
    record_outcome,
)
from schemas.events import RideStarted
from schemas.predictions import CostPrediction
from shared.models import load_model

MODEL_NAME = "cost"


class CostScorer:
    """Predicts the ride's total_amount (fare, surcharges, tolls and the recorded tip), never below 0."""

    model_name = MODEL_NAME
    scored_event_types: frozenset[str] = frozenset({"ride_started"})

    def __init__(self, model: Predictor, model_version: str) -> None:
        self.model = model
        self.model_version = model_version
        check_labels(CostPrediction, self.model_name, model_version)

    def score(self, events: Sequence[Event], produced_at: datetime) -> ScoreResult:
        result = ScoreResult(failures=not_scored_failures(events, self.scored_event_types))
        started = [e for e in events if isinstance(e, RideStarted)]
        # np.maximum keeps NaN, so a broken row is still reported rather than clipped to 0.
        totals = np.maximum(predict_rows(self.model, start_features(start_columns_from_events(started))), 0.0)

        def prediction(event: Event, total: float) -> EncodedPrediction:
            return encode_prediction(CostPrediction, event, self.model_name, self.model_version, produced_at,
                                     predicted_total_usd=total)

        for event, total in zip(started, totals.tolist()):
            record_outcome(result, event, total, self.model_name, prediction)
        return result


def load_scorer(models_dir: Path) -> CostScorer:
    loaded = load_model(models_dir, MODEL_NAME, START_FEATURES)
    return CostScorer(loaded.model, loaded.version)
