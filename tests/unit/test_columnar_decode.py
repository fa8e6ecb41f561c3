"""The columnar decoder against its oracle, the contract's pydantic models: same decision, same dead-letter
reason and detail, and equal events field by field, for valid events, the fault suite's hostile payloads
and generated near-misses (every bound of every field and one step past it, wrong types, missing, extra
and repeated fields, times in every spelling, bad UTF-8 and broken JSON)."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import annotated_types
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import field_validator

from bench.faults import hostile_payloads
from schemas.base import EARLIEST, LATEST
from schemas.events import RideCompleted, RideProgress, RideStarted
from shared.columnar import (
    ALL_EVENT_TYPES,
    DECODER_ENV,
    DECODERS,
    EVENT_MODELS,
    ContractDrift,
    DecodedRecord,
    _EventKind,
    decode_batch,
)
from shared.errors import ConfigError
from shared.runner import RunnerConfig, ServiceRunner, plan_batch
from shared.serde import Rejected, decode_event, encode
from tests.component.fakes import EchoScorer, FakeConsumer, FakeProducer, record
from tests.factories import ride_completed, ride_progress, ride_started
from tests.integration.test_fleet import POISON

# test_faust's POISON (same kinds plus a null value) is not imported: that module skips itself without faust.
NULL_VALUE: bytes | None = None
EXAMPLES = {RideStarted: ride_started(), RideProgress: ride_progress(), RideCompleted: ride_completed()}


def oracle(payload: bytes | None, models_for: frozenset[str]) -> DecodedRecord:
    decoded = decode_event(payload)
    if isinstance(decoded, Rejected) or decoded.event_type in models_for:
        return decoded
    return decoded.event_type


def assert_same(fast: DecodedRecord, expected: DecodedRecord, payload: bytes | None) -> None:
    if isinstance(expected, Rejected) or isinstance(expected, str):
        assert fast == expected, payload
        return
    assert type(fast) is type(expected), payload
    for name in type(expected).model_fields:
        got, want = getattr(fast, name), getattr(expected, name)
        # repr, not ==: -0.0 == 0.0, 1 == 1.0 and a time equals itself in another zone
        assert type(got) is type(want) and repr(got) == repr(want), (name, got, want, payload)
    assert fast.model_fields_set == expected.model_fields_set, payload
    assert encode(fast) == encode(expected) and fast == expected, payload


def assert_view_same(view: DecodedRecord, expected: DecodedRecord, payload: bytes | None) -> None:
    """A view (what the scorers read) reads like the oracle's model: every attribute, type and value."""
    if isinstance(expected, Rejected) or isinstance(expected, str):
        assert view == expected, payload
        return
    for name in type(expected).model_fields:
        got, want = getattr(view, name), getattr(expected, name)
        assert type(got) is type(want) and repr(got) == repr(want), (name, got, want, payload)
        if isinstance(want, datetime):
            assert got.tzinfo is want.tzinfo, (name, got, want, payload)


def assert_batch_matches_oracle(
    payloads: list[bytes | None], models_for: frozenset[str] = ALL_EVENT_TYPES
) -> list[DecodedRecord]:
    fast = decode_batch(payloads, models_for)
    views = decode_batch(payloads, models_for, views=True)
    assert len(fast) == len(views) == len(payloads)
    for got, view, payload in zip(fast, views, payloads):
        expected = oracle(payload, models_for)
        assert_same(got, expected, payload)
        assert_view_same(view, expected, payload)
    return fast


# ------------------------------------------------------------------------------------ near-miss values


def raw(value: Any) -> bytes:
    return json.dumps(value).encode()


def bounds_of(model: type, name: str) -> dict[str, Any]:
    """The field's annotated_types bounds, read from the model (never re-typed here)."""
    found: dict[str, Any] = {}
    for item in model.model_fields[name].metadata:  # type: ignore[attr-defined]
        for kind, key in (
            (annotated_types.Ge, "ge"),
            (annotated_types.Le, "le"),
            (annotated_types.Gt, "gt"),
            (annotated_types.Lt, "lt"),
            (annotated_types.MinLen, "min_length"),
            (annotated_types.MaxLen, "max_length"),
        ):
            if isinstance(item, kind):
                found[key] = getattr(item, key)
    return found


