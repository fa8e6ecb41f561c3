"""`ridestream deploy start | status | report | promote | rollback | abort | controller` (stack/deploy.py).

`--json` output is stable (docs/deployments.md): one document on stdout; everything for a person goes to
stderr or the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from consumers.evaluator.service import EVALUATOR_GROUP
from consumers.registry import service_spec
from schemas.control import STRATEGIES, Action, Gates, RolloutState
from schemas.topics import CONTROL_TOPIC, EVALUATIONS_TOPIC
from shared.control import operator
from shared.errors import ConfigError
from shared.kafka import wait_for_cluster
from shared.lifecycle import stop_event
from shared.registry import ModelRegistry
from shared.settings import KafkaSettings
from stack import deploy

deploy_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ServiceArg = Annotated[str, typer.Argument(help="duration, tip or cost")]
Bootstrap = Annotated[
    str | None, typer.Option("--bootstrap-servers", "-b", envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka")
]
Registry = Annotated[Path, typer.Option("--models", envvar="MODELS_DIR", help="registry folder")]
ControlTopic = Annotated[str, typer.Option(envvar="RIDESTREAM_CONTROL_TOPIC", help="the control topic")]
EvaluationsTopic = Annotated[str, typer.Option(envvar="EVALUATOR_EVALUATIONS_TOPIC", help="live figures")]
EvaluatorGroup = Annotated[str, typer.Option(envvar="EVALUATOR_GROUP_ID", help="whose figures")]
AsJson = Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]


def client_config(bootstrap_servers: str | None) -> dict[str, str]:
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers) if bootstrap_servers else KafkaSettings()
    config = kafka.client_config()
    wait_for_cluster(config, kafka.connect_timeout_s)
    return config


def percent_list(text: str | None) -> list[float] | None:
    """ "5,25,50,100" → [0.05, 0.25, 0.5, 1.0]."""
    if not text:
        return None
    try:
        return [float(part) / 100 for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--steps {text!r}: give percentages like 5,25,50,100") from None


@deploy_app.command("start")
def start(
    service: ServiceArg,
    strategy: Annotated[str, typer.Option(help="blue-green, canary, rolling, shadow or ab")],
    challenger: Annotated[str, typer.Option(help="registry version (or model=version,...)")],
    steps: Annotated[str | None, typer.Option(help="canary: challenger %% per step (5,25,50,100)")] = None,
    share: Annotated[
        float | None, typer.Option(help="ab / shadow: challenger %% of rides (50 / 100)")
    ] = None,
    min_rides: Annotated[int, typer.Option(help="canary gate: rides judged per version and step")] = 200,
    tolerance: Annotated[
        float, typer.Option(help="canary gate: RMSE may exceed the champion's by this")
    ] = 0.10,
    max_unscoreable: Annotated[float, typer.Option(help="canary gate: challenger unscoreable share")] = 0.01,
    max_p99_ms: Annotated[float, typer.Option(help="canary gate: every instance's p99 latency")] = 1000.0,
    models: Registry = Path("models"),
    bootstrap_servers: Bootstrap = None,
    control_topic: ControlTopic = CONTROL_TOPIC,
    evaluations_topic: EvaluationsTopic = EVALUATIONS_TOPIC,
    evaluator_group: EvaluatorGroup = EVALUATOR_GROUP,
) -> None:
    """Start a rollout: the running fleet picks it up from the control topic at once."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    spec = service_spec(service)
    config = client_config(bootstrap_servers)
    registry = ModelRegistry(models)
    fleet = deploy.read_fleet_state(config, control_topic, evaluations_topic, evaluator_group)
    gates = Gates(
        min_rides=min_rides, tolerance=tolerance, max_unscoreable_rate=max_unscoreable, max_p99_ms=max_p99_ms
    )
    state = deploy.started(
        spec,
        registry,
        fleet,
        strategy,  # type: ignore[arg-type]  # checked against STRATEGIES above
        deploy.parse_challenger(spec, challenger),
        deploy.steps_for(strategy, percent_list(steps), None if share is None else share / 100),  # type: ignore[arg-type]
        gates,
    )
    deploy.publish_rollout(config, state, control_topic)
    Console(stderr=True).print(f"started: {state.decisions[-1].reason} (epoch {state.epoch})")


