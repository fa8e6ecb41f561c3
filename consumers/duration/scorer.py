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
    Event,
    Predictor,
    ScoreResult,
    at,
    check_labels,
    finite_rows,
    in_event_order,
    kept,
    not_scored_failures,
    positions_by_type,
    predict_rows,
    prediction_encoder,
)
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
        start_at, progress_at, others = positions_by_type(events, ("ride_started", "ride_progress"))
        result = ScoreResult(failures=not_scored_failures(events, others, self.scored_event_types))
        started, progress = at(events, start_at), at(events, progress_at)
        start_columns = start_columns_from_events(started)  # type: ignore[arg-type]
        totals = self.at_pickup(start_columns, start_features(start_columns))
        progress_columns = progress_columns_from_events(progress)  # type: ignore[arg-type]
        # (an estimate, or a batch of pickups only, has no progress rows to build features for)
        left = (
            np.maximum(predict_rows(self.progress_model, progress_features(progress_columns)), 0.0)
            if progress
            else np.empty(0)
        )
        start_ok = finite_rows(result, start_at, totals, START_MODEL)
        progress_ok = finite_rows(result, progress_at, left, PROGRESS_MODEL)
        result.failures.sort()  # (in event order, as each was found)
        encoder = prediction_encoder(DurationPrediction)
        total, minutes_left = totals[start_ok], left[progress_ok]
        elapsed = progress_columns.elapsed_seconds[progress_ok]
        at_start = encoder.encode(
            kept(started, start_ok), START_MODEL, self.start_version, produced_at,
            [total, total, np.zeros(len(total))],
        )  # fmt: skip
        on_the_way = encoder.encode(
            kept(progress, progress_ok), PROGRESS_MODEL, self.progress_version, produced_at,
            [elapsed / 60.0 + minutes_left, minutes_left, elapsed],
        )  # fmt: skip
        result.predictions = in_event_order(
            [(kept(start_at, start_ok), at_start), (kept(progress_at, progress_ok), on_the_way)]
        )
        return result


def load_scorer(models_dir: Path, versions: Mapping[str, str] | None = None) -> TripDurationScorer:
    """The champions, or the registry versions `versions` names."""
    pinned = versions or {}
    start = load_compiled_model(models_dir, START_MODEL, START_FEATURES, pinned.get(START_MODEL))
    progress = load_compiled_model(models_dir, PROGRESS_MODEL, PROGRESS_FEATURES, pinned.get(PROGRESS_MODEL))
    return TripDurationScorer(start.model, start.version, progress.model, progress.version)
