"""Ride events that the TaxiApp backend publishes to `rides.events`, keyed by ride_id.

A ride is: one `ride_started` at pickup, `ride_progress` events while it runs, one `ride_completed` at
dropoff. Each progress event repeats the ride's start features so any consumer instance can score it
without per-ride state.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, TypeAdapter, model_validator

from schemas.base import MAX_TRIP_MILES, Contract, Identifier, Miles, Usd, UtcDatetime, ZoneId

# A ride longer than a day is a stuck meter, not a ride.
MAX_RIDE_SECONDS = 24 * 3600
# Covered distance may exceed the estimate a little (detours), not without bound.
PROGRESS_DISTANCE_SLACK = 1.10

PaymentType = Annotated[
    int, Field(ge=1, le=6, description="1 card, 2 cash, 3 no charge, 4 dispute, 5 unknown, 6 voided")
]
RateCode = Annotated[
    int,
    Field(ge=1, le=6, description="1 standard, 2 JFK, 3 Newark, 4 Nassau/Westchester, 5 negotiated, 6 group"),
]
TripType = Annotated[int, Field(ge=1, le=2, description="1 street hail, 2 dispatch")]
VendorId = Annotated[int, Field(ge=1, le=6, description="TLC LPEP/TPEP provider id")]
PassengerCount = Annotated[int, Field(ge=0, le=9)]


class _RideEvent(Contract):
    # Declared first so it leads the JSON; each subclass narrows it to its own Literal (the discriminator).
    event_type: str
    schema_version: Literal[1] = Field(default=1, description="bumped on any incompatible change")
    event_id: Identifier
    ride_id: Identifier
    event_time: UtcDatetime
    pickup_time: UtcDatetime
    pickup_zone: ZoneId
    dropoff_zone: ZoneId

    @model_validator(mode="after")
    def _not_before_pickup(self) -> Self:
        if self.event_time < self.pickup_time:
            raise ValueError(f"event_time {self.event_time} is before pickup_time {self.pickup_time}")
        return self


class RideStarted(_RideEvent):
    """The meter started. Carries everything the start-of-ride models use."""

    event_type: Literal["ride_started"] = "ride_started"
    trip_distance_miles: Miles = Field(description="estimated trip distance (the route planner's), miles")
    passenger_count: PassengerCount
    payment_type: PaymentType
    vendor_id: VendorId
    rate_code: RateCode
    trip_type: TripType


class RideProgress(_RideEvent):
    """The ride is under way: what is known so far."""

    event_type: Literal["ride_progress"] = "ride_progress"
    trip_distance_miles: Miles = Field(description="the estimated trip distance announced at ride start")
    elapsed_seconds: float = Field(ge=0, le=MAX_RIDE_SECONDS, allow_inf_nan=False)
    distance_covered_miles: Miles

    @model_validator(mode="after")
    def _within_trip(self) -> Self:
        limit = max(self.trip_distance_miles * PROGRESS_DISTANCE_SLACK, self.trip_distance_miles + 0.1)
        if self.distance_covered_miles > limit:
            raise ValueError(
                f"distance_covered_miles {self.distance_covered_miles} is beyond the trip "
                f"(estimated {self.trip_distance_miles} miles)"
            )
        return self


class RideCompleted(_RideEvent):
    """The meter stopped: the ground truth that lets the models be measured live."""

    event_type: Literal["ride_completed"] = "ride_completed"
    dropoff_time: UtcDatetime
    duration_minutes: float = Field(gt=0, le=MAX_RIDE_SECONDS / 60, allow_inf_nan=False)
    trip_distance_miles: Miles = Field(description="distance actually driven, miles")
    payment_type: PaymentType
    fare_amount_usd: Usd
    tip_amount_usd: Usd
    total_amount_usd: Usd

    @model_validator(mode="after")
    def _dropoff_after_pickup(self) -> Self:
        if self.dropoff_time <= self.pickup_time:
            raise ValueError(f"dropoff_time {self.dropoff_time} is not after pickup_time {self.pickup_time}")
        return self


RideEvent = Annotated[RideStarted | RideProgress | RideCompleted, Field(discriminator="event_type")]
RIDE_EVENT = TypeAdapter[RideStarted | RideProgress | RideCompleted](RideEvent)
EVENT_TYPES: tuple[str, ...] = ("ride_started", "ride_progress", "ride_completed")

__all__ = [
    "EVENT_TYPES",
    "MAX_RIDE_SECONDS",
    "MAX_TRIP_MILES",
    "RIDE_EVENT",
    "RideCompleted",
    "RideEvent",
    "RideProgress",
    "RideStarted",
]
