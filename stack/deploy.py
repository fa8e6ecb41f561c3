"""Rollouts on the live fleet: start one, decide each step on evidence, finish it (docs/deployments.md).

    ridestream deploy start SERVICE --strategy STRATEGY --challenger VERSION   publishes the plan
    ridestream deploy controller        follows every rollout and decides canary, rolling and blue/green
                                        steps on their gates
    ridestream deploy status|report     what runs, with each version's live figures / the evidence
    ridestream deploy promote|rollback|abort SERVICE

Everything a rollout is lives in its record on the control topic (rollout/<service>), so any controller
instance, restarted or not, carries on from there. Controllers form a consumer group on the one-partition
control topic: the member holding the partition is the one that decides.

Evidence is the evaluator's figures (sums per model version, summed over partitions). A step's challenger
figures are the difference from the step's start; the champion's reference is everything since the rollout
started (at the last step the champion may see no rides at all).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from consumers.evaluator.join import FigureKey, Sums, fleet_figures
from consumers.evaluator.service import EVALUATOR_GROUP, latest_snapshots
from consumers.registry import ServiceSpec
from schemas.control import (
    CANARY_STEPS,
    MAX_DECISIONS,
    MAX_HANDOVERS,
    ROLLOUT_PREFIX,
    STATUS_PREFIX,
    Action,
    Decision,
    Deployment,
    Gates,
    Handover,
    RolloutState,
    RolloutStatus,
    Strategy,
    other_deployment,
)
from schemas.topics import CONTROL_TOPIC, EVALUATIONS_TOPIC
from shared.control import ControlLog, operator, publish_control, serving_records
from shared.errors import ConfigError, RidestreamError
from shared.kafka import OFFSET_BEGINNING, TopicPartition, make_consumer
from shared.registry import CHALLENGER, CHAMPION, ModelRegistry

log = logging.getLogger(__name__)

# The figure a model is judged by: one prediction per ride (rides, not events, are the unit), except the
# dynamic model, judged over all its segments.
HEADLINE_SEGMENT = {"duration": "start", "tip": "card", "cost": "all"}
ALPHA = 0.05
Z_95 = 1.959964
CONTROLLER_GROUP = "ridestream-deploy-controller"
SUPPORTED: tuple[Strategy, ...] = ("blue-green", "canary", "rolling", "ab", "shadow")
DECIDED: tuple[Strategy, ...] = ("blue-green", "canary", "rolling")
# An instance whose status is older than this is not counted as part of the fleet (it reports every 2 s).
LIVE_S = 10.0
# Rolling: an instance whose lag grew by more than this since it switched is not keeping up (yet).
LAG_SLACK = 5000


class Verdict(NamedTuple):
    action: Action | None  # None: not enough evidence yet
    reason: str
    evidence: dict[str, Any]


# ------------------------------------------------------------------------------------- figures, pure


def version_sums(figures: Mapping[FigureKey, Sums], model: str, artifact: str) -> Sums:
    total = Sums()
    headline = HEADLINE_SEGMENT.get(model)
    for key, sums in figures.items():
        if key.model == model and key.version == artifact and headline in (None, key.segment):
            total.merge(sums)
    return total


def figure_key(model: str, artifact: str) -> str:
    return f"{model}/{artifact}"


def baseline_of(
    figures: Mapping[FigureKey, Sums], artifacts: Iterable[tuple[str, str]]
) -> dict[str, list[float]]:
    return {figure_key(m, a): version_sums(figures, m, a).as_list() for m, a in artifacts}


def since(
    figures: Mapping[FigureKey, Sums], baseline: Mapping[str, list[float]], model: str, artifact: str
) -> Sums:
    earlier = baseline.get(figure_key(model, artifact))
    current = version_sums(figures, model, artifact)
    return current.minus(Sums.from_list(earlier)) if earlier else current


def describe(sums: Sums) -> dict[str, Any]:
    return {
        "count": sums.count,
        "rmse": finite(sums.rmse),
        "mae": finite(sums.mae),
        "bias": finite(sums.bias),
    }


def finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def changed_models(state: RolloutState) -> list[str]:
    return [m for m, v in sorted(state.challenger.items()) if state.champion.get(m) != v]


def artifact(state: RolloutState, model: str, side: str) -> str:
    versions = state.champion if side == CHAMPION else state.challenger
    return state.artifacts.get(f"{model}/{versions[model]}", "")


# --------------------------------------------------------------------------------------- gates, pure


def require_deployment(state: RolloutState, statuses: Sequence[Mapping[str, Any]]) -> None:
    """A blue/green promotion hands users to the challenger's deployment: refuse it while none of its
    instances reports (nobody would publish for users after the cut-over)."""
    green = state.challenger_deployment
    if not any(s.get("deployment") == green for s in live_instances(statuses, datetime.now(UTC))):
        raise ConfigError(
            f"no instance of the {green} deployment of {state.service} reports: start them "
            f"({state.service.upper()}_DEPLOYMENT={green}) before promoting, or roll back"
        )


def health_problem(state: RolloutState, statuses: Sequence[Mapping[str, Any]]) -> str | None:
    """A reason to roll back from the instances' own reports, or None."""
    gates = state.gates
    challenger_versions = {f"{m}={v}" for m, v in state.challenger.items()}
    for status in statuses:
        refused = str(status.get("refused", ""))
        if refused and any(v in refused for v in challenger_versions):
            return f"{status.get('instance')} refused the challenger: {refused}"
        if status.get("epoch") != state.epoch:
            continue
        predicted = status.get("predicted", {}).get("challenger", 0)
        unscoreable = status.get("unscoreable", {}).get("challenger", 0)
        if (
            predicted + unscoreable >= 50
            and unscoreable / (predicted + unscoreable) > gates.max_unscoreable_rate
        ):
            return (
                f"{status.get('instance')}: {unscoreable} of {predicted + unscoreable} challenger events "
                f"unscoreable (limit {gates.max_unscoreable_rate:.1%})"
            )
        p99 = status.get("p99_ms")
        if isinstance(p99, (int, float)) and p99 > gates.max_p99_ms:
            return f"{status.get('instance')}: p99 {p99:.0f} ms over the {gates.max_p99_ms:.0f} ms limit"
    return None


