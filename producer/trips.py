"""Real NYC TLC trip records → one canonical *trip frame*, the input of both replay and training.

A trip frame is a pandas DataFrame with exactly `TRIP_COLUMNS`, named like the ride-event fields, with
timestamps as timezone-aware UTC. Rows that cannot form a valid ride are dropped and counted by reason, so
neither the producer nor training ever sees them, and the counts are reported to the person who asked.

Layouts read (chosen by the columns present, not by file name):
    green    TLC green parquet/CSV  (lpep_* timestamps, trip_type)
    yellow   TLC yellow parquet/CSV (tpep_* timestamps; also seaborn's taxis_raw.csv)
    seaborn  seaborn's cleaned taxis.csv (zone *names*; needs taxi_zone_lookup.csv beside it)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from schemas.base import MAX_TRIP_MILES
from shared.errors import DataSourceError

Layout = Literal["green", "yellow", "seaborn"]

TRIP_COLUMNS: tuple[str, ...] = (
    "ride_id",
    "pickup_time",
    "dropoff_time",
    "pickup_zone",
    "dropoff_zone",
    "trip_distance_miles",
    "passenger_count",
    "payment_type",
    "vendor_id",
    "rate_code",
    "trip_type",
    "fare_amount_usd",
    "tip_amount_usd",
    "total_amount_usd",
)

# TLC records are in New York local time without an offset.
TLC_TIMEZONE = "America/New_York"
# Bounds of a plausible metered ride; outside them the record is a meter or clock error.
MIN_RIDE_MINUTES = 1.0
MAX_RIDE_MINUTES = 180.0
MAX_AVERAGE_MPH = 80.0
# Each month holds a few rows dated years away (2009); they are not part of the period being replayed.
# The period is where the bulk of the file's pickups lie, widened by a margin for rides that span its edge.
PERIOD_QUANTILES = (0.001, 0.999)
PERIOD_MARGIN = pd.Timedelta(days=2)

# Fields the TLC leaves empty on some rows (36k of 76k in green 2021-01). They are filled with the TLC's own
# "unknown"/default codes rather than dropping half a month of otherwise good rides.
IMPUTED_DEFAULTS = {"passenger_count": 1, "payment_type": 5, "rate_code": 1, "trip_type": 1, "vendor_id": 2}

_RENAMES: dict[Layout, dict[str, str]] = {
    "green": {
        "lpep_pickup_datetime": "pickup_time",
        "lpep_dropoff_datetime": "dropoff_time",
        "PULocationID": "pickup_zone",
        "DOLocationID": "dropoff_zone",
        "trip_distance": "trip_distance_miles",
        "passenger_count": "passenger_count",
        "payment_type": "payment_type",
        "VendorID": "vendor_id",
        "RatecodeID": "rate_code",
        "trip_type": "trip_type",
        "fare_amount": "fare_amount_usd",
        "tip_amount": "tip_amount_usd",
        "total_amount": "total_amount_usd",
    },
    "yellow": {
        "tpep_pickup_datetime": "pickup_time",
        "tpep_dropoff_datetime": "dropoff_time",
        "PULocationID": "pickup_zone",
        "DOLocationID": "dropoff_zone",
        "trip_distance": "trip_distance_miles",
        "passenger_count": "passenger_count",
        "payment_type": "payment_type",
        "VendorID": "vendor_id",
        "RatecodeID": "rate_code",
        "fare_amount": "fare_amount_usd",
        "tip_amount": "tip_amount_usd",
        "total_amount": "total_amount_usd",
    },
    "seaborn": {
        "pickup": "pickup_time",
        "dropoff": "dropoff_time",
        "passengers": "passenger_count",
        "distance": "trip_distance_miles",
        "fare": "fare_amount_usd",
        "tip": "tip_amount_usd",
        "total": "total_amount_usd",
    },
}
_SEABORN_PAYMENT = {"credit card": 1, "cash": 2}


@dataclass
class TripFrame:
    """Valid trips plus how many rows were skipped, by reason."""

    trips: pd.DataFrame
    skipped: Counter[str] = field(default_factory=Counter)
    imputed: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.trips)


def detect_layout(columns: pd.Index) -> Layout:
    names = set(columns)
    if "lpep_pickup_datetime" in names:
        return "green"
    if "tpep_pickup_datetime" in names:
        return "yellow"
    if {"pickup", "dropoff", "pickup_zone", "distance"} <= names:
        return "seaborn"
    raise DataSourceError(
        "unknown trip file layout: expected TLC green (lpep_*), yellow (tpep_*) or seaborn taxis.csv "
        f"columns, found {sorted(names)[:8]}"
    )


def read_raw(path: Path) -> pd.DataFrame:
    """The file's rows as they are, or a DataSourceError a person can act on."""
    if not path.is_file():
        raise DataSourceError(f"trip file not found: {path}")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path)
    except Exception as exc:  # pyarrow and pandas raise many unrelated types for a damaged file
        raise DataSourceError(f"cannot read trip file {path}: {exc}") from exc
    raise DataSourceError(f"unsupported trip file type {path.suffix!r} ({path}): use .parquet or .csv")


def zone_ids_by_name(lookup_csv: Path) -> dict[str, int]:
    if not lookup_csv.is_file():
        raise DataSourceError(
            f"seaborn taxis.csv names zones, so it needs the TLC zone table; {lookup_csv} not found"
        )
    zones = pd.read_csv(lookup_csv)
    # A few names repeat across boroughs; the first id is as good as any for a zone-level model.
    return {
        str(name): int(zone_id) for zone_id, name in zip(zones["LocationID"], zones["Zone"]) if pd.notna(name)
    }


