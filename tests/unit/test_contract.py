"""The wire contract: what it accepts, what it refuses and why, and its JSON Schema files."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import ValidationError

from schemas.events import RIDE_EVENT
from schemas.json_schema import JSON_SCHEMA_DIR, drifted_schemas, schema_documents
from shared.serde import decode_event, encode
from tests.factories import ride_completed, ride_progress, ride_started


def test_committed_json_schema_files_match_the_models() -> None:
    assert drifted_schemas() == [], "run `ridestream schemas` and commit schemas/json/"


def test_committed_openapi_documents_match_the_apps() -> None:
    from stack.openapi import drifted_openapi

    assert drifted_openapi() == [], "run `ridestream schemas` and commit schemas/openapi/"


@pytest.mark.parametrize(
    "event", [ride_started(), ride_progress(), ride_completed()], ids=lambda e: e.event_type
)
def test_every_event_round_trips_and_validates_against_its_json_schema(event) -> None:  # type: ignore[no-untyped-def]
    payload = encode(event)
    assert decode_event(payload) == event
    document = json.loads((JSON_SCHEMA_DIR / f"{event.event_type}.json").read_text())
    jsonschema.validate(json.loads(payload), document)
    jsonschema.validate(json.loads(payload), schema_documents()["ride_event.json"])


def test_timestamps_are_normalised_to_utc() -> None:
    event = RIDE_EVENT.validate_json(
        encode(ride_started()).replace(
            b'"event_time":"2021-01-15T08:30:00Z"', b'"event_time":"2021-01-15T03:30:00-05:00"'
        )
    )
    assert event.event_time.utcoffset().total_seconds() == 0
    assert event.event_time == ride_started().event_time


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pickup_zone": 266}, "less than or equal to 265"),
        ({"dropoff_zone": 0}, "greater than or equal to 1"),
        ({"trip_distance_miles": -1.0}, "greater than or equal to 0"),
        ({"trip_distance_miles": 5000.0}, "less than or equal to 200"),
        ({"unknown_field": 1}, "Extra inputs are not permitted"),
    ],
)
def test_ride_started_refuses_nonsense_with_an_actionable_message(overrides: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ride_started(**overrides)


def test_times_outside_the_years_a_ride_can_happen_in_are_dead_lettered_not_scored() -> None:
    """Year 1 once crashed the features' time-zone arithmetic (found by schemathesis through the backend)."""
    for year in (b"0001", b"9999"):
        payload = encode(ride_started()).replace(b'"2021-', b'"' + year + b"-")
        rejected = decode_event(payload)
        assert rejected.reason == "schema_violation" and "outside 1970..2099" in rejected.detail, payload


def test_naive_timestamps_are_refused() -> None:
    payload = encode(ride_started()).replace(b'08:30:00Z"', b'08:30:00"')
    rejected = decode_event(payload)
    assert rejected.reason == "schema_violation" and "timezone" in rejected.detail


def test_progress_beyond_the_trip_is_refused() -> None:
    with pytest.raises(ValidationError, match="beyond the trip"):
        ride_progress(covered=10.0)


def test_completed_before_pickup_is_refused() -> None:
    with pytest.raises(ValidationError, match="before pickup_time|not after pickup_time"):
        ride_completed(minutes=-5.0, duration_minutes=5.0)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe\x00garbage", "undecodable"),
        (b'{"event_type": "ride_star', "undecodable"),
        (b"", "undecodable"),
        (b'{"event_type": "ride_teleported"}', "unknown_event_type"),
        (
            encode(ride_started()).replace(b'"schema_version":1', b'"schema_version":2'),
            "unsupported_schema_version",
        ),
        (encode(ride_started()).replace(b'"pickup_zone":74', b'"pickup_zone":"seventy"'), "schema_violation"),
    ],
)
def test_bad_payloads_are_classified_never_raised(payload: bytes, reason: str) -> None:
    rejected = decode_event(payload)
    assert getattr(rejected, "reason", None) == reason