def accuracy_verdict(state: RolloutState, figures: Mapping[FigureKey, Sums]) -> Verdict:
    """The accuracy gate of a step: "rollback" when a changed model's challenger is worse than tolerated
    with confidence, None while some model has fewer than `min_rides` judged rides, else "advance"."""
    gates, evidence, waiting = state.gates, {}, []
    for model in changed_models(state):
        champion = since(figures, state.start_baseline, model, artifact(state, model, CHAMPION))
        challenger = since(figures, state.baseline, model, artifact(state, model, CHALLENGER))
        limit = champion.rmse * (1 + gates.tolerance)
        p_worse = worse_than_tolerated(challenger, champion, gates.tolerance)
        evidence[model] = {
            "champion": describe(champion),
            "challenger": describe(challenger),
            "limit": finite(limit),
            "p_within_tolerance": finite(p_worse) if p_worse is not None else None,
        }
        if challenger.count < gates.min_rides or champion.count < gates.min_rides:
            waiting.append(f"{model}: {challenger.count}/{champion.count} of {gates.min_rides} rides judged")
        elif p_worse is not None and p_worse < ALPHA:
            return Verdict(
                "rollback",
                f"{model}: challenger RMSE {challenger.rmse:.3f} over {challenger.count} rides exceeds the "
                f"champion's {champion.rmse:.3f} × {1 + gates.tolerance:.2f} = {limit:.3f} "
                f"(one-sided p = {p_worse:.2g})",
                evidence,
            )
    if waiting:
        return Verdict(None, "; ".join(waiting), evidence)
    return Verdict("advance", "", evidence)


