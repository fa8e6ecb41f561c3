"""Rollout decisions, pure: a canary's gates, the A/B report's significance, the start checks."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from consumers.evaluator.join import FigureKey, Sums
from consumers.registry import service_spec
from schemas.control import Gates, RolloutState
from shared.errors import ConfigError
from stack import deploy

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def canary(step: int = 0, **gates: float) -> RolloutState:
    return RolloutState(
        service="tip",
        strategy="canary",
        champion={"tip": "1"},
        challenger={"tip": "2"},
        steps=[0.2, 0.5, 1.0],
        step=step,
        epoch=3,
        gates=Gates(min_rides=100, tolerance=0.1, **gates),  # type: ignore[arg-type]
        step_started_at=NOW,
        artifacts={"tip/1": "aaa", "tip/2": "bbb"},
        updated_at=NOW,
    )


def sums_of(errors: list[float]) -> Sums:
    total = Sums()
    for error in errors:
        total.add(error)
    return total


def figures(champion: list[float], challenger: list[float]) -> dict[FigureKey, Sums]:
    return {
        FigureKey("tip", "tip", "aaa", "card"): sums_of(champion),
        FigureKey("tip", "tip", "bbb", "card"): sums_of(challenger),
        # cash rides are not the tip's headline figure: never part of the evidence
        FigureKey("tip", "tip", "bbb", "other"): sums_of([100.0] * 500),
    }


def noise(n: int, scale: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0, scale) for _ in range(n)]


def test_a_step_waits_for_enough_rides_then_advances_and_the_last_step_promotes() -> None:
    waiting = deploy.canary_verdict(canary(), figures(noise(500, 1.0, 1), noise(40, 1.0, 2)), [])
    assert waiting.action is None and "40/500 of 100" in waiting.reason
    good = figures(noise(500, 1.0, 1), noise(300, 1.02, 2))
    assert deploy.canary_verdict(canary(), good, []).action == "advance"
    assert deploy.canary_verdict(canary(step=2), good, []).action == "promote"


def test_a_worse_challenger_is_rolled_back_with_its_evidence() -> None:
    verdict = deploy.canary_verdict(canary(), figures(noise(500, 1.0, 1), noise(300, 1.5, 2)), [])
    assert verdict.action == "rollback" and "exceeds the champion's" in verdict.reason
    assert verdict.evidence["tip"]["challenger"]["count"] == 300


def test_instances_reports_fail_a_step_at_once() -> None:
    good = figures(noise(500, 1.0, 1), noise(300, 1.0, 2))
    refused = [{"instance": "tip-1", "epoch": 3, "refused": "tip=2: load failed: corrupt"}]
    assert deploy.canary_verdict(canary(), good, refused).action == "rollback"
    broken = [
        {"instance": "tip-1", "epoch": 3, "predicted": {"challenger": 90}, "unscoreable": {"challenger": 10}}
    ]
    assert "unscoreable" in deploy.canary_verdict(canary(), good, broken).reason
    slow = [{"instance": "tip-1", "epoch": 3, "p99_ms": 5000.0}]
    assert "p99" in deploy.canary_verdict(canary(max_p99_ms=100.0), good, slow).reason
    stale = [{"instance": "tip-1", "epoch": 2, "p99_ms": 5000.0}]
    assert deploy.canary_verdict(canary(max_p99_ms=100.0), good, stale).action == "advance", "older epochs"


def test_a_step_is_judged_on_its_own_rides() -> None:
    state = canary(step=1)
    before = figures(noise(500, 1.0, 1), noise(300, 3.0, 2))  # the challenger was bad in an earlier step...
    state = state.model_copy(update={"baseline": deploy.baseline_of(before, [("tip", "bbb")])})
    later = figures(noise(500, 1.0, 1), noise(300, 3.0, 2) + noise(300, 1.0, 3))
    assert deploy.canary_verdict(state, later, []).action == "advance", "...and is judged on this step's"


def test_the_report_names_a_winner_only_when_the_difference_is_significant() -> None:
    state = canary()
    same = deploy.report(state, figures(noise(2000, 1.0, 1), noise(2000, 1.0, 2)))["models"]["tip"]
    assert same["winner"] is None and same["verdict"].startswith("no significant difference")
    low, high = same["champion"]["rmse_95"]
    assert low < same["champion"]["rmse"] < high
    better = deploy.report(state, figures(noise(2000, 1.3, 1), noise(2000, 1.0, 2)))["models"]["tip"]
    assert better["winner"] == "challenger" and better["challenger_minus_champion"]["p_value"] < 0.05


def test_start_options_are_checked() -> None:
    spec = service_spec("duration")
    assert deploy.parse_challenger(spec, "3") == {"duration": "3", "dynamic_duration": "3"}
    assert deploy.parse_challenger(spec, "duration=3") == {"duration": "3"}
    with pytest.raises(ConfigError, match="not a model of duration"):
        deploy.parse_challenger(spec, "tip=3")
    assert deploy.steps_for("canary", None, None) == [0.05, 0.25, 0.5, 1.0]
    assert deploy.steps_for("ab", None, None) == [0.5]
    with pytest.raises(ConfigError, match="end at 100%"):
        deploy.steps_for("canary", [0.5, 0.2], None)


def rolling(switched: list[str], epoch: int = 5, consumed_at_switch: int = 100) -> RolloutState:
    from schemas.control import Decision

    decisions = [
        Decision(at=NOW, action="advance", step=0, reason="", evidence={"consumed": consumed_at_switch})
    ]
    return canary().model_copy(
        update={
            "strategy": "rolling",
            "steps": [1.0],
            "switched": switched,
            "epoch": epoch,
            "decisions": decisions,
        }
    )


def report_of(
    name: str,
    serving: str,
    epoch: int = 5,
    consumed: int = 500,
    refused: str = "",
    dead_lettered: int = 0,
    lag: int = 0,
) -> dict[str, object]:
    return {
        "instance": name,
        "serving": serving,
        "epoch": epoch,
        "consumed": consumed,
        "refused": refused,
        "dead_lettered": dead_lettered,
        "lag": lag,
        "updated_at": NOW.isoformat(),
    }


def test_a_roll_switches_one_healthy_instance_after_another_and_halts_on_a_refusal() -> None:
    fleet = [report_of("cost-1", "tip=2"), report_of("cost-2", "tip=1"), report_of("cost-3", "tip=1")]
    first = deploy.rolling_verdict(rolling([]), fleet, NOW)
    assert first.action == "advance" and first.evidence["next"] == "cost-1"
    nxt = deploy.rolling_verdict(rolling(["cost-1"]), fleet, NOW)
    assert nxt.action == "advance" and nxt.evidence["next"] == "cost-2"
    switching = [report_of("cost-1", "tip=1", epoch=4), *fleet[1:]]
    assert deploy.rolling_verdict(rolling(["cost-1"]), switching, NOW).action is None
    idle = [report_of("cost-1", "tip=2", consumed=100), *fleet[1:]]
    assert "waiting for it to score" in deploy.rolling_verdict(rolling(["cost-1"]), idle, NOW).reason
    all_on = [report_of(f"cost-{n}", "tip=2") for n in (1, 2, 3)]
    assert deploy.rolling_verdict(rolling(["cost-1", "cost-2", "cost-3"]), all_on, NOW).action == "promote"
    refused = [report_of("cost-1", "tip=1", refused="tip=2: load failed: corrupt"), *fleet[1:]]
    halted = deploy.rolling_verdict(rolling(["cost-1"]), refused, NOW)
    assert halted.action == "rollback" and "halted" in halted.reason
    behind = [report_of("cost-1", "tip=2", lag=9000), *fleet[1:]]
    assert "lag grew" in str(deploy.rolling_verdict(rolling(["cost-1"]), behind, NOW).reason)
    failing = [report_of("cost-1", "tip=2", dead_lettered=40), *fleet[1:]]
    assert deploy.rolling_verdict(rolling(["cost-1"]), failing, NOW).action == "rollback"
    stale = [{**r, "updated_at": datetime(2026, 12, 1, 11, 0, tzinfo=UTC).isoformat()} for r in fleet]
    assert deploy.rolling_verdict(rolling([]), stale, NOW).action is None, "instances that stopped reporting"


def test_one_outlier_ride_does_not_roll_a_good_challenger_back() -> None:
    """A raw comparison would: its RMSE over these rides is 2.5 against the champion's 1.0."""
    outlier = figures(noise(500, 1.0, 1), noise(300, 1.0, 2) + [40.0])
    verdict = deploy.canary_verdict(canary(), outlier, [])
    assert verdict.evidence["tip"]["challenger"]["rmse"] > 2.0
    assert verdict.action == "advance", verdict.reason


