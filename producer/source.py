"""Trips → the ride events a TaxiApp backend would publish, in event-time order; and replay pacing.

Each trip becomes one `ride_started` at pickup, a `ride_progress` every `interval_s` of ride time along a
simulated path (schemas/ride_path.py) and one `ride_completed` at dropoff. Events of all rides are merged by
event time, so a replay interleaves rides the way a live city does. Pure: no Kafka here.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, TypedDict, cast

import numpy as np
import numpy.typing as npt
import pandas as pd

from schemas.events import RideCompleted, RideProgress, RideStarted
from schemas.ride_path import covered_distance, progress_times
from shared.serde import RideEventModel

PacingMode = Literal["max", "rate", "event_time"]

# Event kinds in the merged timeline; ride_started sorts before anything at the same instant of its ride.
STARTED, PROGRESS, COMPLETED = 0, 1, 2


class TripRow(TypedDict):
    """One row of a trip frame (`producer.trips.TRIP_COLUMNS`) as plain Python values."""

    ride_id: str
    pickup_time: datetime
    dropoff_time: datetime
    pickup_zone: int
    dropoff_zone: int
    trip_distance_miles: float
    passenger_count: int
    payment_type: int
    vendor_id: int
    rate_code: int
    trip_type: int
    fare_amount_usd: float
    tip_amount_usd: float
    total_amount_usd: float


def progress_counts(trips: pd.DataFrame, interval_s: float) -> np.ndarray:
    """Progress events per trip: one every `interval_s` of ride time, strictly before the dropoff."""
    seconds = ride_seconds(trips)
    return np.maximum(0, np.ceil(seconds / interval_s).astype(np.int64) - 1)


def ride_seconds(trips: pd.DataFrame) -> np.ndarray:
    return (trips["dropoff_time"] - trips["pickup_time"]).dt.total_seconds().to_numpy()


def count_events(trips: pd.DataFrame, interval_s: float) -> Counter[str]:
    """How many events of each type `ride_events` yields for these trips (for progress bars and tests)."""
    rides = len(trips)
    return Counter(
        {
            "ride_started": rides,
            "ride_progress": int(progress_counts(trips, interval_s).sum()),
            "ride_completed": rides,
        }
    )


@dataclass(frozen=True, slots=True)
class Timeline:
    """Every event of every ride as parallel arrays, sorted by event time."""

    trip: np.ndarray  # row of the trip frame
    kind: np.ndarray  # STARTED / PROGRESS / COMPLETED
    sequence: np.ndarray  # the event's number within its ride (event_id suffix)
    offset_s: np.ndarray  # seconds after pickup


def build_timeline(trips: pd.DataFrame, interval_s: float) -> Timeline:
    """All events of all rides, merged by event time (ties keep ride and sequence order)."""
    counts = progress_counts(trips, interval_s)
    rides = np.arange(len(trips))
    progress_trip = np.repeat(rides, counts)
    # 1..count within each ride: a running index minus where the ride's block starts.
    block_start = np.repeat(np.cumsum(counts) - counts, counts)
    progress_sequence = np.arange(progress_trip.size) - block_start + 1
    trip = np.concatenate([rides, progress_trip, rides])
    kind = np.concatenate(
        [np.full(rides.size, STARTED), np.full(progress_trip.size, PROGRESS), np.full(rides.size, COMPLETED)]
    )
    sequence = np.concatenate([np.zeros(rides.size, np.int64), progress_sequence, counts + 1])
    offset_s = np.concatenate([np.zeros(rides.size), progress_sequence * interval_s, ride_seconds(trips)])
    pickup_ns = trips["pickup_time"].dt.as_unit("ns").astype("int64").to_numpy()
    event_ns = pickup_ns[trip] + np.round(offset_s * 1e9).astype(np.int64)
    order = np.lexsort((sequence, trip, event_ns))
    return Timeline(trip[order], kind[order], sequence[order], offset_s[order])


def ride_events(trips: pd.DataFrame, interval_s: float = 60.0, seed: int = 42) -> Iterator[RideEventModel]:
    """Validated ride events for `trips`, in event-time order. The same seed gives the same paths."""
    timeline = build_timeline(trips, interval_s)
    rows = trip_rows(trips)
    rng = np.random.default_rng(seed)
    paths: dict[int, npt.NDArray[np.float64]] = {}
    for index, kind, sequence, offset in zip(
        timeline.trip.tolist(), timeline.kind.tolist(), timeline.sequence.tolist(), timeline.offset_s.tolist()
    ):
        row = rows[index]
        if kind == STARTED:
            paths[index] = ride_path(row, interval_s, rng)
            yield started_event(row)
        elif kind == PROGRESS:
            yield progress_event(row, sequence, offset, float(paths[index][sequence - 1]))
        else:
            paths.pop(index, None)
            yield completed_event(row, sequence)


def trip_rows(trips: pd.DataFrame) -> list[TripRow]:
    """Trip rows as plain Python values: building events from pandas scalars costs more than the events."""
    columns = {name: trips[name].tolist() for name in trips.columns}
    for name in ("pickup_time", "dropoff_time"):
        columns[name] = list(trips[name].dt.to_pydatetime())
    # The keys and value types are the trip frame's columns and dtypes, which mypy cannot see through pandas.
    return [cast(TripRow, dict(zip(columns, values))) for values in zip(*columns.values())]


def ride_path(row: TripRow, interval_s: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Miles covered at each progress event of one ride."""
    seconds = (row["dropoff_time"] - row["pickup_time"]).total_seconds()
    return covered_distance(
        progress_times(seconds, interval_s), seconds, float(row["trip_distance_miles"]), rng
    )


