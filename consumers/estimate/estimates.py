"""Ride requests → estimates, pure: each request becomes the `ride_started` event the backend will publish
for it, and goes through the streaming services' own scorers. So for the same ride and model versions the
estimate is the stream's start-of-ride prediction, number for number.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

from schemas.events import RideStarted
from schemas.http import Estimate, Figure, RideRequest
from shared.protocols import Scorer

# The service whose start prediction fills each figure, and the prediction field it comes from.
FIGURES: dict[str, tuple[str, str]] = {
    "duration_minutes": ("duration", "predicted_duration_minutes"),
    "tip_usd": ("tip", "predicted_tip_usd"),
    "total_usd": ("cost", "predicted_total_usd"),
}
SERVICES: tuple[str, ...] = tuple(service for service, _field in FIGURES.values())


class Unscoreable(NamedTuple):
    """A request that validated but that a model could not score (its features give no number)."""

    position: int
    service: str
    reason: str


def started_event(request: RideRequest, ride_id: str) -> RideStarted:
    return RideStarted(
        event_id=f"estimate-{uuid.uuid4().hex}",
        ride_id=ride_id,
        event_time=request.pickup_time,
        pickup_time=request.pickup_time,
        pickup_zone=request.pickup_zone,
        dropoff_zone=request.dropoff_zone,
        trip_distance_miles=request.trip_distance_miles,
        passenger_count=request.passenger_count,
        payment_type=request.payment_type,
        vendor_id=request.vendor_id,
        rate_code=request.rate_code,
        trip_type=request.trip_type,
    )


def started_events(requests: Sequence[RideRequest]) -> list[RideStarted]:
    return [started_event(r, r.ride_id or f"ride-{uuid.uuid4().hex}") for r in requests]


def estimate(
    events: Sequence[RideStarted], scorers: Mapping[str, Scorer], produced_at: datetime
) -> list[Estimate | Unscoreable]:
    """One vectorized score per service over all the rides (of one request, or of many batched together);
    per ride its estimate, or why a model could not score it."""
    figures: dict[str, dict[str, Figure]] = {}
    refused: dict[int, Unscoreable] = {}
    for figure, (service, field) in FIGURES.items():
        result = scorers[service].score(events, produced_at)
        for position, reason in result.failures:
            refused.setdefault(position, Unscoreable(position, service, reason))
        figures[figure] = {
            body["source_event_id"]: Figure(
                value=body[field], model_name=body["model_name"], model_version=body["model_version"]
            )
            for body in (json.loads(p.value) for p in result.predictions)
        }
    return [
        refused.get(i)
        or Estimate(
            ride_id=event.ride_id,
            duration_minutes=figures["duration_minutes"][event.event_id],
            tip_usd=figures["tip_usd"][event.event_id],
            total_usd=figures["total_usd"][event.event_id],
        )
        for i, event in enumerate(events)
    ]
