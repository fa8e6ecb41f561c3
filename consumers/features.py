"""Model features: one code path for training (trip frames) and serving (validated ride events).

  trip frame rows ──► *_columns_from_trips ──┐
                                              ├──► StartColumns / ProgressColumns ──► start_features /
  ride events     ──► *_columns_from_events ──┘                                        progress_features ──► X

The two adapters only gather raw fields into numpy columns; every derived value (local hour, remaining
distance, pace so far) is computed once, by `start_features` / `progress_features`, from those columns. So a
ride scored live gets exactly the feature row it would have had in training (tests/unit/test_features.py
checks this), and serving is vectorized: list comprehensions and numpy, no per-row DataFrame work.

`ZoneCategories` (consumers/zone_encoder.py) is the one fitted step in front of the regressors: it turns
zone ids into the <= 255 categories that HistGradientBoostingRegressor accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np

from schemas.events import RideProgress, RideStarted
from shared.columnar import numeric_columns

if TYPE_CHECKING:  # only training hands in trip frames
    import pandas as pd

# Traffic follows the clock on the street, so hour and weekday are New York local time, not UTC.
NYC_TIMEZONE = "America/New_York"

START_FEATURES: tuple[str, ...] = (
    "pickup_zone",
    "dropoff_zone",
    "trip_distance_miles",
    "pickup_hour_local",
    "pickup_weekday_local",
    "passenger_count",
    "payment_type",
    "vendor_id",
    "rate_code",
    "trip_type",
)
# A progress event repeats only the ride's zones, pickup time and estimated distance (schemas/events.py), so
# the dynamic model cannot use passengers, payment, vendor, rate code or trip type.
PROGRESS_FEATURES: tuple[str, ...] = (
    "pickup_zone",
    "dropoff_zone",
    "trip_distance_miles",
    "pickup_hour_local",
    "pickup_weekday_local",
    "elapsed_minutes",
    "distance_covered_miles",
    "distance_left_miles",
    "share_covered",
    "speed_so_far_mph",
    "minutes_left_at_pace",
)
# The MLOps-zoomcamp baseline's DictVectorizer keys (offline only: it is never served).
BASELINE_FEATURES: tuple[str, ...] = ("PU_DO", "trip_distance")

# Both feature matrices start with the two zone columns; they are the categorical ones.
ZONE_COLUMNS: tuple[int, ...] = (0, 1)
HIGHEST_ZONE_ID = 265

# Below a minute of driving or a tenth of a mile, "pace so far" is noise (a light, a pickup manoeuvre);
# the floors keep the ratios finite and calm at ride start.
MIN_PACE_MINUTES = 1.0
MIN_PACE_MILES = 0.1
# A ride stuck in traffic would otherwise extrapolate to days; beyond three hours the number means "long".
MAX_MINUTES_AT_PACE = 180.0

_SECONDS_PER_DAY = 86_400
_MICROS_PER_HOUR = 3_600_000_000
# 1970-01-01 was a Thursday; with Monday = 0 (pandas' convention) day 0 of the epoch is weekday 3.
_EPOCH_WEEKDAY = 3


@dataclass(frozen=True)
class StartColumns:
    """The raw fields a ride_started event carries, one numpy array per field (pickup time as UTC epoch s)."""

    pickup_zone: np.ndarray
    dropoff_zone: np.ndarray
    trip_distance_miles: np.ndarray
    pickup_epoch_s: np.ndarray
    passenger_count: np.ndarray
    payment_type: np.ndarray
    vendor_id: np.ndarray
    rate_code: np.ndarray
    trip_type: np.ndarray


@dataclass(frozen=True)
class ProgressColumns:
    """The raw fields a ride_progress event carries, one numpy array per field."""

    pickup_zone: np.ndarray
    dropoff_zone: np.ndarray
    trip_distance_miles: np.ndarray
    pickup_epoch_s: np.ndarray
    elapsed_seconds: np.ndarray
    distance_covered_miles: np.ndarray


# ---------------------------------------------------------------------------------------------- adapters


# The attributes of an event each adapter reads, in its columns' order.
_START_ATTRIBUTES: tuple[str, ...] = (
    "pickup_zone",
    "dropoff_zone",
    "trip_distance_miles",
    "pickup_time",
    "passenger_count",
    "payment_type",
    "vendor_id",
    "rate_code",
    "trip_type",
)
_PROGRESS_ATTRIBUTES: tuple[str, ...] = (
    "pickup_zone",
    "dropoff_zone",
    "trip_distance_miles",
    "pickup_time",
    "elapsed_seconds",
    "distance_covered_miles",
)


def _ints(column: np.ndarray) -> np.ndarray:
    return column.astype(np.int64)


def start_columns_from_events(events: Sequence[RideStarted]) -> StartColumns:
    # (every column in one C pass over the events: a numpy iterator per column cost ~2x as much)
    zone, dropoff, distance, pickup, passengers, payment, vendor, rate, trip = numeric_columns(
        events, _START_ATTRIBUTES
    )
    return StartColumns(
        pickup_zone=_ints(zone),
        dropoff_zone=_ints(dropoff),
        trip_distance_miles=distance,
        pickup_epoch_s=pickup,
        passenger_count=_ints(passengers),
        payment_type=_ints(payment),
        vendor_id=_ints(vendor),
        rate_code=_ints(rate),
        trip_type=_ints(trip),
    )


def progress_columns_from_events(events: Sequence[RideProgress]) -> ProgressColumns:
    zone, dropoff, distance, pickup, elapsed, covered = numeric_columns(events, _PROGRESS_ATTRIBUTES)
    return ProgressColumns(
        pickup_zone=_ints(zone),
        dropoff_zone=_ints(dropoff),
        trip_distance_miles=distance,
        pickup_epoch_s=pickup,
        elapsed_seconds=elapsed,
        distance_covered_miles=covered,
    )


def epoch_seconds(times: pd.Series) -> np.ndarray:
    """Timezone-aware timestamps → UTC epoch seconds, bit-identical to `datetime.timestamp()`.

    Going through whole microseconds matters: both sides then divide the same integer by 10**6, so a ride
    replayed as an event lands in the same local minute as its training row, to the last bit.
    """
    micros: np.ndarray = times.dt.tz_convert("UTC").dt.as_unit("us").astype("int64").to_numpy()
    return micros / 1e6


def start_columns_from_trips(trips: pd.DataFrame) -> StartColumns:
    return StartColumns(
        pickup_zone=trips["pickup_zone"].to_numpy(dtype=np.int64),
        dropoff_zone=trips["dropoff_zone"].to_numpy(dtype=np.int64),
        trip_distance_miles=trips["trip_distance_miles"].to_numpy(dtype=np.float64),
        pickup_epoch_s=epoch_seconds(trips["pickup_time"]),
        passenger_count=trips["passenger_count"].to_numpy(dtype=np.int64),
        payment_type=trips["payment_type"].to_numpy(dtype=np.int64),
        vendor_id=trips["vendor_id"].to_numpy(dtype=np.int64),
        rate_code=trips["rate_code"].to_numpy(dtype=np.int64),
        trip_type=trips["trip_type"].to_numpy(dtype=np.int64),
    )


def progress_columns_from_trips(
    trips: pd.DataFrame,
    ride_rows: np.ndarray,
    elapsed_seconds: np.ndarray,
    distance_covered_miles: np.ndarray,
) -> ProgressColumns:
    """Progress snapshots of trip-frame rides: snapshot i is ride `ride_rows[i]` at `elapsed_seconds[i]`."""
    return ProgressColumns(
        pickup_zone=trips["pickup_zone"].to_numpy(dtype=np.int64)[ride_rows],
        dropoff_zone=trips["dropoff_zone"].to_numpy(dtype=np.int64)[ride_rows],
        trip_distance_miles=trips["trip_distance_miles"].to_numpy(dtype=np.float64)[ride_rows],
        pickup_epoch_s=epoch_seconds(trips["pickup_time"])[ride_rows],
        elapsed_seconds=np.asarray(elapsed_seconds, dtype=np.float64),
        distance_covered_miles=np.asarray(distance_covered_miles, dtype=np.float64),
    )


# ------------------------------------------------------------------------------------ derived features


@lru_cache(maxsize=65_536)
def _nyc_utc_offset_s(epoch_hour: int) -> int:
    """New York's UTC offset in seconds during the UTC hour that starts at `epoch_hour` * 3600."""
    offset = datetime.fromtimestamp(epoch_hour * 3600, tz=UTC).astimezone(ZoneInfo(NYC_TIMEZONE)).utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


