"""Predictions the scoring services publish to `predictions.<service>`, keyed by ride_id."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import Contract, Identifier, UtcDatetime


class _Prediction(Contract):
    schema_version: Literal[1] = 1
    ride_id: Identifier
    source_event_id: Identifier
    source_event_type: Literal["ride_started", "ride_progress"]
    source_event_time: UtcDatetime = Field(description="event_time of the scored event: latency starts here")
    model_name: str = Field(min_length=1, max_length=64)
    model_version: str = Field(min_length=1, max_length=64)
    produced_at: UtcDatetime
    # Only during a rollout that shows users both versions (canary, A/B); absent otherwise, so the wire of a
    # fleet without a rollout is unchanged. Also in the `ridestream.variant` header.
    variant: Literal["champion", "challenger"] | None = Field(
        default=None, exclude_if=lambda v: v is None, description="which side of a rollout made it"
    )


class DurationPrediction(_Prediction):
    """Trip duration: the initial estimate at ride start, then updated totals as the ride progresses."""

    prediction_type: Literal["duration"] = "duration"
    predicted_duration_minutes: float = Field(ge=0, allow_inf_nan=False, description="total trip time")
    predicted_remaining_minutes: float = Field(
        ge=0, allow_inf_nan=False, description="time left from event_time"
    )
    elapsed_seconds: float = Field(ge=0, allow_inf_nan=False, description="0 at ride start")


class TipPrediction(_Prediction):
    prediction_type: Literal["tip"] = "tip"
    predicted_tip_usd: float = Field(ge=0, allow_inf_nan=False)


class CostPrediction(_Prediction):
    prediction_type: Literal["cost"] = "cost"
    predicted_total_usd: float = Field(ge=0, allow_inf_nan=False)


Prediction = DurationPrediction | TipPrediction | CostPrediction