def blue_green(step: int = 0, live: str = "blue") -> RolloutState:
    return canary(step).model_copy(
        update={
            "strategy": "blue-green",
            "steps": [0.0, 1.0],
            "live": live,
            "challenger_deployment": "green" if live == "blue" else "blue",
        }
    )


def reporting(deployment: str, serving: str, epoch: int = 3) -> dict[str, object]:
    return {
        "instance": f"tip-1.{deployment}",
        "deployment": deployment,
        "serving": serving,
        "epoch": epoch,
        "updated_at": NOW.isoformat(),
    }


def test_a_blue_green_switches_once_green_serves_and_passes_then_promotes_or_hands_users_back() -> None:
    good = figures(noise(500, 1.0, 1), noise(300, 1.02, 2))
    state = blue_green()
    nobody = deploy.blue_green_verdict(state, good, [reporting("blue", "tip=1")], NOW)
    assert nobody.action is None and "TIP_DEPLOYMENT=green" in nobody.reason
    behind = deploy.blue_green_verdict(state, good, [reporting("green", "tip=2", epoch=2)], NOW)
    assert behind.action is None and "switching" in behind.reason
    green = [reporting("green", "tip=2")]
    assert deploy.blue_green_verdict(state, good, green, NOW).action == "advance"
    worse = figures(noise(500, 1.0, 1), noise(300, 3.0, 2))
    assert deploy.blue_green_verdict(state, worse, green, NOW).action == "rollback"

    switched = deploy.switched_over(state, good, "switch", {})
    assert (switched.step, switched.epoch, switched.owner) == (1, 4, "green")
    assert [(h.epoch, h.to) for h in switched.handovers] == [(4, "green")]
    live = [reporting("green", "tip=2", epoch=4)]
    assert deploy.blue_green_verdict(switched, good, live, NOW).action is None, "judged on rides since"
    later = figures(noise(500, 1.0, 1), noise(300, 1.02, 2) + noise(200, 1.0, 3))
    assert deploy.blue_green_verdict(switched, later, live, NOW).action == "promote"
    back = deploy.finished(switched, "rolled_back", "rollback", "worse live", {})
    assert back.owner == "blue" and [h.epoch for h in back.handovers] == [4, 5]
    # a rollback before the switch hands nothing over: blue was live throughout
    assert deploy.finished(state, "rolled_back", "rollback", "worse warm", {}).handovers == []
    promoted = deploy.finished(state, "promoted", "promote", "by hand", {})
    assert promoted.owner == "green" and promoted.status == "promoted"


def test_who_is_live_carries_over_to_the_next_rollouts_and_old_handovers_are_dropped_in_order() -> None:
    from schemas.control import MAX_HANDOVERS, Handover

    assert deploy.carried_handovers(None) == ("blue", [])
    many = [Handover(epoch=e, to="green" if e % 2 else "blue") for e in range(1, MAX_HANDOVERS + 1)]
    live, kept = deploy.carried_handovers(blue_green().model_copy(update={"handovers": many}))
    assert len(kept) == MAX_HANDOVERS - 2 and kept[0].epoch == 3
    assert live == "blue"  # the owner after the dropped handovers (epoch 2 handed users to blue)