def number_edges(model: type, name: str, annotation: Any) -> list[bytes]:
    edges: list[bytes] = []
    for key in ("ge", "le", "gt", "lt"):
        bound = bounds_of(model, name).get(key)
        if bound is None:
            continue
        edges += [raw(bound), raw(float(bound)), raw(str(bound)), raw(bound + 1), raw(bound - 1)]
        if annotation is float:
            edges += [
                raw(math.nextafter(float(bound), math.inf)),
                raw(math.nextafter(float(bound), -math.inf)),
            ]
        else:
            edges += [raw(bound + 0.5), raw(float(bound) + 1e-9)]
    return [*edges, b"-0.0", b"0", b"1e999", b"-1e999", b"NaN", b"Infinity", b"true", b"null", b"1.23456789"]


def id_edges(model: type, name: str) -> list[bytes]:
    longest = bounds_of(model, name)["max_length"]
    return [
        raw(""), raw("a" * longest), raw("a" * (longest + 1)), raw("ride-1\n"), raw("\nride-1"),
        raw("ride 1"), raw("ride-é"), b'"ride\\u002d1"', b'"ride\\n"', raw("a:b.c_d-e"), raw(7), b"null",
        b'"\\ud800"',
    ]  # fmt: skip


def time_text(moment: datetime, fraction_digits: int, offset_minutes: int, style: int) -> str:
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    sep = "Tt "[style % 3]
    text = local.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if fraction_digits:
        text += "." + f"{local.microsecond:06d}{moment.microsecond % 10}987"[:fraction_digits]
    if offset_minutes == 0 and style % 2 == 0:
        return text + ("Z" if style % 4 == 0 else "z")
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return text + (f"{sign}{hours:02d}:{minutes:02d}" if style < 6 else f"{sign}{hours:02d}{minutes:02d}")


MICRO = timedelta(microseconds=1)
TIME_EDGES: list[bytes] = [
    raw(t.isoformat().replace("+00:00", "Z"))
    for t in (EARLIEST, EARLIEST - MICRO, LATEST, LATEST - MICRO, EARLIEST + MICRO)
] + [
    b'"2021-01-15T08:30:00"', b'"2021-01-15T08:30"', b'"2021-01-15T08:30Z"', b'"2021-01-15"',
    b'"2021-01-15T24:00:00Z"', b'"2021-01-15T23:59:60Z"', b'"2021-02-30T08:30:00Z"',
    b'"2021-01-15T08:30:00.Z"',
    b'"2021-01-15T08:30:00,5Z"', b'"0001-01-01T00:30:00+01:00"', b'"9999-12-31T23:30:00-01:00"',
    b'"2021-01-15T08:30:00+24:00"', b'"2021-01-15T08:30:00-00:00"', b'"2021-01-15T08:30:00.9999999Z"',
    b'"2021-01-15T08:30:00.1234564999Z"', b'"2021\\u002d01-15T08:30:00Z"', b"1610699400", b"1610699400.5",
    b'"1610699400"', b"null",
]  # fmt: skip


@st.composite
def times(draw: st.DrawFn) -> bytes:
    moment = draw(st.datetimes(min_value=datetime(1969, 12, 30), max_value=datetime(2100, 1, 2)))
    text = time_text(
        moment.replace(tzinfo=UTC),
        draw(st.sampled_from([0, 0, 3, 6, 7, 9])),
        draw(st.sampled_from([0, 0, 0, -300, 330, 59, -1439, 1439])),
        draw(st.integers(0, 7)),
    )
    return raw(text)


def valid_fields(event: Any) -> dict[str, bytes]:
    """An event's JSON fields as raw fragments, in its own order."""
    return {key: raw(value) for key, value in json.loads(encode(event)).items()}


def edges(model: type, name: str) -> list[bytes]:
    """Every edge value of one field: its bounds and one step past them, wrong types, odd spellings."""
    annotation = model.model_fields[name].annotation  # type: ignore[attr-defined]
    if name in ("event_id", "ride_id"):
        return id_edges(model, name)
    if name.endswith("_time"):
        return TIME_EDGES
    if name == "schema_version":
        return [b"1", b"1.0", b'"1"', b"true", b"0", b"2", b"null", b"-1"]
    if name == "event_type":
        return [b'"ride_cancelled"', b'"RIDE_STARTED"', b"1", b"null", b'"ride\\u005fstarted"']
    return number_edges(model, name, annotation)


