"""Routing during a rollout: the ride is the unit, each prediction says which variant made it, and the plan
an instance serves follows from the control log alone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np

from consumers.features import StartColumns
from consumers.routing import EPOCH_HEADER, VARIANT_HEADER, RoutedScorer, ride_bucket
from consumers.scoring import StartScorer
from schemas.control import Gates, RolloutState, ServingState
from schemas.predictions import TipPrediction
from shared.reload import Plan, desired_plan
from shared.serde import encode
from tests.factories import ride_progress, ride_started

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Constant:
    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.full(len(features), self.value)


def as_is(predicted: np.ndarray, _columns: StartColumns) -> np.ndarray:
    return predicted


def tip(value: float, version: str) -> StartScorer:
    return StartScorer(TipPrediction, "tip", "predicted_tip_usd", as_is, Constant(value), version)


def test_the_bucket_is_stable_and_spreads_rides_evenly() -> None:
    rides = [f"ride-{n}" for n in range(20_000)]
    assert [ride_bucket(r) for r in rides[:50]] == [ride_bucket(r) for r in rides[:50]]
    assert all(0.0 <= ride_bucket(r) < 1.0 for r in rides)
    share = sum(ride_bucket(r) < 0.25 for r in rides) / len(rides)
    assert abs(share - 0.25) < 0.015


def test_a_split_routes_whole_rides_and_marks_every_prediction_with_its_variant() -> None:
    router = RoutedScorer(tip(1.0, "v-champ"), tip(2.0, "v-chall"), share=0.3, mode="split", epoch=7)
    events = [ride_started(f"r-{n}") for n in range(400)] + [ride_progress(f"r-{n}") for n in range(3)]
    result = router.score(events, NOW)
    assert len(result.predictions) == 400
    assert [position for position, _ in result.failures] == [400, 401, 402], "positions of the input batch"
    for prediction in result.predictions:
        decoded = prediction.decoded()
        challenger = ride_bucket(decoded.ride_id) < 0.3
        assert decoded.variant == ("challenger" if challenger else "champion")
        assert decoded.model_version == ("v-chall" if challenger else "v-champ")
        assert decoded.predicted_tip_usd == (2.0 if challenger else 1.0)
        assert encode(decoded) == prediction.value, "byte for byte what the contract writes"
        assert dict(prediction.headers or []) == {
            VARIANT_HEADER: decoded.variant.encode(),
            EPOCH_HEADER: b"7",
        }
        assert not prediction.shadow
    assert 80 < router.predicted["challenger"] < 160 and sum(router.predicted.values()) == 400


def test_a_shadow_leaves_users_the_champion_and_sends_the_challenger_aside() -> None:
    router = RoutedScorer(tip(1.0, "v-champ"), tip(2.0, "v-chall"), share=1.0, mode="shadow", epoch=2)
    result = router.score([ride_started(f"r-{n}") for n in range(50)], NOW)
    users = [p for p in result.predictions if not p.shadow]
    shadows = [p for p in result.predictions if p.shadow]
    assert len(users) == len(shadows) == 50
    assert all(b'"variant"' not in p.value and p.headers is None for p in users), "users' wire unchanged"
    assert {p.decoded().model_version for p in shadows} == {"v-chall"}


def test_the_plan_follows_the_control_log() -> None:
    serving = ServingState(model="tip", aliases={"champion": "1"}, updated_at=NOW)
    state = {"serving/tip": serving.model_dump_json().encode()}
    assert desired_plan(state, "tip", ["tip"], {"tip": "9"}, "tip-1") == Plan((("tip", "1"),))

    canary = RolloutState(
        service="tip",
        strategy="canary",
        champion={"tip": "1"},
        challenger={"tip": "2"},
        steps=[0.05, 0.25, 1.0],
        step=1,
        epoch=4,
        gates=Gates(),
        step_started_at=NOW,
        updated_at=NOW + timedelta(seconds=1),
    )
    state["rollout/tip"] = canary.model_dump_json().encode()
    plan = desired_plan(state, "tip", ["tip"], {}, "tip-1")
    assert plan == Plan((("tip", "1"),), (("tip", "2"),), 0.25, "split", 4)
    assert plan.label == "tip=1 | tip=2 @25% split"

    promoted = canary.model_copy(update={"status": "promoted", "epoch": 5})
    state["rollout/tip"] = promoted.model_dump_json().encode()
    assert desired_plan(state, "tip", ["tip"], {}, "tip-1") == Plan((("tip", "2"),), epoch=5), (
        "the outcome stands before the alias record arrives"
    )
    moved_later = serving.model_copy(update={"aliases": {"champion": "3"}, "updated_at": NOW + timedelta(1)})
    state["serving/tip"] = moved_later.model_dump_json().encode()
    assert desired_plan(state, "tip", ["tip"], {}, "tip-1").champion == (("tip", "3"),)

    rolling = canary.model_copy(update={"strategy": "rolling", "switched": ["tip-2"], "epoch": 6})
    state["rollout/tip"] = rolling.model_dump_json().encode()
    assert desired_plan(state, "tip", ["tip"], {}, "tip-2").champion == (("tip", "2"),)
    assert desired_plan(state, "tip", ["tip"], {}, "tip-1").champion == (("tip", "1"),)
    from schemas.control import Handover
    from shared.handover import HandoverStep

    switched = canary.model_copy(
        update={"strategy": "blue-green", "epoch": 7, "handovers": [Handover(epoch=7, to="green")]}
    )
    state["rollout/tip"] = switched.model_dump_json().encode()
    blue = desired_plan(state, "tip", ["tip"], {}, "tip-1", deployment="blue")
    green = desired_plan(state, "tip", ["tip"], {}, "tip-1.green", deployment="green")
    assert (blue.champion, green.champion) == ((("tip", "1"),), (("tip", "2"),)), (
        "green serves the challenger"
    )
    assert blue.handovers == green.handovers == (HandoverStep(7, "green"),) and blue.mode == ""
    state["rollout/tip"] = b"not json"
    assert desired_plan(state, "tip", ["tip"], {}, "tip-1").mode == "", "a bad record is ignored"
    assert json.loads(state["serving/tip"])["model"] == "tip"
