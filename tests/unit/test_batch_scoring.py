"""The batch job's own steps, without a database: the contract checked through shared/columnar.py's Structs
accepts what pydantic accepts and refuses with pydantic's reason and detail; the models' columns are those of
the events; the binary COPY payload carries each prediction's exact number, id and time."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from consumers.batch.scoring import (
    RIDE_COLUMNS,
    CopyKeys,
    ModelPredictions,
    ScoredRides,
    start_columns_of,
    started_fields,
    validated_rides,
)
from consumers.features import start_columns_from_events
from schemas.events import RideStarted
from shared.batch_store import PREDICTION_COPY_ORDER
from shared.serde import classify, short_detail

PICKUP = datetime(2021, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)


def ride(n: int, **changes: Any) -> tuple[Any, ...]:
    fields = {
        "ride_id": f"green_2021-02-{n:06d}", "pickup_time": PICKUP + timedelta(minutes=n), "pickup_zone": 43,
        "dropoff_zone": 151, "trip_distance_miles": 1.25 + n, "passenger_count": 1, "payment_type": 2,
        "vendor_id": 2, "rate_code": 1, "trip_type": 1,
    }  # fmt: skip
    fields.update(changes)
    return tuple(fields[name] for name in RIDE_COLUMNS)


ODD_RIDES = [
    ride(1, pickup_zone=0),
    ride(2, dropoff_zone=266),
    ride(3, trip_distance_miles=math.nan),
    ride(4, trip_distance_miles=math.inf),
    ride(5, trip_distance_miles=-0.5),
    ride(6, passenger_count=None),
    ride(7, ride_id="bad id!"),
    ride(8, ride_id=""),
    ride(9, pickup_time=datetime(1969, 12, 31, tzinfo=UTC)),
    ride(10, pickup_time=datetime(2100, 1, 1, tzinfo=UTC)),
    ride(11, pickup_time=datetime(2021, 2, 3, 4, 5, 6)),  # naive
    ride(12, pickup_time=datetime(2021, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-5)))),  # accepted
    ride(13, payment_type=2.0),  # pydantic's lax mode: accepted as 2
    ride(14, vendor_id="2"),  # likewise
    ride(15, rate_code=7),
    ride(16, trip_type=True),
    ride(17, ride_id="x" * 129),
]


def pydantic_verdicts(rides: list[tuple[Any, ...]]) -> tuple[list[RideStarted], list[tuple[Any, ...]]]:
    accepted, refused = [], []
    for row in rides:
        fields = started_fields(dict(zip(RIDE_COLUMNS, row)))
        try:
            accepted.append(RideStarted.model_validate(fields))
        except ValidationError as error:
            refused.append((fields["ride_id"], fields["pickup_time"], classify(error), short_detail(error)))
    return accepted, refused


@pytest.mark.parametrize("rides", [[ride(n) for n in range(50)], [ride(n) for n in range(20)] + ODD_RIDES])
def test_the_rides_accepted_and_refused_are_pydantics_with_its_reasons_and_details(
    rides: list[tuple[Any, ...]],
) -> None:
    events, expected_refusals = pydantic_verdicts(rides)
    accepted, refused = validated_rides(rides)
    assert refused == expected_refusals
    assert accepted == [tuple(getattr(event, name) for name in RIDE_COLUMNS) for event in events]
    assert all(row[RIDE_COLUMNS.index("pickup_time")].tzinfo is UTC for row in accepted)
    ride_ids, pickups, columns = start_columns_of(accepted)
    assert ride_ids == [event.ride_id for event in events]
    assert pickups == [event.pickup_time for event in events]
    expected = start_columns_from_events(events)
    for name in vars(expected):
        got, want = getattr(columns, name), getattr(expected, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name


def test_an_empty_chunk_has_empty_columns() -> None:
    assert validated_rides([]) == ([], [])
    ride_ids, pickups, columns = start_columns_of([])
    assert ride_ids == [] and pickups == [] and len(columns.pickup_epoch_s) == 0


def parse_copy_binary(payload: bytes) -> list[tuple[Any, ...]]:
    """COPY's binary format, read back: the test's own reader of the six predictions columns."""
    assert payload.startswith(b"PGCOPY\n\xff\r\n\x00" + bytes(8)) and payload.endswith(b"\xff\xff")
    at, rows = 19, []
    while payload[at : at + 2] != b"\xff\xff":
        (count,) = struct.unpack_from(">h", payload, at)
        at += 2
        values = []
        for _ in range(count):
            (size,) = struct.unpack_from(">i", payload, at)
            values.append(payload[at + 4 : at + 4 + size])
            at += 4 + size
        rows.append(tuple(values))
    assert at == len(payload) - 2
    return rows


def test_the_binary_copy_carries_each_number_id_and_time_exactly() -> None:
    ride_ids = ["a1", "green_2021-02-000001", "b:2", "green_2021-02-000003-r10"]
    pickups = [PICKUP + timedelta(microseconds=n * 999_999_937) for n in range(4)]
    numbers = np.array([0.1 + 0.2, 1e-300, 12.345678901234567, 7.0])
    keep = np.array([True, True, False, True])
    keys = CopyKeys.of(ride_ids, pickups)
    kept = [ride_ids[n] for n in np.flatnonzero(keep)]
    models = [
        ModelPredictions("duration", "3", ride_ids, numbers.tolist(), pickups, numbers, keys),
        ModelPredictions(
            "tip",
            "v12",
            kept,
            numbers[keep].tolist(),
            [pickups[n] for n in np.flatnonzero(keep)],
            numbers[keep],
            keys[keep],
        ),  # fmt: skip
    ]
    rows = parse_copy_binary(ScoredRides(models, []).copy_binary("run42"))
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    decoded = {
        (ride.decode(), model.decode()): (
            struct.unpack(">d", value)[0],
            epoch + timedelta(microseconds=struct.unpack(">q", pickup)[0]),
            version.decode(),
            run.decode(),
        )  # fmt: skip
        for value, ride, pickup, model, version, run in rows
    }
    assert PREDICTION_COPY_ORDER == (
        "prediction",
        "ride_id",
        "pickup_time",
        "model_name",
        "model_version",
        "run_id",
    )
    expected = {
        (r, m.model_name): (v, p, m.model_version, "run42")
        for m in models
        for r, v, p in zip(m.ride_ids, m.values, m.pickup_times)
    }
    assert len(rows) == 7
    assert decoded == expected