@st.composite
def field_value(draw: st.DrawFn, model: type, name: str, current: bytes) -> bytes:
    annotation = model.model_fields[name].annotation  # type: ignore[attr-defined]
    if name in ("event_id", "ride_id"):
        return draw(st.sampled_from(id_edges(model, name)))
    if name.endswith("_time"):
        return draw(st.one_of(times(), st.sampled_from(TIME_EDGES)))
    if name in ("schema_version", "event_type"):
        return draw(st.sampled_from(edges(model, name)))
    if annotation in (int, float):
        bounds = bounds_of(model, name)
        low, high = bounds.get("ge", bounds.get("gt", -1e4)), bounds.get("le", bounds.get("lt", 1e4))
        inside = (
            st.integers(int(low), int(high)).map(raw)
            if annotation is int
            else st.floats(float(low), float(high), allow_nan=False).map(lambda x: repr(x).encode())
        )
        return draw(st.one_of(inside, st.sampled_from(number_edges(model, name, annotation))))
    return current


def assemble(pairs: list[tuple[str, bytes]]) -> bytes:
    return b"{" + b",".join(json.dumps(key).encode() + b":" + value for key, value in pairs) + b"}"


@st.composite
def near_miss_payloads(draw: st.DrawFn) -> bytes | None:
    model = draw(st.sampled_from(EVENT_MODELS))
    fields = valid_fields(EXAMPLES[model])
    for name in draw(st.lists(st.sampled_from(list(fields)), min_size=1, max_size=2)):
        fields[name] = draw(field_value(model, name, fields[name]))
    pairs = list(fields.items())
    shape = draw(st.integers(0, 12))
    if shape == 1:  # a missing field
        del pairs[draw(st.integers(0, len(pairs) - 1))]
    elif shape == 2:  # an extra one
        pairs.insert(
            draw(st.integers(0, len(pairs))), (draw(st.sampled_from(["extra", "Ride_id", ""])), b"1")
        )
    elif shape == 3:  # a repeated key: which one wins?
        name, value = pairs[draw(st.integers(0, len(pairs) - 1))]
        pairs.append((name, draw(field_value(model, name, value))))
    elif shape == 4:
        pairs = draw(st.permutations(pairs))
    payload = assemble(pairs)
    damage = draw(st.integers(0, 14))
    if damage == 1:
        return payload[: draw(st.integers(0, len(payload) - 1))]
    if damage == 2:
        at = draw(st.integers(0, len(payload)))
        return (
            payload[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80"])) + payload[at:]
        )
    if damage == 3:
        return draw(st.sampled_from([b" ", b"\xef\xbb\xbf", b"\n", b"[", b"1"])) + payload
    if damage == 4:
        return payload + draw(st.sampled_from([b" ", b"\n", b"}", b",", b"x"]))
    if damage == 5:
        return payload.decode("utf-8", "replace").encode("utf-16")
    return payload


@st.composite
def valid_payloads(draw: st.DrawFn) -> bytes:
    """Events the contract accepts, with their numbers and times drawn across each field's range."""
    model = draw(st.sampled_from(EVENT_MODELS))
    pickup = draw(st.datetimes(min_value=datetime(1970, 1, 3), max_value=datetime(2099, 12, 1)))
    pickup = pickup.replace(tzinfo=UTC)
    later = pickup + timedelta(microseconds=draw(st.integers(0, 86_400 * 10**6)))
    fields = valid_fields(EXAMPLES[model])
    fields["pickup_time"] = raw(
        time_text(pickup, draw(st.sampled_from([0, 6])), draw(st.sampled_from([0, -300, 60])), 0)
    )
    fields["event_time"] = raw(time_text(later, 6, 0, 0))
    if "dropoff_time" in fields:
        fields["dropoff_time"] = raw(time_text(later + MICRO, 6, 120, 2))
    for name in fields:
        annotation = model.model_fields[name].annotation
        bounds = bounds_of(model, name)
        if annotation is float and "le" in bounds:
            low = float(bounds.get("ge", bounds.get("gt", 0.0)))
            value = draw(st.floats(low, float(bounds["le"]), exclude_min="gt" in bounds))
            fields[name] = repr(value).encode()
        elif annotation is int and "le" in bounds:
            fields[name] = raw(draw(st.integers(bounds["ge"], bounds["le"])))
    if model is RideProgress:
        fields["distance_covered_miles"] = raw(
            json.loads(fields["trip_distance_miles"]) * draw(st.floats(0, 1.2))
        )
    return assemble(list(fields.items()))


def hostile() -> list[bytes | None]:
    rng = random.Random(5)
    valid = encode(ride_started())
    return [*hostile_payloads(45, rng, valid), *POISON, NULL_VALUE, b"{}", b"[]", b"null"]


PAYLOADS = st.one_of(valid_payloads(), near_miss_payloads(), st.sampled_from(hostile()))
MODELS_FOR = st.sampled_from([ALL_EVENT_TYPES, frozenset({"ride_started", "ride_progress"}), frozenset()])


# ----------------------------------------------------------------------------------------------- tests


def test_every_hostile_payload_of_the_fault_suite_gets_pydantics_reason_and_detail() -> None:
    payloads = hostile()
    fast = assert_batch_matches_oracle(payloads)
    assert all(isinstance(decoded, Rejected) for decoded in fast[:45])


def test_valid_events_are_decoded_without_asking_pydantic(monkeypatch: pytest.MonkeyPatch) -> None:
    payloads: list[bytes | None] = [encode(e) for e in EXAMPLES.values()] * 3
    payloads.append(
        encode(ride_started()).replace(
            b'"event_time":"2021-01-15T08:30:00Z"', b'"event_time":"2021-01-15T03:30:00.5-05:00"'
        )
    )
    expected = [decode_event(p) for p in payloads]
    monkeypatch.setattr(
        "shared.columnar.decode_event", lambda payload: pytest.fail(f"asked pydantic: {payload!r}")
    )
    fast = decode_batch(payloads)
    for got, want, payload in zip(fast, expected, payloads):
        assert_same(got, want, payload)


def test_a_time_pushed_off_the_calendar_by_its_offset_is_a_schema_violation_not_a_crash() -> None:
    payload = encode(ride_started()).replace(b"2021-01-15T08:30:00Z", b"0001-01-01T00:30:00+01:00", 1)
    decoded = assert_batch_matches_oracle([payload])[0]
    assert isinstance(decoded, Rejected) and decoded.reason == "schema_violation"


def test_events_of_types_the_caller_passes_over_come_back_as_their_type_only() -> None:
    payloads: list[bytes | None] = [encode(ride_started()), encode(ride_completed()), b"garbage"]
    decoded = assert_batch_matches_oracle(payloads, frozenset({"ride_started"}))
    assert isinstance(decoded[0], RideStarted) and decoded[1] == "ride_completed"


def test_every_edge_of_every_field_alone_decodes_as_pydantic_decodes_it() -> None:
    payloads: list[bytes | None] = []
    for model, event in EXAMPLES.items():
        for name in valid_fields(event):
            for value in edges(model, name):
                payloads.append(assemble(list({**valid_fields(event), name: value}.items())))
    fast = assert_batch_matches_oracle(payloads)
    assert sum(not isinstance(d, Rejected) for d in fast) > 50, "the edges should include accepted values"


def cross_field_edges() -> list[bytes | None]:
    """Each model validator's edge and a step either side: times equal and a microsecond apart (also across
    an offset), distances at the trip's limit and the next float above and below it."""
    payloads: list[bytes | None] = []
    pickup = datetime(2021, 1, 15, 8, 30, tzinfo=UTC)
    for model, later in (
        (RideStarted, "event_time"),
        (RideProgress, "event_time"),
        (RideCompleted, "dropoff_time"),
    ):
        for step in (-MICRO, timedelta(0), MICRO, timedelta(hours=-1), timedelta(hours=1)):
            for offset in (0, -300):
                fields = valid_fields(EXAMPLES[model])
                fields["pickup_time"] = raw(time_text(pickup, 6, 0, 0))
                fields["event_time"] = raw(time_text(pickup + max(step, timedelta(0)), 6, 0, 0))
                fields[later] = raw(time_text(pickup + step, 6, offset, 0))
                payloads.append(assemble(list(fields.items())))
    for planned in (0.0, 0.05, 0.9, 1.0, 1.1, 3.7, 100.0, 150.0):
        limit = max(planned * 1.10, planned + 0.1)
        for covered in (limit, math.nextafter(limit, math.inf), math.nextafter(limit, -math.inf), planned):
            fields = valid_fields(EXAMPLES[RideProgress])
            fields["trip_distance_miles"], fields["distance_covered_miles"] = raw(planned), raw(covered)
            payloads.append(assemble(list(fields.items())))
    return payloads


def test_every_model_validators_edge_decodes_as_pydantic_decodes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = cross_field_edges()
    fast = assert_batch_matches_oracle(payloads)
    refused = {payload for payload, d in zip(payloads, fast) if isinstance(d, Rejected)}
    assert refused and len(refused) < len(fast), "the edges should include accepted and refused events"
    # ...and a rule stricter than its validator would hand valid events to pydantic: only refusals go there.
    asked: set[bytes | None] = set()
    monkeypatch.setattr("shared.columnar.decode_event", lambda p: asked.add(p) or decode_event(p))
    decode_batch(payloads)
    assert asked == refused


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PAYLOADS, min_size=1, max_size=12), MODELS_FOR)
def test_a_batch_decodes_as_pydantic_decodes_each_record(
    payloads: list[bytes | None], models_for: frozenset[str]
) -> None:
    assert_batch_matches_oracle(payloads, models_for)