def status_document(state: RolloutState, fleet: deploy.FleetState) -> dict[str, Any]:
    versions: dict[str, dict[str, Any]] = {}
    for model in deploy.changed_models(state):
        for side in ("champion", "challenger"):
            art = deploy.artifact(state, model, side)
            step = deploy.since(fleet.figures, state.baseline, model, art)
            whole = deploy.since(fleet.figures, state.start_baseline, model, art)
            versions.setdefault(model, {})[side] = {
                "version": (state.champion if side == "champion" else state.challenger)[model],
                "share": state.share() if side == "challenger" else 1 - state.share(),
                "in_step": deploy.describe(step),
                "since_start": deploy.describe(whole),
            }
    last = state.decisions[-1] if state.decisions else None
    return {
        "service": state.service,
        "strategy": state.strategy,
        "status": state.status,
        "step": state.step + 1,
        "steps": state.steps,
        "share": state.share(),
        "epoch": state.epoch,
        "live_deployment": state.owner,
        "versions": versions,
        "instances": [
            {
                k: s.get(k)
                for k in (
                    "instance",
                    "deployment",
                    "serving",
                    "epoch",
                    "predicted",
                    "unscoreable",
                    "p99_ms",
                    "refused",
                    "waiting_for_cutover",
                )
            }
            for s in fleet.statuses.get(state.service, [])
        ],
        "last_decision": last.model_dump(mode="json") if last else None,
    }


def rollout_of(
    service: str,
    config: dict[str, str],
    control_topic: str,
    evaluations_topic: str,
    evaluator_group: str,
) -> tuple[deploy.FleetState, RolloutState]:
    """The fleet as the control log and the evaluations say, and `service`'s rollout in it."""
    fleet = deploy.read_fleet_state(config, control_topic, evaluations_topic, evaluator_group)
    state = fleet.rollouts.get(service)
    if state is None:
        raise ConfigError(f"no rollout of {service} on {control_topic}")
    return fleet, state


@deploy_app.command("status")
def status(
    service: Annotated[str | None, typer.Argument(help="one service (default: all)")] = None,
    as_json: AsJson = False,
    bootstrap_servers: Bootstrap = None,
    control_topic: ControlTopic = CONTROL_TOPIC,
    evaluations_topic: EvaluationsTopic = EVALUATIONS_TOPIC,
    evaluator_group: EvaluatorGroup = EVALUATOR_GROUP,
) -> None:
    """Each rollout: strategy, step, shares, live figures per version, the last decision and its reason."""
    config = client_config(bootstrap_servers)
    fleet = deploy.read_fleet_state(config, control_topic, evaluations_topic, evaluator_group)
    chosen = [s for name, s in sorted(fleet.rollouts.items()) if service in (None, name)]
    documents = [status_document(state, fleet) for state in chosen]
    if as_json:
        typer.echo(json.dumps(documents, indent=2))
        return
    if not documents:
        Console().print("no rollout" + (f" of {service}" if service else ""))
        return
    for doc in documents:
        table = Table(
            title=f"{doc['service']}: {doc['strategy']} {doc['status']}, step {doc['step']} of "
            f"{len(doc['steps'])} at {doc['share']:.0%} (epoch {doc['epoch']}, "
            f"{doc['live_deployment']} deployment live)"
        )
        for column in (
            "model",
            "side",
            "version",
            "share",
            "in step: rides, rmse",
            "since start: rides, rmse",
        ):
            table.add_column(column)
        for model, sides in doc["versions"].items():
            for side, v in sides.items():
                table.add_row(
                    model,
                    side,
                    v["version"],
                    f"{v['share']:.0%}",
                    f"{v['in_step']['count']}, {v['in_step']['rmse']}",
                    f"{v['since_start']['count']}, {v['since_start']['rmse']}",
                )
        last = doc["last_decision"]
        table.caption = f"last decision: {last['action']}: {last['reason']}" if last else ""
        Console().print(table)


