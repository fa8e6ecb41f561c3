"""The scorers, on plain lists of events: one prediction per event, the right ids and model versions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.compose import TransformedTargetRegressor
from sklearn.linear_model import LinearRegression

from consumers.cost.scorer import cost_scorer
from consumers.cost.scorer import load_scorer as load_cost
from consumers.duration.scorer import TripDurationScorer
from consumers.duration.scorer import load_scorer as load_duration
from consumers.features import (
    progress_columns_from_trips,
    progress_features,
    start_columns_from_trips,
    start_features,
)
from consumers.scoring import ScoreResult, encode_prediction, prediction_encoder
from consumers.tip.scorer import load_scorer as load_tip
from consumers.tip.scorer import tip_scorer
from consumers.training import train_models
from producer.synthetic import synthesize_trips
from schemas.events import RideProgress, RideStarted
from schemas.predictions import CostPrediction, DurationPrediction, TipPrediction
from shared.errors import ModelArtifactError
from shared.models import artifact_path
from shared.serde import encode
from tests.factories import PICKUP, ride_progress, ride_started

PRODUCED_AT = datetime(2021, 1, 15, 8, 45, tzinfo=UTC)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("scorer-models")
    train_models(synthesize_trips(4000, seed=11).trips, directory)
    return directory


def version_of(models_dir: Path, name: str) -> str:
    return str(json.loads((models_dir / f"{name}.json").read_text())["version"])


def started_batch(count: int) -> list[RideStarted]:
    return [
        ride_started(
            f"r-{i}",
            pickup_zone=1 + (i * 37) % 265,
            dropoff_zone=1 + (i * 91) % 265,
            trip_distance_miles=0.3 + (i % 40) * 0.7,
            payment_type=1 + i % 2,
            pickup_time=PICKUP + timedelta(minutes=17 * i),
            event_time=PICKUP + timedelta(minutes=17 * i),
        )
        for i in range(count)
    ]


def decoded(result: ScoreResult) -> list[Any]:
    """What a downstream consumer reads: every output validated by its contract model."""
    return [prediction.decoded() for prediction in result.predictions]


def assert_traces_its_event(
    prediction: object, event: RideStarted | RideProgress, model: str, version: str
) -> None:
    assert prediction.ride_id == event.ride_id  # type: ignore[attr-defined]
    assert prediction.source_event_id == event.event_id  # type: ignore[attr-defined]
    assert prediction.source_event_type == event.event_type  # type: ignore[attr-defined]
    assert prediction.source_event_time == event.event_time  # type: ignore[attr-defined]
    assert prediction.model_name == model and prediction.model_version == version  # type: ignore[attr-defined]
    assert prediction.produced_at == PRODUCED_AT  # type: ignore[attr-defined]


def test_tip_scorer_predicts_once_per_ride_started_and_nothing_recorded_for_cash(models_dir: Path) -> None:
    scorer = load_tip(models_dir)
    events = started_batch(200)
    result = scorer.score(events, PRODUCED_AT)
    assert result.failures == [] and len(result.predictions) == len(events)
    predictions = decoded(result)
    for prediction, event in zip(predictions, events):
        assert_traces_its_event(prediction, event, "tip", version_of(models_dir, "tip"))
        assert prediction.predicted_tip_usd >= 0
        if event.payment_type == 2:
            assert prediction.predicted_tip_usd == 0.0
    assert max(p.predicted_tip_usd for p in predictions) > 0
    assert scorer.model_version == version_of(models_dir, "tip") and scorer.scored_event_types == {
        "ride_started"
    }


def test_cost_scorer_predicts_a_non_negative_total_per_ride_started(models_dir: Path) -> None:
    scorer = load_cost(models_dir)
    events = started_batch(200)
    result = scorer.score(events, PRODUCED_AT)
    assert result.failures == [] and len(result.predictions) == len(events)
    predictions = decoded(result)
    for prediction, event in zip(predictions, events):
        assert_traces_its_event(prediction, event, "cost", version_of(models_dir, "cost"))
        assert prediction.predicted_total_usd >= 0
    longest = max(range(len(events)), key=lambda i: events[i].trip_distance_miles)
    shortest = min(range(len(events)), key=lambda i: events[i].trip_distance_miles)
    assert predictions[longest].predicted_total_usd > predictions[shortest].predicted_total_usd


def test_duration_scorer_uses_the_start_model_then_the_dynamic_model_in_event_order(models_dir: Path) -> None:
    scorer = load_duration(models_dir)
    start_version, dynamic_version = (
        version_of(models_dir, "duration"),
        version_of(models_dir, "dynamic_duration"),
    )
    events: list[RideStarted | RideProgress] = []
    for i in range(50):
        events.append(ride_started(f"r-{i}", trip_distance_miles=4.0))
        events.append(
            ride_progress(
                f"r-{i}",
                elapsed_s=60.0 * (1 + i % 20),
                covered=min(4.0, 0.2 * (1 + i % 20)),
                trip_distance_miles=4.0,
            )
        )
    result = scorer.score(events, PRODUCED_AT)

    assert result.failures == [] and len(result.predictions) == len(events)
    for prediction, event in zip(decoded(result), events):  # one per event, in the events' order
        if isinstance(event, RideStarted):
            assert_traces_its_event(prediction, event, "duration", start_version)
            assert prediction.elapsed_seconds == 0.0
            assert prediction.predicted_remaining_minutes == prediction.predicted_duration_minutes > 0
        else:
            assert_traces_its_event(prediction, event, "dynamic_duration", dynamic_version)
            assert prediction.elapsed_seconds == event.elapsed_seconds
            assert prediction.predicted_remaining_minutes >= 0
            assert prediction.predicted_duration_minutes == pytest.approx(
                event.elapsed_seconds / 60 + prediction.predicted_remaining_minutes
            )
    assert scorer.model_name == "duration+dynamic_duration"
    assert scorer.model_version == f"{start_version}+{dynamic_version}"


def test_the_dynamic_model_expects_less_time_left_near_the_end_of_the_ride(models_dir: Path) -> None:
    scorer = load_duration(models_dir)
    early = ride_progress("r-1", elapsed_s=120.0, covered=0.5, trip_distance_miles=5.0)
    late = ride_progress("r-1", elapsed_s=1200.0, covered=4.9, trip_distance_miles=5.0)
    first, second = decoded(scorer.score([early, late], PRODUCED_AT))
    assert second.predicted_remaining_minutes < first.predicted_remaining_minutes


def test_an_empty_batch_scores_to_nothing(models_dir: Path) -> None:
    for scorer in (load_tip(models_dir), load_cost(models_dir), load_duration(models_dir)):
        assert scorer.score([], PRODUCED_AT) == ScoreResult([], [])


def test_an_event_type_the_scorer_does_not_score_is_a_failure_not_a_crash(models_dir: Path) -> None:
    events = [ride_started("r-1"), ride_progress("r-2")]
    result = load_tip(models_dir).score(events, PRODUCED_AT)
    assert [p.ride_id for p in result.predictions] == ["r-1"]
    assert [(events[i].ride_id, "not scored" in reason) for i, reason in result.failures] == [("r-2", True)]


def exploding_model(features: np.ndarray, miles_column: int) -> TransformedTargetRegressor:
    """A real scikit-learn model that overflows to infinity on a far-out ride: log-target regression whose
    log grows 8 per mile, so beyond ~89 miles exp() is inf."""
    target = np.exp(8.0 * features[:, miles_column])
    model = TransformedTargetRegressor(
        regressor=LinearRegression(), func=np.log, inverse_func=np.exp, check_inverse=False
    )
    return model.fit(features, target)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_a_row_the_model_cannot_score_is_a_failure_and_the_rest_of_the_batch_is_scored() -> None:
    trips = synthesize_trips(300, seed=4).trips
    trips = trips[trips["trip_distance_miles"] < 60].reset_index(drop=True)
    start_model = exploding_model(start_features(start_columns_from_trips(trips)), miles_column=2)
    rows = np.arange(len(trips))
    progress_X = progress_features(
        progress_columns_from_trips(trips, rows, np.full(len(trips), 60.0), np.zeros(len(trips)))
    )
    progress_model = exploding_model(progress_X, miles_column=2)

    far = ride_started("far", trip_distance_miles=150.0)
    near = [ride_started(f"near-{i}", trip_distance_miles=1.0 + i) for i in range(3)]
    far_progress = ride_progress("far", elapsed_s=600.0, covered=10.0, trip_distance_miles=150.0)
    for scorer in (
        tip_scorer(start_model, "v1"),
        cost_scorer(start_model, "v1"),
        TripDurationScorer(start_model, "v1", progress_model, "v2"),
    ):
        batch = [near[0], far, near[1], far_progress, near[2]]
        result = scorer.score(batch, PRODUCED_AT)
        scored = [p.ride_id for p in result.predictions]
        assert scored == [e.ride_id for e in near], type(scorer).__name__
        failed = [batch[position] for position, _ in result.failures]
        assert far in failed
        assert all(
            "inf" in reason or "nan" in reason or "not scored" in reason for _, reason in result.failures
        )
    assert len(result.failures) == 2  # the duration scorer scores both event types: both far rows fail


def test_a_scorer_refuses_to_load_a_damaged_artifact(models_dir: Path, tmp_path: Path) -> None:
    # The plain artifact files alone: a folder without a registry (the registry path: test_registry.py).
    damaged = tmp_path / "models"
    damaged.mkdir()
    for file in models_dir.iterdir():
        if file.suffix in (".joblib", ".json"):
            (damaged / file.name).write_bytes(file.read_bytes())
    artifact_path(damaged, "dynamic_duration").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelArtifactError, match="dynamic_duration.joblib is corrupt"):
        load_duration(damaged)
    load_tip(damaged)  # the other services' artifacts are untouched


def test_every_prediction_a_scorer_encodes_is_what_the_contract_model_would_write(models_dir: Path) -> None:
    """A whole synthetic replay scores without failures; every output validates as its contract model, which
    re-encodes it to the very same bytes (same fields, order and formatting), and is keyed by its ride."""
    from producer.source import ride_events
    from producer.synthetic import synthesize_trips

    events = [
        e for e in ride_events(synthesize_trips(200, seed=9).trips, 120.0) if e.event_type != "ride_completed"
    ]
    produced_at = datetime.now(UTC)
    for scorer in (load_duration(models_dir), load_tip(models_dir), load_cost(models_dir)):
        scored = [e for e in events if e.event_type in scorer.scored_event_types]
        result = scorer.score(scored, produced_at)
        assert len(result.predictions) == len(scored) and not result.failures
        for prediction in result.predictions:
            model = prediction.decoded()
            assert encode(model) == prediction.value
            assert prediction.key == model.ride_id.encode() == prediction.ride_id.encode()


IDENTIFIERS = st.text(alphabet=st.sampled_from("abcXYZ019_.:-"), min_size=1, max_size=128)
TIMES = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2099, 12, 31), timezones=st.just(UTC))
LABELS = st.text(min_size=1, max_size=64)
VALUES = st.one_of(
    st.floats(min_value=0.0, allow_nan=False, allow_infinity=False),
    st.floats(min_value=0.0, max_value=1e4),
    st.sampled_from([0.0, -0.0, 1e-7, 9.999999999999998e15, 1e16, 1.5e300]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([DurationPrediction, TipPrediction, CostPrediction]),
    st.lists(
        st.tuples(IDENTIFIERS, IDENTIFIERS, TIMES, st.lists(VALUES, min_size=3, max_size=3)), max_size=8
    ),
    LABELS,
    LABELS,
    TIMES,
    st.sampled_from(["ride_started", "ride_progress"]),
)
def test_the_typed_encoder_writes_what_the_contract_model_writes_byte_for_byte(
    contract: Any,
    rows: list[tuple[str, str, datetime, list[float]]],
    model_name: str,
    model_version: str,
    produced_at: datetime,
    event_type: str,
) -> None:
    """Any ids, labels, times and non-negative floats (huge ones too, whose exponent msgspec spells
    otherwise): the batch encoder's bytes are the contract model's, row by row, keyed by the ride."""
    encoder = prediction_encoder(contract)
    events = [
        SimpleNamespace(ride_id=ride, event_id=event, event_type=event_type, event_time=time)
        for ride, event, time, _ in rows
    ]
    columns = [np.array([values[i] for *_, values in rows]) for i in range(len(encoder.value_fields))]
    encoded = encoder.encode(events, model_name, model_version, produced_at, columns)
    assert len(encoded) == len(rows)
    for prediction, (ride, event, time, values) in zip(encoded, rows):
        model = contract(
            ride_id=ride,
            source_event_id=event,
            source_event_type=event_type,
            source_event_time=time,
            model_name=model_name,
            model_version=model_version,
            produced_at=produced_at,
            **dict(zip(encoder.value_fields, values)),
        )
        assert prediction.value == encode(model) and prediction.key == ride.encode()


def test_an_id_json_would_escape_is_written_by_pydantic_not_copied_as_it_is() -> None:
    """The contract's id pattern lets no such id through; the encoder still writes valid, identical JSON
    for one (a quote, a backslash, a control character, non-ASCII), row by row beside plain ones."""
    encoder = prediction_encoder(DurationPrediction)
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    ids = ["plain-1", 'quo"te', "back\\slash", "new\nline", "zone-é", "plain-2"]
    events = [
        SimpleNamespace(ride_id=ride, event_id=f"{ride}:1", event_type="ride_started", event_time=now)
        for ride in ids
    ]
    columns = [np.arange(len(ids), dtype=np.float64) + 0.5 for _ in encoder.value_fields]
    encoded = encoder.encode(events, "duration", "7", now, columns)
    for prediction, event, row in zip(encoded, events, range(len(ids))):
        values = {name: float(column[row]) for name, column in zip(encoder.value_fields, columns)}
        expected = encode_prediction(DurationPrediction, event, "duration", "7", now, **values)  # type: ignore[arg-type]
        assert prediction.value == expected.value and prediction.key == event.ride_id.encode()
        assert json.loads(prediction.value)["ride_id"] == event.ride_id