# Below this many rows a cached lookup per row beats np.unique's sort (~20 µs even for one row).
_UNIQUE_FROM_ROWS = 64


def utc_offsets_s(epoch_hours: np.ndarray) -> np.ndarray:
    """New York's UTC offset for each UTC hour, looked up once per distinct hour."""
    if len(epoch_hours) < _UNIQUE_FROM_ROWS:
        return np.array([_nyc_utc_offset_s(hour) for hour in epoch_hours.tolist()], dtype=np.int64)
    hours, inverse = np.unique(epoch_hours, return_inverse=True)
    offsets_s = np.array([_nyc_utc_offset_s(int(hour)) for hour in hours], dtype=np.int64)
    return offsets_s[inverse.reshape(-1)]


def feature_matrix(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Columns side by side as one float64 matrix (np.column_stack + astype, without their ~20 µs of
    checks, which a one-ride estimate pays per model)."""
    matrix = np.empty((len(columns[0]), len(columns)), dtype=np.float64)
    for position, column in enumerate(columns):
        matrix[:, position] = column
    return matrix


def local_hour_and_weekday(epoch_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UTC epoch seconds → (hour of day as a fraction, weekday Monday=0), both in New York local time.

    New York changes its UTC offset only at whole UTC hours (2 am local is 07:00 or 06:00 UTC), so the
    offset is looked up once per distinct UTC hour in the batch (cached) and the rest is integer maths.
    """
    micros = np.round(np.asarray(epoch_s, dtype=np.float64) * 1e6).astype(np.int64)
    local_s = micros // 1_000_000 + utc_offsets_s(micros // _MICROS_PER_HOUR)
    seconds_of_day = local_s % _SECONDS_PER_DAY
    weekday = (local_s // _SECONDS_PER_DAY + _EPOCH_WEEKDAY) % 7
    return seconds_of_day / 3600.0, weekday.astype(np.float64)


def start_features(columns: StartColumns) -> np.ndarray:
    """The start-of-ride feature matrix, columns in START_FEATURES order."""
    hour, weekday = local_hour_and_weekday(columns.pickup_epoch_s)
    return feature_matrix(
        [
            columns.pickup_zone,
            columns.dropoff_zone,
            columns.trip_distance_miles,
            hour,
            weekday,
            columns.passenger_count,
            columns.payment_type,
            columns.vendor_id,
            columns.rate_code,
            columns.trip_type,
        ]
    )


def progress_features(columns: ProgressColumns) -> np.ndarray:
    """The ride-in-progress feature matrix, columns in PROGRESS_FEATURES order."""
    hour, weekday = local_hour_and_weekday(columns.pickup_epoch_s)
    elapsed_minutes = columns.elapsed_seconds / 60.0
    covered = columns.distance_covered_miles
    planned = columns.trip_distance_miles
    left = np.maximum(planned - covered, 0.0)
    share_covered = covered / np.maximum(planned, MIN_PACE_MILES)
    pace_minutes = np.maximum(elapsed_minutes, MIN_PACE_MINUTES)
    speed_so_far_mph = covered / (pace_minutes / 60.0)
    # The naive forecast a dispatcher would make: the rest of the way at the pace driven so far.
    minutes_left_at_pace = np.minimum(
        left * pace_minutes / np.maximum(covered, MIN_PACE_MILES), MAX_MINUTES_AT_PACE
    )
    return feature_matrix(
        [
            columns.pickup_zone,
            columns.dropoff_zone,
            planned,
            hour,
            weekday,
            elapsed_minutes,
            covered,
            left,
            share_covered,
            speed_so_far_mph,
            minutes_left_at_pace,
        ]
    )


def baseline_dicts(
    pickup_zone: np.ndarray, dropoff_zone: np.ndarray, trip_distance: np.ndarray
) -> list[dict[str, Any]]:
    """The MLOps-zoomcamp baseline's input: one dict per ride, PU_DO as "<PU>_<DO>" and the distance."""
    return [
        {"PU_DO": f"{pu}_{do}", "trip_distance": float(distance)}
        for pu, do, distance in zip(pickup_zone.tolist(), dropoff_zone.tolist(), trip_distance.tolist())
    ]


def __getattr__(name: str) -> type[Any]:
    # Artifacts pickled before the encoder moved to consumers/zone_encoder.py name it here. Importing it
    # lazily keeps scikit-learn out of every process that only builds features (a scoring service).
    if name == "ZoneCategories":
        from consumers.zone_encoder import ZoneCategories

        return ZoneCategories
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