@deploy_app.command("report")
def report(
    service: ServiceArg,
    as_json: AsJson = False,
    alpha: Annotated[float, typer.Option(help="significance level")] = deploy.ALPHA,
    bootstrap_servers: Bootstrap = None,
    control_topic: ControlTopic = CONTROL_TOPIC,
    evaluations_topic: EvaluationsTopic = EVALUATIONS_TOPIC,
    evaluator_group: EvaluatorGroup = EVALUATOR_GROUP,
) -> None:
    """The evidence: each version's error since the rollout started, with 95% intervals, and a winner only
    when the difference is significant."""
    config = client_config(bootstrap_servers)
    fleet, state = rollout_of(service, config, control_topic, evaluations_topic, evaluator_group)
    document = deploy.report(state, fleet.figures, alpha)
    if as_json:
        typer.echo(json.dumps(document, indent=2))
        return
    for model, figures in document["models"].items():
        Console().print(f"{model} ({figures['segment']}): {figures['verdict']}")
        for side in ("champion", "challenger"):
            f = figures[side]
            Console().print(
                f"  {side} v{f['version']}: {f['count']} rides, rmse {f['rmse']} (95% {f['rmse_95']})"
            )


def conclude_command(
    service: str,
    action: Action,
    models: Path,
    bootstrap_servers: str | None,
    control_topic: str,
    evaluations_topic: str,
    evaluator_group: str,
) -> None:
    """A person's decision, recorded with the evidence at that moment (the report)."""
    config = client_config(bootstrap_servers)
    fleet, state = rollout_of(service, config, control_topic, evaluations_topic, evaluator_group)
    if action == "promote" and state.strategy == "blue-green":
        deploy.require_deployment(state, fleet.statuses.get(service, []))
    evidence = deploy.report(state, fleet.figures)["models"]
    reason = f"{action} by {operator()}"
    done = deploy.conclude(config, ModelRegistry(models), state, action, reason, evidence, control_topic)
    Console(stderr=True).print(f"{service}: {done.status} (epoch {done.epoch})")


def _register_conclusion(action: Action, summary: str) -> None:
    def command(
        service: ServiceArg,
        models: Registry = Path("models"),
        bootstrap_servers: Bootstrap = None,
        control_topic: ControlTopic = CONTROL_TOPIC,
        evaluations_topic: EvaluationsTopic = EVALUATIONS_TOPIC,
        evaluator_group: EvaluatorGroup = EVALUATOR_GROUP,
    ) -> None:
        conclude_command(
            service, action, models, bootstrap_servers, control_topic, evaluations_topic, evaluator_group
        )

    command.__doc__ = summary
    deploy_app.command(action)(command)


@deploy_app.command("switch")
def switch(
    service: ServiceArg,
    bootstrap_servers: Bootstrap = None,
    control_topic: ControlTopic = CONTROL_TOPIC,
    evaluations_topic: EvaluationsTopic = EVALUATIONS_TOPIC,
    evaluator_group: EvaluatorGroup = EVALUATOR_GROUP,
) -> None:
    """blue/green: hand users to the challenger's deployment now, without waiting for its gate."""
    config = client_config(bootstrap_servers)
    fleet, state = rollout_of(service, config, control_topic, evaluations_topic, evaluator_group)
    evidence = deploy.report(state, fleet.figures)["models"]
    after = deploy.switched_by_hand(state, fleet, f"switch by {operator()}", evidence)
    deploy.publish_rollout(config, after, control_topic)
    Console(stderr=True).print(f"{service}: users on the {after.owner} deployment (epoch {after.epoch})")


_register_conclusion(
    "promote", "End the rollout with the challenger as champion (registry and control topic)."
)
_register_conclusion("rollback", "End the rollout: every ride goes back to the champion.")
_register_conclusion("abort", "Like rollback, recorded as aborted (stopped by a person, not judged).")


@deploy_app.command("controller")
def controller(
    models: Registry = Path("models"),
    interval: Annotated[float, typer.Option(help="seconds between decisions")] = 2.0,
    bootstrap_servers: Bootstrap = None,
    control_topic: ControlTopic = CONTROL_TOPIC,
    evaluations_topic: EvaluationsTopic = EVALUATIONS_TOPIC,
    evaluator_group: EvaluatorGroup = EVALUATOR_GROUP,
    group: Annotated[str, typer.Option(help="controllers' consumer group")] = deploy.CONTROLLER_GROUP,
) -> None:
    """Decide canary steps on their gates until stopped (run one or more; one decides at a time)."""
    stop = stop_event(None)
    config = client_config(bootstrap_servers)
    deploy.Controller(
        config, ModelRegistry(models), control_topic, evaluations_topic, evaluator_group, interval, group
    ).run(stop)