@pytest.mark.slow
@settings(max_examples=8000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PAYLOADS, min_size=1, max_size=30), MODELS_FOR)
def test_a_batch_decodes_as_pydantic_decodes_each_record_long_run(
    payloads: list[bytes | None], models_for: frozenset[str]
) -> None:
    assert_batch_matches_oracle(payloads, models_for)


def test_the_pydantic_switch_decodes_every_record_with_pydantic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DECODER_ENV, "pydantic")
    monkeypatch.setattr("shared.columnar._structs", lambda payloads: pytest.fail("msgspec was used"))
    assert_batch_matches_oracle([encode(ride_progress()), b"{"])


def test_an_unknown_decoder_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DECODER_ENV, "fastest")
    with pytest.raises(ConfigError, match=DECODER_ENV):
        decode_batch([encode(ride_started())])


def test_a_contract_rule_the_decoder_does_not_know_stops_its_build() -> None:
    class Stricter(RideStarted):
        @field_validator("ride_id")
        @classmethod
        def _no_test_rides(cls, value: str) -> str:
            if value.startswith("test"):
                raise ValueError("test ride")
            return value

    with pytest.raises(ContractDrift, match="validators"):
        _EventKind(Stricter)


def test_the_runner_plans_a_batch_alike_with_either_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    values: list[bytes | None] = [*hostile()[:20], encode(ride_started()), encode(ride_progress())]
    values += [encode(ride_completed()), b"x" * 70_000]  # (a completed ride is passed over; oversized)
    records = [record(value, offset=offset) for offset, value in enumerate(values)]
    plans = {}
    for decoder in DECODERS:
        monkeypatch.setenv(DECODER_ENV, decoder)
        plans[decoder] = plan_batch(records, frozenset({"ride_started", "ride_progress"}), 64 * 1024)
    columnar, pydantic = plans["columnar"], plans["pydantic"]
    assert columnar.to_score == pydantic.to_score
    assert len(columnar.to_score) == 2
    for view, model in zip(columnar.events(), pydantic.events()):  # what the scorers read: views
        assert_view_same(view, model, None)
    assert columnar.refused == pydantic.refused and columnar.ignored == pydantic.ignored == ["ride_completed"]
    assert columnar.undecoded == pydantic.undecoded


def test_a_service_with_an_unknown_decoder_stops_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DECODER_ENV, "fastest")
    with pytest.raises(ConfigError, match=DECODER_ENV):
        ServiceRunner(FakeConsumer([]), FakeProducer(), EchoScorer(), RunnerConfig("tip", "out", "dlq"))