def event_id(row: TripRow, sequence: int) -> str:
    return f"{row['ride_id']}:{sequence}"


def started_event(row: TripRow) -> RideStarted:
    return RideStarted(
        event_id=event_id(row, 0),
        ride_id=row["ride_id"],
        event_time=row["pickup_time"],
        pickup_time=row["pickup_time"],
        pickup_zone=row["pickup_zone"],
        dropoff_zone=row["dropoff_zone"],
        trip_distance_miles=row["trip_distance_miles"],
        passenger_count=row["passenger_count"],
        payment_type=row["payment_type"],
        vendor_id=row["vendor_id"],
        rate_code=row["rate_code"],
        trip_type=row["trip_type"],
    )


def progress_event(row: TripRow, sequence: int, elapsed_s: float, covered_miles: float) -> RideProgress:
    return RideProgress(
        event_id=event_id(row, sequence),
        ride_id=row["ride_id"],
        event_time=row["pickup_time"] + timedelta(seconds=elapsed_s),
        pickup_time=row["pickup_time"],
        pickup_zone=row["pickup_zone"],
        dropoff_zone=row["dropoff_zone"],
        trip_distance_miles=row["trip_distance_miles"],
        elapsed_seconds=elapsed_s,
        distance_covered_miles=covered_miles,
    )


def completed_event(row: TripRow, sequence: int) -> RideCompleted:
    minutes = (row["dropoff_time"] - row["pickup_time"]).total_seconds() / 60
    return RideCompleted(
        event_id=event_id(row, sequence),
        ride_id=row["ride_id"],
        event_time=row["dropoff_time"],
        pickup_time=row["pickup_time"],
        dropoff_time=row["dropoff_time"],
        pickup_zone=row["pickup_zone"],
        dropoff_zone=row["dropoff_zone"],
        duration_minutes=minutes,
        trip_distance_miles=row["trip_distance_miles"],
        payment_type=row["payment_type"],
        fare_amount_usd=row["fare_amount_usd"],
        tip_amount_usd=row["tip_amount_usd"],
        total_amount_usd=row["total_amount_usd"],
    )


@dataclass
class Pacer:
    """How long to wait before the next event: none (as fast as possible), a fixed rate, or event time
    scaled by a speed-up factor (a ride of 10 minutes takes 10 s at speedup 60)."""

    mode: PacingMode
    rate: float | None = None
    speedup: float | None = None
    _sent: int = 0
    _started: float | None = None
    _first_event: datetime | None = field(default=None)

    def delay_before(self, event_time: datetime, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self._started is None:
            self._started, self._first_event = now, event_time
        due = self.due_after_start(event_time)
        self._sent += 1
        return max(0.0, due - (now - self._started))

    def due_after_start(self, event_time: datetime) -> float:
        """Seconds after the first event at which this one is due."""
        if self.mode == "rate" and self.rate:
            return self._sent / self.rate
        if self.mode == "event_time" and self.speedup and self._first_event is not None:
            return (event_time - self._first_event).total_seconds() / self.speedup
        return 0.0