def canary_verdict(
    state: RolloutState, figures: Mapping[FigureKey, Sums], statuses: Sequence[Mapping[str, Any]]
) -> Verdict:
    """The decision on a canary's current step: roll back at the first failed gate; advance (or promote,
    at the last step) once every changed model has `min_rides` judged rides and is within tolerance."""
    problem = health_problem(state, statuses)
    if problem is not None:
        return Verdict("rollback", problem, {})
    accuracy = accuracy_verdict(state, figures)
    if accuracy.action != "advance":
        return accuracy
    last = state.step >= len(state.steps) - 1
    return Verdict(
        "promote" if last else "advance",
        f"step {state.step + 1} of {len(state.steps)} at {state.share():.0%} passed every gate",
        accuracy.evidence,
    )


def blue_green_verdict(
    state: RolloutState,
    figures: Mapping[FigureKey, Sums],
    statuses: Sequence[Mapping[str, Any]],
    now: datetime,
) -> Verdict:
    """Step 1: the challenger's deployment runs warm on the shadow topic; once it serves the challenger and
    passes the accuracy gate, users are switched to it ("advance"). Step 2: live, it must pass the gate
    again over rides scored since the switch before it is promoted; a failed gate hands users back."""
    problem = health_problem(state, statuses)
    if problem is not None:
        return Verdict("rollback", problem, {})
    green = state.challenger_deployment
    instances = [s for s in live_instances(statuses, now) if s.get("deployment") == green]
    if not instances:
        return Verdict(
            None,
            f"no instance of the {green} deployment reports: start them with "
            f"{state.service.upper()}_DEPLOYMENT={green}",
            {},
        )
    target = ",".join(f"{m}={v}" for m, v in sorted(state.challenger.items()))
    behind = [str(s.get("instance")) for s in instances if s.get("epoch") != state.epoch]
    if behind or any(s.get("serving") != target for s in instances):
        return Verdict(None, f"the {green} deployment is switching to {target} ({', '.join(behind)})", {})
    accuracy = accuracy_verdict(state, figures)
    if accuracy.action != "advance":
        return accuracy
    if state.step == 0:
        return Verdict(
            "advance", f"the {green} deployment passed every gate warm: users switch to it", accuracy.evidence
        )
    return Verdict("promote", f"the {green} deployment passed every gate live", accuracy.evidence)


def live_instances(statuses: Sequence[Mapping[str, Any]], now: datetime) -> list[Mapping[str, Any]]:
    live = []
    for status in statuses:
        try:
            at = datetime.fromisoformat(str(status.get("updated_at")))
        except ValueError:
            continue
        if (now - at).total_seconds() <= LIVE_S:
            live.append(status)
    return sorted(live, key=lambda s: str(s.get("instance")))


def rolling_verdict(state: RolloutState, statuses: Sequence[Mapping[str, Any]], now: datetime) -> Verdict:
    """Switch instances one at a time: the next one only once the last one serves the challenger and has
    scored since it switched; a last one that cannot serve it halts the roll and takes every instance back."""
    instances = live_instances(statuses, now)
    if not instances:
        return Verdict(None, "no instance of the service reports", {})
    by_name = {str(s.get("instance")): s for s in instances}
    target = ",".join(f"{m}={v}" for m, v in sorted(state.challenger.items()))
    if state.switched:
        name = state.switched[-1]
        last = by_name.get(name)
        if last is None:
            return Verdict(None, f"{name} does not report (restarting?)", {})
        refused = str(last.get("refused", ""))
        if refused and target.split(",")[0] in refused:
            reason = f"{name} cannot serve the challenger ({refused}): roll halted, every instance back"
            return Verdict("rollback", reason, {"instance": dict(last)})
        at_switch = next((d.evidence for d in reversed(state.decisions) if d.action == "advance"), {})
        if last.get("epoch") != state.epoch or last.get("serving") != target:
            return Verdict(None, f"{name} is switching to {target}", {})
        problem = unhealthy_since_switch(state.gates, last, at_switch)
        if problem is not None:
            return Verdict(
                "rollback", f"{name}: {problem}: roll halted, every instance back", {"instance": dict(last)}
            )
        scored = int(last.get("consumed", 0)) - int(at_switch.get("consumed", 0) or 0)
        if scored <= 0:
            return Verdict(None, f"{name} serves {target}; waiting for it to score", {})
        lag, lag_then = int(last.get("lag", 0) or 0), int(at_switch.get("lag", 0) or 0)
        if lag > lag_then + LAG_SLACK:
            return Verdict(None, f"{name} serves {target} but its lag grew ({lag_then} → {lag} records)", {})
    remaining = [s for s in instances if str(s.get("instance")) not in state.switched]
    if not remaining:
        return Verdict("promote", f"all {len(state.switched)} instances serve {target} and score", {})
    following = remaining[0]
    return Verdict(
        "advance",
        f"switching {following.get('instance')} ({len(state.switched) + 1} of {len(instances)})",
        {
            "next": following.get("instance"),
            **{k: following.get(k, 0) for k in ("consumed", "dead_lettered", "lag")},
        },
    )


