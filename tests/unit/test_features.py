"""Feature building: serving (events) and training (trip frames) build the same rows; local time is right."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import make_pipeline

from consumers.features import (
    PROGRESS_FEATURES,
    START_FEATURES,
    ZONE_COLUMNS,
    ProgressColumns,
    local_hour_and_weekday,
    progress_columns_from_events,
    progress_columns_from_trips,
    progress_features,
    start_columns_from_events,
    start_columns_from_trips,
    start_features,
)
from consumers.training import sample_progress
from consumers.zone_encoder import ZoneCategories
from producer.source import ride_events
from producer.synthetic import synthesize_trips
from producer.trips import read_trips
from schemas.events import RideProgress, RideStarted

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GREEN_2021_01 = DATA_DIR / "green_tripdata_2021-01.parquet"


def synthetic_trips() -> pd.DataFrame:
    return synthesize_trips(400, seed=5).trips


def sub_second_trips() -> pd.DataFrame:
    # TLC and synthetic pickups fall on whole seconds; an app's clock does not.
    trips = synthesize_trips(200, seed=6).trips.copy()
    offsets = pd.to_timedelta(np.arange(len(trips)) * 7919 % 1_000_000, unit="us")
    trips["pickup_time"] = trips["pickup_time"] + offsets
    trips["dropoff_time"] = trips["dropoff_time"] + offsets
    return trips


def tlc_trips() -> pd.DataFrame:
    if not GREEN_2021_01.is_file():
        pytest.skip(
            f"real TLC data not found: {GREEN_2021_01} (the shared data folder is not beside this checkout)"
        )
    return read_trips(GREEN_2021_01).trips.sample(600, random_state=1).reset_index(drop=True)


@pytest.fixture(params=[synthetic_trips, sub_second_trips, tlc_trips], ids=["synthetic", "sub-second", "tlc"])
def trips(request: pytest.FixtureRequest) -> pd.DataFrame:
    return request.param()  # type: ignore[no-any-return]


def replayed(trips: pd.DataFrame) -> tuple[list[RideStarted], list[RideProgress]]:
    """The events the producer publishes for these trips (producer.source, the real replay path)."""
    events = list(ride_events(trips, interval_s=90.0, seed=3))
    return [e for e in events if isinstance(e, RideStarted)], [
        e for e in events if isinstance(e, RideProgress)
    ]


def test_start_features_built_from_events_equal_those_built_from_the_trip_frame_rows(
    trips: pd.DataFrame,
) -> None:
    started, _ = replayed(trips)
    by_ride = {event.ride_id: event for event in started}
    events_in_frame_order = [by_ride[ride_id] for ride_id in trips["ride_id"]]

    served = start_features(start_columns_from_events(events_in_frame_order))
    trained = start_features(start_columns_from_trips(trips))

    assert served.shape == (len(trips), len(START_FEATURES))
    np.testing.assert_array_equal(served, trained)  # exact: not one bit of training/serving skew


def test_progress_features_built_from_events_equal_those_built_from_trip_frame_snapshots(
    trips: pd.DataFrame,
) -> None:
    _, progress = replayed(trips)
    row_of = {ride_id: row for row, ride_id in enumerate(trips["ride_id"])}
    rows = np.array([row_of[event.ride_id] for event in progress])
    elapsed = np.array([event.elapsed_seconds for event in progress])
    covered = np.array([event.distance_covered_miles for event in progress])

    served = progress_features(progress_columns_from_events(progress))
    trained = progress_features(progress_columns_from_trips(trips, rows, elapsed, covered))

    assert len(progress) > len(trips) and served.shape[1] == len(PROGRESS_FEATURES)
    np.testing.assert_array_equal(served, trained)


def test_training_progress_snapshots_are_progress_events_the_contract_accepts() -> None:
    trips = synthetic_trips()
    samples = sample_progress(trips, per_ride=3, seed=1)
    for row, elapsed, covered in zip(
        samples.ride_rows[:300], samples.elapsed_seconds[:300], samples.distance_covered_miles[:300]
    ):
        trip = trips.iloc[row]
        pickup = trip["pickup_time"].to_pydatetime()
        RideProgress(  # raises if training learnt from a snapshot serving could never see
            event_id=f"{trip['ride_id']}:1",
            ride_id=trip["ride_id"],
            event_time=pickup + pd.Timedelta(seconds=elapsed),
            pickup_time=pickup,
            pickup_zone=trip["pickup_zone"],
            dropoff_zone=trip["dropoff_zone"],
            trip_distance_miles=trip["trip_distance_miles"],
            elapsed_seconds=elapsed,
            distance_covered_miles=covered,
        )
    assert np.all((samples.share_elapsed >= 0) & (samples.share_elapsed < 1))
    assert np.all(samples.remaining_minutes > 0)


@pytest.mark.parametrize(
    ("utc", "hour", "weekday"),
    [
        ("2021-01-15T13:30:00+00:00", 8.5, 4),  # EST (UTC-5), a Friday
        ("2021-07-01T12:00:00+00:00", 8.0, 3),  # EDT (UTC-4), a Thursday
        ("2021-01-04T04:30:00+00:00", 23.5, 6),  # Monday in UTC, still Sunday evening in New York
        ("2021-03-14T06:59:00+00:00", 1 + 59 / 60, 6),  # the last minute of EST
        ("2021-03-14T07:00:00+00:00", 3.0, 6),  # clocks jump from 2:00 to 3:00
        ("2021-11-07T05:30:00+00:00", 1.5, 6),  # the first 1:30 (EDT)...
        ("2021-11-07T06:30:00+00:00", 1.5, 6),  # ...and the second (EST)
    ],
)
def test_hour_and_weekday_are_new_york_local_time(utc: str, hour: float, weekday: int) -> None:
    local_hour, local_weekday = local_hour_and_weekday(np.array([datetime.fromisoformat(utc).timestamp()]))
    assert local_hour[0] == pytest.approx(hour)
    assert local_weekday[0] == weekday


def test_vectorized_local_time_matches_zoneinfo_row_by_row() -> None:
    rng = np.random.default_rng(0)
    epoch = rng.uniform(
        datetime(2020, 1, 1, tzinfo=UTC).timestamp(), datetime(2023, 1, 1, tzinfo=UTC).timestamp(), 5000
    )
    hour, weekday = local_hour_and_weekday(epoch)
    new_york = ZoneInfo("America/New_York")
    expected = [datetime.fromtimestamp(int(s), UTC).astimezone(new_york) for s in np.floor(epoch)]
    np.testing.assert_array_equal(
        np.floor(hour * 3600 + 1e-6).astype(int), [t.hour * 3600 + t.minute * 60 + t.second for t in expected]
    )
    np.testing.assert_array_equal(weekday, [t.weekday() for t in expected])


def test_progress_features_stay_finite_at_pickup_and_for_zero_distance() -> None:
    columns = ProgressColumns(
        pickup_zone=np.array([1, 265]),
        dropoff_zone=np.array([265, 1]),
        trip_distance_miles=np.array([0.0, 3.0]),
        pickup_epoch_s=np.array([1.6e9, 1.6e9]),
        elapsed_seconds=np.array([0.0, 0.0]),
        distance_covered_miles=np.array([0.0, 0.0]),
    )
    assert np.isfinite(progress_features(columns)).all()


def test_zone_categories_fit_every_zone_into_the_boosters_255_categories() -> None:
    rng = np.random.default_rng(0)
    zones = np.column_stack([rng.integers(1, 266, 20_000), rng.integers(1, 266, 20_000), rng.random(20_000)])
    encoder = ZoneCategories().fit(zones)
    encoded = encoder.transform(np.vstack([zones, [[7, 7, 0.5]]]))
    for column in ZONE_COLUMNS:
        assert len(np.unique(encoded[:, column])) <= 255
    np.testing.assert_array_equal(encoded[:, 2], np.append(zones[:, 2], 0.5))  # other columns untouched
    # A booster with every one of the 265 zones as categories fits (it refuses more than 255 unencoded).
    model = make_pipeline(
        ZoneCategories(), HistGradientBoostingRegressor(categorical_features=list(ZONE_COLUMNS), max_iter=5)
    )
    model.fit(zones, zones[:, 2])


def test_zone_categories_keep_frequent_zones_apart_and_pool_rare_and_unseen_ones() -> None:
    frequent = np.repeat(np.arange(1, 255), 10)  # 254 zones seen often
    rare = np.array([255, 256, 257])  # seen once each
    column = np.concatenate([frequent, rare]).astype(float)
    X = np.column_stack([column, column])
    encoder = ZoneCategories().fit(X)
    codes = encoder.transform(np.array([[1.0, 1.0], [2.0, 2.0], [255.0, 256.0], [264.0, 265.0]]))
    assert codes[0, 0] != codes[1, 0]
    assert codes[2, 0] == codes[3, 0] == codes[2, 1] == codes[3, 1] == 254.0  # the shared "other" category
