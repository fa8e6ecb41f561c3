"""The evaluator's join against a brute-force answer: any arrival order, duplicates, and a crash at any point
followed by a restart from the last snapshot all give the same figures, each pair counted once."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.evaluator.join import (
    FigureKey,
    Outcome,
    PartitionJoin,
    Prediction,
    Sums,
    judged,
    progress_segment,
)

OUTCOMES, PREDICTIONS = "rides", "predictions"


@dataclass(frozen=True)
class Arrival:
    ride_id: str
    record: Prediction | Outcome


@st.composite
def streams(draw: st.DrawFn) -> list[Arrival]:
    """Rides with an outcome (or none), their predictions (some duplicated), in one topic-order-keeping
    interleaving of the two topics."""
    outcomes: list[tuple[str, Outcome]] = []
    predictions: list[tuple[str, Prediction]] = []
    for ride in range(draw(st.integers(1, 12))):
        ride_id = f"r{ride}"
        minutes = draw(st.floats(1, 90))
        if draw(st.booleans()) or ride == 0:
            outcomes.append(
                (
                    ride_id,
                    Outcome(
                        OUTCOMES,
                        len(outcomes),
                        minutes,
                        draw(st.floats(0, 20)),
                        draw(st.floats(3, 200)),
                        draw(st.booleans()),
                    ),
                )
            )
        for n in range(draw(st.integers(0, 4))):
            service = draw(st.sampled_from(("duration", "tip", "cost")))
            elapsed = 0.0 if service != "duration" or n == 0 else draw(st.floats(1, minutes * 60))
            model = "duration" if service == "duration" and elapsed == 0 else service
            version = draw(st.sampled_from(("a", "b")))
            prediction = Prediction(
                PREDICTIONS,
                len(predictions),
                service,
                f"{ride_id}-e{n}",
                model,
                version,
                draw(st.floats(0, 100)),
                elapsed,
            )
            for _ in range(draw(st.sampled_from((1, 1, 2)))):  # some delivered twice upstream
                predictions.append((ride_id, prediction._replace(offset=len(predictions))))
    order = draw(st.permutations([OUTCOMES] * len(outcomes) + [PREDICTIONS] * len(predictions)))
    sources = {OUTCOMES: iter(outcomes), PREDICTIONS: iter(predictions)}
    return [Arrival(*next(sources[topic])) for topic in order]


def expected_figures(arrivals: list[Arrival]) -> dict[FigureKey, Sums]:
    """Every distinct prediction of a ride with an outcome, judged once: no join machinery involved."""
    outcomes = {a.ride_id: a.record for a in arrivals if isinstance(a.record, Outcome)}
    distinct = {
        (a.ride_id, a.record.service, a.record.source_event_id, a.record.version): a.record
        for a in arrivals
        if isinstance(a.record, Prediction)
    }
    figures: dict[FigureKey, Sums] = {}
    for (ride_id, *_), prediction in distinct.items():
        outcome = outcomes.get(ride_id)
        verdict = judged(prediction, outcome) if outcome else None
        if verdict is not None:
            key = FigureKey(prediction.service, prediction.model, prediction.version, verdict[0])
            figures.setdefault(key, Sums()).add(verdict[1])
    return figures


def feed(join: PartitionJoin, arrivals: list[Arrival]) -> None:
    for arrival in arrivals:
        if isinstance(arrival.record, Outcome):
            join.add_outcome(arrival.ride_id, arrival.record, 0.0)
        else:
            join.add_prediction(arrival.ride_id, arrival.record, 0.0)


def assert_same(found: dict[FigureKey, Sums], expected: dict[FigureKey, Sums]) -> None:
    assert set(found) == set(expected)
    for key, sums in expected.items():
        assert found[key].count == sums.count, key
        assert found[key].sq_error == pytest.approx(sums.sq_error, rel=1e-9, abs=1e-9)
        assert found[key].error == pytest.approx(sums.error, rel=1e-9, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(streams())
def test_any_arrival_order_judges_every_distinct_prediction_once(arrivals: list[Arrival]) -> None:
    join = PartitionJoin(0)
    feed(join, arrivals)
    assert_same(join.sums, expected_figures(arrivals))


@settings(max_examples=300, deadline=None)
@given(streams(), st.data())
def test_a_crash_after_any_snapshot_resumes_without_counting_anything_twice(
    arrivals: list[Arrival], data: st.DataObject
) -> None:
    snapshot_at = data.draw(st.integers(0, len(arrivals)))
    crash_at = data.draw(st.integers(snapshot_at, len(arrivals)))
    first = PartitionJoin(0)
    feed(first, arrivals[:snapshot_at])
    snapshot = first.snapshot()
    feed(first, arrivals[snapshot_at:crash_at])  # processed, then lost in the crash

    restarted = PartitionJoin.restore(snapshot)
    resume = snapshot["resume"]
    # The consumer re-reads each topic from its committed (resume) offset, in the same arrival order.
    replay = [a for a in arrivals if a.record.offset >= resume.get(a.record.topic, 0)]
    feed(restarted, replay)
    assert_same(restarted.sums, expected_figures(arrivals))


@settings(max_examples=300, deadline=None)
@given(streams(), st.data())
def test_restarts_one_after_another_mid_replay_count_nothing_twice_and_hold_nothing_back(
    arrivals: list[Arrival], data: st.DataObject
) -> None:
    join = PartitionJoin(0)
    position = 0  # arrivals before this are durable in the latest snapshot's resume
    snapshot = join.snapshot()
    for _restart in range(data.draw(st.integers(1, 4))):
        resume = snapshot["resume"]
        replay = [a for a in arrivals if a.record.offset >= resume.get(a.record.topic, 0)]
        cut = data.draw(st.integers(0, len(replay)))
        join = PartitionJoin.restore(snapshot)
        feed(join, replay[:cut])
        snapshot = join.snapshot()  # taken mid-replay, then the process dies
        position = max(position, cut)
    join = PartitionJoin.restore(snapshot)
    resume = snapshot["resume"]
    feed(join, [a for a in arrivals if a.record.offset >= resume.get(a.record.topic, 0)])
    assert_same(join.sums, expected_figures(arrivals))
    outcomes = {a.ride_id for a in arrivals if isinstance(a.record, Outcome)}
    unmatched = {
        (a.ride_id, a.record.source_event_id)
        for a in arrivals
        if isinstance(a.record, Prediction) and a.ride_id not in outcomes
    }
    waiting = sum(len(r.waiting) for r in join.rides.values())
    assert waiting <= len(unmatched) * 2, "only rides without an outcome wait (each copy of a duplicate)"
    assert all(ride_id not in outcomes or r.outcome is not None for ride_id, r in join.rides.items()), (
        "no half-ride whose outcome was judged before the snapshot waits again"
    )


def test_a_prediction_waits_for_its_outcome_at_most_max_wait() -> None:
    join = PartitionJoin(0)
    join.add_prediction("late", Prediction(PREDICTIONS, 0, "cost", "e1", "cost", "a", 20.0, 0.0), now=0.0)
    join.add_prediction("kept", Prediction(PREDICTIONS, 1, "cost", "e2", "cost", "a", 30.0, 0.0), now=50.0)
    assert join.expire(now=70.0, max_wait_s=60.0, grace_s=10.0) == 1
    join.add_outcome("late", Outcome(OUTCOMES, 0, 10.0, 0.0, 25.0, True), now=71.0)
    join.add_outcome("kept", Outcome(OUTCOMES, 1, 10.0, 0.0, 25.0, True), now=71.0)
    (key,) = join.sums
    assert key == FigureKey("cost", "cost", "a", "all") and join.sums[key].count == 1
    assert join.sums[key].bias == pytest.approx(5.0)
    assert join.resume_offsets() == {PREDICTIONS: 1, OUTCOMES: 0}, "held rides are re-read after a restart"
    assert join.expire(now=82.0, max_wait_s=60.0, grace_s=10.0) == 0 and not join.rides
    assert join.resume_offsets() == {PREDICTIONS: 2, OUTCOMES: 2}


def test_segments_say_what_each_error_is_about() -> None:
    outcome = Outcome(OUTCOMES, 0, 20.0, 3.0, 40.0, card=False)
    start = Prediction(PREDICTIONS, 0, "duration", "e", "duration", "a", 25.0, 0.0)
    assert judged(start, outcome) == ("start", 5.0)
    midway = start._replace(model="dynamic_duration", elapsed_seconds=600.0, value=18.0)
    assert judged(midway, outcome) == ("50-75%", -2.0)
    assert judged(start._replace(service="tip", value=2.0), outcome) is None, "cash tips go unrecorded"
    assert judged(start._replace(service="tip", value=2.0), outcome._replace(card=True)) == ("card", -1.0)
    assert progress_segment(10_000.0, 20.0) == "75-100%" and progress_segment(0.0, 20.0) == "0-25%"
    assert math.isnan(Sums().rmse)
