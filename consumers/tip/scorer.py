"""The tip service's pure scoring step: ride_started events → expected recorded tip (USD)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

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
    tip_where_recorded,
)
from schemas.events import RideStarted
from schemas.predictions import TipPrediction
from shared.models import load_model

MODEL_NAME = "tip"


class TipScorer:
    """Predicts the tip the meter will record: the card-tip model's estimate, 0 where tips go unrecorded."""

    model_name = MODEL_NAME
    scored_event_types: frozenset[str] = frozenset({"ride_started"})

    def __init__(self, model: Predictor, model_version: str) -> None:
        self.model = model
        self.model_version = model_version
        check_labels(TipPrediction, self.model_name, model_version)

    def score(self, events: Sequence[Event], produced_at: datetime) -> ScoreResult:
        result = ScoreResult(failures=not_scored_failures(events, self.scored_event_types))
        started = [e for e in events if isinstance(e, RideStarted)]
        columns = start_columns_from_events(started)
        tips = tip_where_recorded(predict_rows(self.model, start_features(columns)), columns.payment_type)

        def prediction(event: Event, tip: float) -> EncodedPrediction:
            return encode_prediction(TipPrediction, event, self.model_name, self.model_version, produced_at,
                                     predicted_tip_usd=tip)

        for event, tip in zip(started, tips.tolist()):
            record_outcome(result, event, tip, self.model_name, prediction)
        return result


def load_scorer(models_dir: Path) -> TipScorer:
    loaded = load_model(models_dir, MODEL_NAME, START_FEATURES)
    return TipScorer(loaded.model, loaded.version)
