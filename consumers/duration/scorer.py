"""The duration service's pure scoring step.

    ride_started  → model "duration":         the whole trip's minutes, estimated at pickup
    ride_progress → model "dynamic_duration": minutes left from this event; total = elapsed + left

Predictions come out in the order of the events, so a ride's start estimate never follows its updates on
the output topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from consumers.compiled import load_compiled_model
from consumers.features import (
    PROGRESS_FEATURES,
    START_FEATURES,
    StartColumns,
    progress_columns_from_events,
    progress_features,
    start_columns_from_events,
    start_features,
)
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
from schemas.events import RideProgress, RideStarted
from schemas.predictions import DurationPrediction

START_MODEL = "duration"
PROGRESS_MODEL = "dynamic_duration"


class TripDurationScorer:
    scored_event_types: frozenset[str] = frozenset({"ride_started", "ride_progress"})

    def __init__(
        self, start_model: Predictor, start_version: str, progress_model: Predictor, progress_version: str
    ) -> None:
        self.start_model = start_model
        self.start_version = start_version
        self.progress_model = progress_model
        self.progress_version = progress_version
        check_labels(DurationPrediction, START_MODEL, start_version)
        check_labels(DurationPrediction, PROGRESS_MODEL, progress_version)
        # One label for the service's metrics; each prediction carries the model that made it.
        self.model_name = f"{START_MODEL}+{PROGRESS_MODEL}"
        self.model_version = f"{start_version}+{progress_version}"

    @property
    def pickup_model(self) -> tuple[str, str]:
        return START_MODEL, self.start_version

    def at_pickup(self, columns: StartColumns, features: np.ndarray) -> np.ndarray:
        """The whole trip's minutes; np.maximum keeps NaN, so a broken row is still reported, not clipped."""
        return np.asarray(np.maximum(predict_rows(self.start_model, features), 0.0))

    def score(self, events: Sequence[Event], produced_at: datetime) -> ScoreResult:
        result = ScoreResult(failures=not_scored_failures(events, self.scored_event_types))
        started = [e for e in events if isinstance(e, RideStarted)]
        progress = [e for e in events if isinstance(e, RideProgress)]
        start_columns = start_columns_from_events(started)
        totals = self.at_pickup(start_columns, start_features(start_columns))
        # (an estimate, or a batch of pickups only, has no progress rows to build features for)
        left = (
            np.maximum(
                predict_rows(self.progress_model, progress_features(progress_columns_from_events(progress))),
                0.0,
            )
            if progress
            else np.empty(0)
        )

        def start_prediction(event: RideStarted, minutes: float) -> EncodedPrediction:
            return encode_prediction(
                DurationPrediction,
                event,
                START_MODEL,
                self.start_version,
                produced_at,
                predicted_duration_minutes=minutes,
                predicted_remaining_minutes=minutes,
                elapsed_seconds=0.0,
            )

        def progress_prediction(event: RideProgress, minutes_left: float) -> EncodedPrediction:
            return encode_prediction(
                DurationPrediction,
                event,
                PROGRESS_MODEL,
                self.progress_version,
                produced_at,
                predicted_duration_minutes=event.elapsed_seconds / 60.0 + minutes_left,
                predicted_remaining_minutes=minutes_left,
                elapsed_seconds=event.elapsed_seconds,
            )

        next_total, next_left = iter(totals.tolist()), iter(left.tolist())
        for position, event in enumerate(events):
            if isinstance(event, RideStarted):
                record_outcome(result, position, event, next(next_total), START_MODEL, start_prediction)
            elif isinstance(event, RideProgress):
                record_outcome(result, position, event, next(next_left), PROGRESS_MODEL, progress_prediction)
        return result


def load_scorer(models_dir: Path, versions: Mapping[str, str] | None = None) -> TripDurationScorer:
    """The champions, or the registry versions `versions` names."""
    pinned = versions or {}
    start = load_compiled_model(models_dir, START_MODEL, START_FEATURES, pinned.get(START_MODEL))
    progress = load_compiled_model(models_dir, PROGRESS_MODEL, PROGRESS_FEATURES, pinned.get(PROGRESS_MODEL))
    return TripDurationScorer(start.model, start.version, progress.model, progress.version)
