"""Builders of valid contract objects for tests: one place that knows a plausible ride."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.events import RideCompleted, RideProgress, RideStarted

PICKUP = datetime(2021, 1, 15, 8, 30, tzinfo=UTC)


def ride_started(ride_id: str = "r-1", **overrides: Any) -> RideStarted:
    fields: dict[str, Any] = {
        "event_id": f"{ride_id}:0",
        "ride_id": ride_id,
        "event_time": PICKUP,
        "pickup_time": PICKUP,
        "pickup_zone": 74,
        "dropoff_zone": 75,
        "trip_distance_miles": 2.4,
        "passenger_count": 1,
        "payment_type": 1,
        "vendor_id": 2,
        "rate_code": 1,
        "trip_type": 1,
    }
    return RideStarted(**{**fields, **overrides})


def ride_progress(
    ride_id: str = "r-1", elapsed_s: float = 300.0, covered: float = 1.0, **overrides: Any
) -> RideProgress:
    fields: dict[str, Any] = {
        "event_id": f"{ride_id}:1",
        "ride_id": ride_id,
        "event_time": PICKUP + timedelta(seconds=elapsed_s),
        "pickup_time": PICKUP,
        "pickup_zone": 74,
        "dropoff_zone": 75,
        "trip_distance_miles": 2.4,
        "elapsed_seconds": elapsed_s,
        "distance_covered_miles": covered,
    }
    return RideProgress(**{**fields, **overrides})


def ride_completed(ride_id: str = "r-1", minutes: float = 12.0, **overrides: Any) -> RideCompleted:
    dropoff = PICKUP + timedelta(minutes=minutes)
    fields: dict[str, Any] = {
        "event_id": f"{ride_id}:9",
        "ride_id": ride_id,
        "event_time": dropoff,
        "pickup_time": PICKUP,
        "dropoff_time": dropoff,
        "pickup_zone": 74,
        "dropoff_zone": 75,
        "duration_minutes": minutes,
        "trip_distance_miles": 2.4,
        "payment_type": 1,
        "fare_amount_usd": 11.5,
        "tip_amount_usd": 2.5,
        "total_amount_usd": 15.3,
    }
    return RideCompleted(**{**fields, **overrides})