def unhealthy_since_switch(
    gates: Gates, status: Mapping[str, Any], at_switch: Mapping[str, Any]
) -> str | None:
    """An instance's own report since it switched, against the gates: its dead-letter share (the unscoreable
    gate: a challenger that cannot score the events its champion could)."""
    consumed = int(status.get("consumed", 0)) - int(at_switch.get("consumed", 0) or 0)
    dead = int(status.get("dead_lettered", 0) or 0) - int(at_switch.get("dead_lettered", 0) or 0)
    if consumed >= 50 and dead / consumed > gates.max_unscoreable_rate:
        limit = gates.max_unscoreable_rate
        return f"{dead} of {consumed} records dead-lettered since it switched (limit {limit:.1%})"
    return None


def worse_than_tolerated(challenger: Sums, champion: Sums, tolerance: float) -> float | None:
    """One-sided p-value of "the challenger's MSE is within (1 + tolerance)² of the champion's": small when
    the challenger is worse beyond the tolerance with confidence. A gate on this, not on the raw RMSEs,
    keeps one outlier ride in a few hundred from rolling a good model back (errors are heavy-tailed)."""
    if challenger.count < 2 or champion.count < 2:
        return None
    factor = (1 + tolerance) ** 2
    excess = challenger.mse - factor * champion.mse
    se = math.sqrt(
        challenger.mse_variance / challenger.count + factor**2 * champion.mse_variance / champion.count
    )
    if se == 0:
        return 0.0 if excess > 0 else 1.0
    return 0.5 * math.erfc(excess / se / math.sqrt(2))


def significance(a: Sums, b: Sums) -> dict[str, Any]:
    """Welch's z-test on the mean squared error of two variants (large samples): the difference, its 95%
    interval and two-sided p-value."""
    if a.count < 2 or b.count < 2:
        return {"difference_mse": None, "p_value": None}
    difference = a.mse - b.mse
    se = math.sqrt(a.mse_variance / a.count + b.mse_variance / b.count)
    if se == 0:
        return {
            "difference_mse": difference,
            "interval": [difference, difference],
            "p_value": 1.0 if difference == 0 else 0.0,
        }
    z = difference / se
    return {
        "difference_mse": difference,
        "interval": [difference - Z_95 * se, difference + Z_95 * se],
        "z": z,
        "p_value": math.erfc(abs(z) / math.sqrt(2)),
    }


def rmse_interval(sums: Sums) -> list[float] | None:
    """95% interval of the RMSE (the MSE's normal interval, square-rooted)."""
    if sums.count < 2:
        return None
    half = Z_95 * math.sqrt(sums.mse_variance / sums.count)
    return [math.sqrt(max(0.0, sums.mse - half)), math.sqrt(sums.mse + half)]