def canonical_columns(raw: pd.DataFrame, layout: Layout, path: Path) -> pd.DataFrame:
    """Rename a layout's columns to the trip-frame names; fill what the layout does not carry."""
    frame = raw.rename(columns=_RENAMES[layout])
    if layout == "seaborn":
        ids = zone_ids_by_name(path.parent / "taxi_zone_lookup.csv")
        frame["pickup_zone"] = frame["pickup_zone"].map(ids)
        frame["dropoff_zone"] = frame["dropoff_zone"].map(ids)
        frame["payment_type"] = frame["payment"].map(_SEABORN_PAYMENT)
        frame["vendor_id"] = np.nan
        frame["rate_code"] = np.nan
        frame["trip_type"] = np.nan
    if layout == "yellow" and "trip_type" not in frame:
        frame["trip_type"] = np.nan
    return frame


def to_utc(local: pd.Series) -> pd.Series:
    naive = pd.to_datetime(local, errors="coerce")
    # Clock changes make some local times ambiguous or nonexistent; those few rows become NaT and are skipped.
    return naive.dt.tz_localize(TLC_TIMEZONE, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")


def skip_reasons(frame: pd.DataFrame) -> pd.Series:
    """Per row: the first reason it cannot form a valid ride, or "" when it can."""
    minutes = (frame["dropoff_time"] - frame["pickup_time"]).dt.total_seconds() / 60
    first, last = frame["pickup_time"].quantile(list(PERIOD_QUANTILES))
    far_from_period = ~frame["pickup_time"].between(first - PERIOD_MARGIN, last + PERIOD_MARGIN)
    zone_ok = frame["pickup_zone"].between(1, 265) & frame["dropoff_zone"].between(1, 265)
    distance = frame["trip_distance_miles"]
    mph = distance / (minutes / 60)
    amounts = frame[["fare_amount_usd", "tip_amount_usd", "total_amount_usd"]]
    checks: list[tuple[str, pd.Series]] = [
        ("missing_timestamp", frame["pickup_time"].isna() | frame["dropoff_time"].isna()),
        ("missing_zone", ~zone_ok),
        ("outside_file_period", far_from_period),
        ("nonpositive_duration", minutes <= 0),
        ("absurd_duration", (minutes < MIN_RIDE_MINUTES) | (minutes > MAX_RIDE_MINUTES)),
        ("absurd_distance", distance.isna() | (distance <= 0) | (distance > MAX_TRIP_MILES)),
        ("absurd_speed", mph > MAX_AVERAGE_MPH),
        ("negative_or_missing_amount", amounts.isna().any(axis=1) | (amounts < 0).any(axis=1)),
        (
            "unknown_code",
            ~frame["rate_code"].isin([1, 2, 3, 4, 5, 6, np.nan])
            | ~frame["vendor_id"].isin([1, 2, 3, 4, 5, 6, np.nan]),
        ),
    ]
    reasons = pd.Series("", index=frame.index, dtype=object)
    for reason, bad in reversed(checks):  # reversed so the first listed reason wins
        reasons = reasons.mask(bad.fillna(True).astype(bool), reason)
    return reasons


def impute_codes(frame: pd.DataFrame) -> tuple[pd.DataFrame, Counter[str]]:
    imputed: Counter[str] = Counter()
    for column, default in IMPUTED_DEFAULTS.items():
        missing = frame[column].isna()
        if missing.any():
            imputed[column] = int(missing.sum())
            frame[column] = frame[column].fillna(default)
        frame[column] = frame[column].astype("int64")
    frame["passenger_count"] = frame["passenger_count"].clip(0, 9)
    return frame, imputed


def read_trips(path: Path | str) -> TripFrame:
    """Read one TLC-layout file into a trip frame, with skipped rows counted by reason."""
    path = Path(path)
    raw = read_raw(path)
    frame = canonical_columns(raw, detect_layout(raw.columns), path).reset_index(drop=True)
    frame["pickup_time"] = to_utc(frame["pickup_time"])
    frame["dropoff_time"] = to_utc(frame["dropoff_time"])
    reasons = skip_reasons(frame)
    skipped = Counter(reasons[reasons != ""].tolist())
    frame = frame.loc[reasons == ""].copy()
    frame["ride_id"] = path.stem.replace("_tripdata", "") + "-" + frame.index.astype(str).str.zfill(6)
    frame, imputed = impute_codes(frame)
    frame["pickup_zone"] = frame["pickup_zone"].astype("int64")
    frame["dropoff_zone"] = frame["dropoff_zone"].astype("int64")
    return TripFrame(
        trips=frame.loc[:, list(TRIP_COLUMNS)].reset_index(drop=True), skipped=skipped, imputed=imputed
    )


def read_many(paths: list[Path]) -> TripFrame:
    """Concatenate several files' trip frames; skip and imputation counts add up."""
    frames = [read_trips(path) for path in paths]
    skipped: Counter[str] = sum((f.skipped for f in frames), Counter())
    imputed: Counter[str] = sum((f.imputed for f in frames), Counter())
    trips = pd.concat([f.trips for f in frames], ignore_index=True)
    return TripFrame(trips=trips, skipped=skipped, imputed=imputed)
