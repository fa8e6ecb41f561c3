"""HTTP bodies of the estimate service (`ridestream serve`: a ride request in, the initial estimate out) and
of the backend's ride API (`ridestream backend`).

A ride request carries what the TaxiApp knows when the rider asks, the same start-of-ride features a
`ride_started` event carries, so the estimate and the stream's start prediction come from one feature path
and, for the same model versions, are the same numbers. The OpenAPI document generated from these models is
kept in `schemas/openapi/` (`ridestream schemas` writes it; a test fails when it drifts).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from schemas.base import Contract, Identifier, Miles, Usd, UtcDatetime, ZoneId
from schemas.events import MAX_RIDE_SECONDS, PassengerCount, PaymentType, RateCode, TripType, VendorId

MAX_RIDES_PER_REQUEST = 1000


class RideRequest(Contract):
    """One ride a rider asks for."""

    ride_id: Identifier | None = Field(
        default=None,
        description="the backend's id of the ride; routes it like the stream does during a rollout "
        "(generated when absent)",
    )
    pickup_zone: ZoneId
    dropoff_zone: ZoneId
    pickup_time: UtcDatetime = Field(description="with its UTC offset, e.g. 2026-12-01T08:30:00+01:00")
    trip_distance_miles: Miles = Field(description="the route planner's estimated distance")
    passenger_count: PassengerCount = 1
    payment_type: PaymentType = 1
    vendor_id: VendorId = 2
    rate_code: RateCode = 1
    trip_type: TripType = 1


# The body of POST /v1/estimates: one ride, or a list of them (one vectorized predict per model).
RideRequests = Annotated[list[RideRequest], Field(min_length=1, max_length=MAX_RIDES_PER_REQUEST)]


class Figure(Contract):
    """One predicted number and the model version that made it."""

    value: float = Field(ge=0, allow_inf_nan=False)
    model_name: str
    model_version: str = Field(description="the artifact version, as in the stream's predictions")


class Estimate(Contract):
    ride_id: Identifier
    duration_minutes: Figure
    tip_usd: Figure
    total_usd: Figure


class EstimateResponse(Contract):
    estimates: list[Estimate]


class Problem(Contract):
    """Why a request was refused or could not be answered."""

    detail: str


class RideCreated(Contract):
    """The backend's answer to a ride request: the ride, its initial estimate, where its updates stream."""

    ride_id: Identifier
    estimate: Estimate
    updates: str = Field(description="the ride's Server-Sent Events: corrected duration, tip and cost")


class Progress(Contract):
    """The driver app's update while a ride runs."""

    event_id: Identifier | None = Field(default=None, description="the app's id: a retry with it is a no-op")
    event_time: UtcDatetime | None = Field(default=None, description="default: when the backend receives it")
    elapsed_seconds: float = Field(ge=0, le=MAX_RIDE_SECONDS, allow_inf_nan=False)
    distance_covered_miles: Miles


class Completion(Contract):
    """The meter stopped: the ground truth the models are judged by."""

    event_id: Identifier | None = None
    dropoff_time: UtcDatetime
    trip_distance_miles: Miles = Field(description="distance actually driven")
    payment_type: PaymentType
    fare_amount_usd: Usd
    tip_amount_usd: Usd
    total_amount_usd: Usd


class Accepted(Contract):
    """An update published (its delivery confirmed by the broker)."""

    ride_id: Identifier
    event_id: Identifier