def report(state: RolloutState, figures: Mapping[FigureKey, Sums], alpha: float = ALPHA) -> dict[str, Any]:
    """Each variant's error since the rollout started, with intervals, and a winner only when significant."""
    models = {}
    for model in changed_models(state):
        champion = since(figures, state.start_baseline, model, artifact(state, model, CHAMPION))
        challenger = since(figures, state.start_baseline, model, artifact(state, model, CHALLENGER))
        test = significance(challenger, champion)
        p_value = test.get("p_value")
        winner = None
        if p_value is not None and p_value < alpha:
            winner = CHALLENGER if test["difference_mse"] < 0 else CHAMPION
        models[model] = {
            "segment": HEADLINE_SEGMENT.get(model, "all segments"),
            CHAMPION: {
                **describe(champion),
                "version": state.champion[model],
                "rmse_95": rmse_interval(champion),
            },
            CHALLENGER: {
                **describe(challenger),
                "version": state.challenger[model],
                "rmse_95": rmse_interval(challenger),
            },
            "challenger_minus_champion": test,
            "alpha": alpha,
            "winner": winner,
            "verdict": (
                f"{winner} is better (p = {p_value:.2g})"
                if winner
                else "no significant difference" + (f" (p = {p_value:.2g})" if p_value is not None else "")
            ),
        }
    return {"service": state.service, "strategy": state.strategy, "status": state.status, "models": models}


# ---------------------------------------------------------------------------------- state changes, pure


def decided(
    state: RolloutState, action: Action, reason: str, evidence: dict[str, Any], **update: Any
) -> RolloutState:
    now = datetime.now(UTC)
    decision = Decision(at=now, action=action, step=state.step, reason=reason, evidence=evidence)
    decisions = [*state.decisions, decision][-MAX_DECISIONS:]
    return state.model_copy(update={"decisions": decisions, "updated_at": now, **update})


def advanced(
    state: RolloutState, figures: Mapping[FigureKey, Sums], reason: str, evidence: dict[str, Any]
) -> RolloutState:
    challenger = [(m, artifact(state, m, CHALLENGER)) for m in state.challenger]
    return decided(
        state,
        "advance",
        reason,
        evidence,
        step=state.step + 1,
        epoch=state.epoch + 1,
        step_started_at=datetime.now(UTC),
        baseline=baseline_of(figures, challenger),
    )


def handed_over(state: RolloutState, to: Deployment) -> list[Handover]:
    """The handovers after one to `to` at the next epoch (none added when `to` is live already)."""
    if state.owner == to:
        return list(state.handovers)
    return [*state.handovers, Handover(epoch=state.epoch + 1, to=to)]


def switched_over(
    state: RolloutState, figures: Mapping[FigureKey, Sums], reason: str, evidence: dict[str, Any]
) -> RolloutState:
    """blue/green: users switch to the challenger's deployment; the next step's evidence starts now."""
    after = advanced(state, figures, reason, evidence)
    return after.model_copy(update={"handovers": handed_over(state, state.challenger_deployment)})


def switched_by_hand(
    state: RolloutState, fleet: FleetState, reason: str, evidence: dict[str, Any]
) -> RolloutState:
    """A person's switch of a blue/green: users go to the challenger's deployment now (the controller, if
    one runs, then judges the live step as usual)."""
    if state.strategy != "blue-green" or not state.running:
        raise ConfigError(
            f"only a running blue-green switches; {state.service} has a {state.strategy} ({state.status})"
        )
    if state.step > 0:
        raise ConfigError(f"{state.service} switched already (epoch {state.epoch}): promote or roll back")
    require_deployment(state, fleet.statuses.get(state.service, []))
    return switched_over(state, fleet.figures, reason, evidence)


def carried_handovers(previous: RolloutState | None) -> tuple[Deployment, list[Handover]]:
    """Who owns what, carried into the next rollout: the deployment live before the handovers kept, and
    the last MAX_HANDOVERS - 2 of them (room for this rollout's switch and its rollback)."""
    if previous is None:
        return "blue", []
    kept = previous.handovers[-(MAX_HANDOVERS - 2) :]
    dropped = previous.handovers[: len(previous.handovers) - len(kept)]
    return (dropped[-1].to if dropped else previous.live), list(kept)


