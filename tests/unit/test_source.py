"""Trips → ride events, ride paths, replay pacing, and the synthetic generator: pure code, real files."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from producer.source import Pacer, count_events, ride_events
from producer.synthetic import synthesize_trips
from producer.trips import TRIP_COLUMNS, read_trips, skip_reasons
from schemas.ride_path import simulate_progress

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason="real TLC data (../shared/data) is not beside this checkout"
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_ride_path_is_monotone_and_ends_within_the_recorded_distance(seed: int) -> None:
    elapsed, covered = simulate_progress(900.0, 3.2, 60.0, np.random.default_rng(seed))
    assert elapsed.tolist() == [60.0 * k for k in range(1, 15)]  # strictly before the dropoff at 900 s
    assert np.all(np.diff(covered) >= 0) and 0 <= covered[0] and covered[-1] <= 3.2
    assert covered[-1] > 2.0  # 14 of 15 minutes in, most of the way is done


def test_synthetic_rides_are_valid_trips_and_reproducible() -> None:
    first, again, other = (synthesize_trips(5000, seed=s).trips for s in (7, 7, 8))
    assert list(first.columns) == list(TRIP_COLUMNS)
    assert (skip_reasons(first) == "").all(), "the trip reader would reject a synthetic ride"
    assert first.equals(again) and not first.equals(other)
    assert first["pickup_time"].is_monotonic_increasing and first["ride_id"].is_unique


def test_synthetic_rides_follow_the_calibrated_tlc_statistics() -> None:
    trips = synthesize_trips(20_000, seed=1).trips
    card = trips["payment_type"] == 1
    assert 0.55 < card.mean() < 0.67  # green 2021: 61% card
    assert (trips.loc[~card, "tip_amount_usd"] == 0).all()  # cash tips are not recorded
    assert trips.loc[card, "tip_amount_usd"].mean() > 1.0
    minutes = (trips["dropoff_time"] - trips["pickup_time"]).dt.total_seconds() / 60
    assert 8 < minutes.median() < 18 and 1.5 < trips["trip_distance_miles"].median() < 3.5
    local_hour = trips["pickup_time"].dt.tz_convert("America/New_York").dt.hour
    assert (local_hour.between(7, 19)).mean() > 0.7  # daytime-heavy, as the TLC records are
    # The metered fare grows with distance; total = fare + surcharges + tip + tolls, never below the fare.
    assert np.corrcoef(trips["trip_distance_miles"], trips["fare_amount_usd"])[0, 1] > 0.9
    assert (trips["total_amount_usd"] >= trips["fare_amount_usd"] + trips["tip_amount_usd"]).all()


def test_each_trip_becomes_start_progress_and_completion_in_event_time_order() -> None:
    trips = synthesize_trips(300, seed=3).trips
    events = list(ride_events(trips, interval_s=120.0, seed=5))
    assert Counter(e.event_type for e in events) == count_events(trips, 120.0)
    assert [e.event_time for e in events] == sorted(e.event_time for e in events)
    by_ride: dict[str, list] = defaultdict(list)
    for event in events:
        by_ride[event.ride_id].append(event)
    for row in trips.itertuples():
        ride = by_ride[row.ride_id]
        assert ride[0].event_type == "ride_started" and ride[-1].event_type == "ride_completed"
        assert [e.event_id for e in ride] == [f"{row.ride_id}:{k}" for k in range(len(ride))]
        assert ride[-1].event_time == row.dropoff_time and ride[-1].total_amount_usd == row.total_amount_usd
        covered = [e.distance_covered_miles for e in ride[1:-1]]
        assert covered == sorted(covered) and all(c <= row.trip_distance_miles for c in covered)


def test_the_same_seed_replays_the_same_paths() -> None:
    trips = synthesize_trips(50, seed=3).trips
    assert list(ride_events(trips, 60.0, seed=1)) == list(ride_events(trips, 60.0, seed=1))
    assert list(ride_events(trips, 60.0, seed=1)) != list(ride_events(trips, 60.0, seed=2))


@needs_data
@pytest.mark.parametrize("name", ["green_tripdata_2022-02.parquet", "taxis.csv", "taxis_raw.csv"])
def test_real_tlc_files_of_every_layout_become_valid_events(name: str) -> None:
    frame = read_trips(DATA_DIR / name)
    assert len(frame) > 5000 and sum(frame.skipped.values()) > 0  # the raw files do hold unusable rows
    events = list(ride_events(frame.trips.head(500), 300.0))
    assert Counter(e.event_type for e in events) == count_events(frame.trips.head(500), 300.0)


def test_a_fixed_rate_spaces_events_evenly() -> None:
    pacer = Pacer("rate", rate=100.0)
    now = 1000.0
    delays = [pacer.delay_before(datetime.now(UTC), now) for _ in range(5)]
    assert delays == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])


def test_event_time_replay_scales_ride_time_by_the_speedup() -> None:
    pacer = Pacer("event_time", speedup=60.0)
    start = datetime(2021, 1, 1, tzinfo=UTC)
    assert pacer.delay_before(start, 50.0) == 0.0
    assert pacer.delay_before(start + timedelta(minutes=10), 50.0) == pytest.approx(10.0)
    assert pacer.delay_before(start + timedelta(minutes=10), 58.0) == pytest.approx(2.0)  # 8 s already passed