def rolled_on(state: RolloutState, reason: str, evidence: dict[str, Any]) -> RolloutState:
    """The next instance switches (rolling)."""
    return decided(
        state,
        "advance",
        reason,
        evidence,
        switched=[*state.switched, str(evidence["next"])],
        epoch=state.epoch + 1,
        step_started_at=datetime.now(UTC),
    )


def finished(
    state: RolloutState, status: RolloutStatus, action: Action, reason: str, evidence: dict[str, Any]
) -> RolloutState:
    """The rollout's end. A blue/green hands users to the challenger's deployment on promotion and back to
    the other one otherwise (each only if it is not live already)."""
    handovers = state.handovers
    if state.strategy == "blue-green":
        green = state.challenger_deployment
        handovers = handed_over(state, green if status == "promoted" else other_deployment(green))
    return decided(state, action, reason, evidence, status=status, epoch=state.epoch + 1, handovers=handovers)


# ------------------------------------------------------------------------------------------ Kafka I/O


@dataclass
class FleetState:
    """The control log and the evaluations, as the controller and the status commands see them."""

    rollouts: dict[str, RolloutState] = field(default_factory=dict)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: dict[FigureKey, Sums] = field(default_factory=dict)


def fleet_state(
    control: Mapping[str, bytes], evaluations: Mapping[str, bytes], evaluator_group: str = EVALUATOR_GROUP
) -> FleetState:
    import json

    state = FleetState(figures=fleet_figures(latest_snapshots(evaluations, evaluator_group).values()))
    for key, value in control.items():
        if key.startswith(ROLLOUT_PREFIX):
            try:
                rollout = RolloutState.model_validate_json(value)
            except ValueError as exc:
                log.warning("control record %s is not a rollout (%s); ignored", key, exc)
                continue
            state.rollouts[rollout.service] = rollout
        elif key.startswith(STATUS_PREFIX):
            try:
                status = json.loads(value)
            except ValueError:
                continue
            state.statuses.setdefault(str(status.get("service")), []).append(status)
    return state


def read_fleet_state(
    client_config: Mapping[str, str],
    control_topic: str = CONTROL_TOPIC,
    evaluations_topic: str = EVALUATIONS_TOPIC,
    evaluator_group: str = EVALUATOR_GROUP,
) -> FleetState:
    readers = [ControlLog(client_config, control_topic), ControlLog(client_config, evaluations_topic)]
    try:
        control, evaluations = (reader.read_to_end() for reader in readers)
        return fleet_state(control, evaluations, evaluator_group)
    finally:
        for reader in readers:
            reader.close()


def publish_rollout(
    client_config: Mapping[str, str],
    state: RolloutState,
    control_topic: str = CONTROL_TOPIC,
    serving: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """The rollout's record, then (on promotion) the models' moved aliases, in one ordered append."""
    records = [(state.key, state.model_dump_json().encode())]
    if serving:
        records += serving_records(serving, operator())
    publish_control(client_config, records, control_topic)
    last = state.decisions[-1] if state.decisions else None
    log.info(
        "%s %s: %s%s",
        state.service,
        state.strategy,
        state.status,
        f" ({last.action}: {last.reason})" if last else "",
    )


def conclude(
    client_config: Mapping[str, str],
    registry: ModelRegistry,
    state: RolloutState,
    action: Action,
    reason: str,
    evidence: dict[str, Any],
    control_topic: str = CONTROL_TOPIC,
) -> RolloutState:
    """Promote (the challenger becomes champion in the registry and on the control topic), roll back or
    abort (the champion stays)."""
    if not state.running:
        raise RidestreamError(f"the {state.strategy} of {state.service} is over already ({state.status})")
    if action == "promote":
        for model, version in state.challenger.items():
            registry.set_alias(model, CHAMPION, version)
        done = finished(state, "promoted", action, reason, evidence)
        aliases = {model: registry.aliases(model) for model in state.challenger}
        publish_rollout(client_config, done, control_topic, aliases)
        return done
    status: RolloutStatus = "rolled_back" if action == "rollback" else "aborted"
    done = finished(state, status, action, reason, evidence)
    publish_rollout(client_config, done, control_topic)
    return done


def parse_challenger(spec: ServiceSpec, challenger: str) -> dict[str, str]:
    """`3` (every model of the service at version 3) or `duration=3,dynamic_duration=2`."""
    if "=" not in challenger:
        return {model: challenger for model in spec.models}
    versions = {}
    for part in challenger.split(","):
        model, _, version = part.partition("=")
        if model.strip() not in spec.models:
            raise ConfigError(f"{model.strip()!r} is not a model of {spec.name} ({', '.join(spec.models)})")
        versions[model.strip()] = version.strip()
    return versions


def steps_for(strategy: Strategy, steps: Sequence[float] | None, share: float | None) -> list[float]:
    if strategy == "canary":
        chosen = list(steps or CANARY_STEPS)
        if chosen != sorted(chosen) or chosen[-1] != 1.0:
            raise ConfigError(f"canary steps must grow and end at 100%, not {[f'{s:.0%}' for s in chosen]}")
        return chosen
    if steps:
        raise ConfigError(f"--steps is for canaries; a {strategy} takes --share")
    if strategy in ("rolling", "blue-green"):
        if share is not None:
            raise ConfigError(f"a {strategy} rollout switches whole instances: no --share")
        return [0.0, 1.0] if strategy == "blue-green" else [1.0]
    return [share if share is not None else (0.5 if strategy == "ab" else 1.0)]


def started(
    spec: ServiceSpec,
    registry: ModelRegistry,
    fleet: FleetState,
    strategy: Strategy,
    challenger: Mapping[str, str],
    steps: list[float],
    gates: Gates,
) -> RolloutState:
    """The record that starts a rollout, after checking it can start."""
    if strategy not in SUPPORTED:
        raise ConfigError(
            f"--strategy {strategy} is not built yet (supported: {', '.join(SUPPORTED)}); "
            "see docs/deployments.md"
        )
    current = fleet.rollouts.get(spec.name)
    if current is not None and current.running:
        raise ConfigError(
            f"a {current.strategy} of {spec.name} is running (step {current.step + 1}); "
            f"promote, roll it back or abort it first: ridestream deploy rollback {spec.name}"
        )
    champion = {}
    for model in spec.models:
        version = registry.alias_version(model, CHAMPION)
        if version is None:
            raise ConfigError(f"{model} has no champion: train first (ridestream train)")
        champion[model] = version
    challenger = {**champion, **challenger}
    if challenger == champion:
        raise ConfigError(f"the challenger is the champion ({champion}): nothing to roll out")
    artifacts = {}
    for model, version in {*champion.items(), *challenger.items()}:
        info = registry.describe(registry.version_of(model, None, version))
        artifacts[f"{model}/{version}"] = info.artifact_version
        if info.refused:
            log.warning("%s/%s was refused before: %s", model, version, info.refused)
    for model, version in challenger.items():
        if champion[model] != version:
            registry.set_alias(model, CHALLENGER, version)
    live, handovers = carried_handovers(current)
    now = datetime.now(UTC)
    draft = RolloutState(
        service=spec.name,
        strategy=strategy,
        champion=champion,
        challenger=challenger,
        steps=steps,
        epoch=(current.epoch + 1) if current is not None else 1,
        gates=gates,
        step_started_at=now,
        artifacts=artifacts,
        live=live,
        handovers=handovers,
        updated_at=now,
    )
    # blue/green: the challenger runs on the deployment not live now
    draft = draft.model_copy(update={"challenger_deployment": other_deployment(draft.owner)})
    pairs = [(m, artifact(draft, m, side)) for m in draft.challenger for side in (CHAMPION, CHALLENGER)]
    baseline = baseline_of(fleet.figures, pairs)
    reason = f"{strategy} of {spec.name}: challenger {challenger} against champion {champion}, steps {steps}"
    return decided(draft, "start", reason, {}, baseline=baseline, start_baseline=baseline)


class Controller:
    """Decides canary, rolling and blue/green steps for every service. Only the member of CONTROLLER_GROUP
    holding the control topic's one partition acts; the others wait (a warm standby)."""

    def __init__(
        self,
        client_config: Mapping[str, str],
        registry: ModelRegistry,
        control_topic: str = CONTROL_TOPIC,
        evaluations_topic: str = EVALUATIONS_TOPIC,
        evaluator_group: str = EVALUATOR_GROUP,
        interval_s: float = 2.0,
        group: str = CONTROLLER_GROUP,
    ) -> None:
        self.client_config = dict(client_config)
        self.registry = registry
        self.control_topic = control_topic
        self.evaluator_group = evaluator_group
        self.interval_s = interval_s
        self.control: dict[str, bytes] = {}
        self.consumer = make_consumer(
            client_config,
            group,
            # eager assignment: the callback re-assigns the partition from its beginning
            {"isolation.level": "read_committed", "partition.assignment.strategy": "range"},
        )
        self.evaluations = ControlLog(client_config, evaluations_topic)
        # rollouts this controller has published and not yet read back: never decide on a stale record
        self.published: dict[str, int] = {}
        self.leading = False

    def on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.control.clear()
        consumer.assign([TopicPartition(p.topic, p.partition, OFFSET_BEGINNING) for p in partitions])
        self.leading = bool(partitions)
        log.info("deploy controller %s", "leading" if self.leading else "standing by")

    def on_revoke(self, consumer: Any, _partitions: list[TopicPartition]) -> None:
        self.leading = False
        consumer.unassign()

    def poll(self, timeout_s: float) -> None:
        for message in self.consumer.consume(500, timeout_s):
            if message.error() is None and message.key() is not None:
                key = (message.key() or b"").decode(errors="replace")
                value = message.value()
                if value is None:
                    self.control.pop(key, None)
                else:
                    self.control[key] = value
        self.evaluations.poll(0)

    def step(self) -> list[RolloutState]:
        """One round of decisions; returns the rollouts it changed."""
        fleet = fleet_state(self.control, self.evaluations.state, self.evaluator_group)
        changed = []
        for service, state in fleet.rollouts.items():
            if not state.running or state.strategy not in DECIDED:
                continue
            if self.published.get(service, 0) > state.epoch:
                continue  # our last decision is not read back yet
            statuses = fleet.statuses.get(service, [])
            if state.strategy == "rolling":
                verdict = rolling_verdict(state, statuses, datetime.now(UTC))
            elif state.strategy == "blue-green":
                verdict = blue_green_verdict(state, fleet.figures, statuses, datetime.now(UTC))
            else:
                verdict = canary_verdict(state, fleet.figures, statuses)
            if verdict.action is None:
                continue
            if verdict.action == "advance" and state.strategy == "rolling":
                after = rolled_on(state, verdict.reason, verdict.evidence)
                publish_rollout(self.client_config, after, self.control_topic)
            elif verdict.action == "advance" and state.strategy == "blue-green":
                after = switched_over(state, fleet.figures, verdict.reason, verdict.evidence)
                publish_rollout(self.client_config, after, self.control_topic)
            elif verdict.action == "advance":
                after = advanced(state, fleet.figures, verdict.reason, verdict.evidence)
                publish_rollout(self.client_config, after, self.control_topic)
            else:
                after = conclude(
                    self.client_config,
                    self.registry,
                    state,
                    verdict.action,
                    verdict.reason,
                    verdict.evidence,
                    self.control_topic,
                )
            self.published[service] = after.epoch
            changed.append(after)
        return changed

    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe([self.control_topic], on_assign=self.on_assign, on_revoke=self.on_revoke)
        self.evaluations.read_to_end()
        last = 0.0
        try:
            while not stop.is_set():
                self.poll(0.5)
                if self.leading and time.monotonic() - last >= self.interval_s:
                    self.step()
                    last = time.monotonic()
        finally:
            self.consumer.close()
            self.evaluations.close()
