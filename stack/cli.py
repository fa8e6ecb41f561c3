"""`ridestream`: one thin entry point for every command.

Domain errors (the RidestreamError tree) and invalid settings are printed as one plain line on stderr with a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from consumers.evaluator.service import EVALUATOR_GROUP
from consumers.registry import SERVICE_NAMES, service_spec
from consumers.serve import serve
from schemas.topics import CONTROL_TOPIC, EVALUATIONS_TOPIC
from shared.errors import ConfigError, RidestreamError
from shared.lifecycle import run_guarded
from shared.runner import DEFAULT_BATCH_SIZE

if TYPE_CHECKING:
    from shared.settings import KafkaSettings

app = typer.Typer(
    name="ridestream",
    help="Score NYC taxi rides in real time on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

BootstrapOption = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers",
        "-b",
        envvar="KAFKA_BOOTSTRAP_SERVERS",
        help="Kafka bootstrap servers (default: the local broker started by `ridestream broker up`)",
    ),
]


def _register_broker() -> None:
    from stack.broker_cli import broker_app

    app.add_typer(broker_app, name="broker", help="Start, stop and inspect the local Apache Kafka broker.")


_register_broker()


def _register_database() -> None:
    from stack.db_cli import db_app

    app.add_typer(db_app, name="db", help="Start, stop and inspect the batch job's local PostgreSQL server.")


_register_database()


def _register_batch() -> None:
    from stack.batch_cli import batch_app

    app.add_typer(
        batch_app, name="batch", help="The batch job: load rides into a database, score windows of them."
    )


_register_batch()


def _register_deploy() -> None:
    from stack.deploy_cli import deploy_app

    app.add_typer(
        deploy_app,
        name="deploy",
        help="Roll a new model version out: canary, A/B, shadow (docs/deployments.md).",
    )


_register_deploy()

models_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(models_app, name="models", help="The model registry: versions, aliases, what serves.")
ControlTopicOption = Annotated[
    str,
    typer.Option("--control-topic", envvar="RIDESTREAM_CONTROL_TOPIC", help="the fleet's control topic"),
]
RegistryOption = Annotated[
    Path, typer.Option("--models", envvar="MODELS_DIR", help="registry folder (or MLFLOW_TRACKING_URI)")
]


@models_app.command("list")
def models_list(
    models: RegistryOption = Path("models"),
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document on stdout")] = False,
    bootstrap_servers: BootstrapOption = None,
    evaluations_topic: Annotated[
        str, typer.Option(envvar="EVALUATOR_EVALUATIONS_TOPIC", help="the evaluator's live figures")
    ] = EVALUATIONS_TOPIC,
    evaluator_group: Annotated[
        str, typer.Option(envvar="EVALUATOR_GROUP_ID", help="the evaluator whose figures to show")
    ] = EVALUATOR_GROUP,
) -> None:
    """Every registered version: model, version, aliases, validation metrics, live error (from the evaluator,
    when Kafka is configured), when it was trained, and why a service refused it if one did."""
    import json

    from rich.table import Table

    from shared.registry import ModelRegistry, registry_present

    if not registry_present(models):
        raise RidestreamError(f"no model registry in {models}: run `ridestream train --models {models}`")
    versions = ModelRegistry(models).versions()
    live = live_figures_by_version(bootstrap_servers, evaluations_topic, evaluator_group)
    if as_json:
        rows = [{**v.to_json(), "live": live.get((v.model, v.artifact_version), {})} for v in versions]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"model registry ({models})")
    columns = ("model", "version", "aliases", "validation rmse", "live rmse (n)", "trained at", "refused")
    for column in columns:
        table.add_column(column)
    for v in versions:
        figures = live.get((v.model, v.artifact_version), {})
        headline = figures.get(OVERALL)
        table.add_row(
            v.model,
            v.version,
            ", ".join(v.aliases),
            f"{v.metrics.get('validation_rmse', float('nan')):.3f}",
            f"{headline['rmse']:.3f} ({headline['count']})" if headline else "",
            v.trained_at,
            v.refused,
        )
    Console().print(table)


OVERALL = "overall"


def live_figures_by_version(
    bootstrap_servers: str | None, topic: str, group_id: str
) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """(model, artifact version) → segment → count, rmse, mae, bias, plus "overall" (the segments together);
    empty when no Kafka is configured or it does not answer (the registry alone is still listed)."""
    from consumers.evaluator.join import Sums
    from consumers.evaluator.service import read_fleet_figures
    from shared.local_cluster import recorded_bootstrap_servers

    kafka = _kafka_settings(bootstrap_servers)
    if kafka.bootstrap_servers is None and recorded_bootstrap_servers() is None:
        return {}
    try:
        figures = read_fleet_figures(kafka.client_config(), topic, group_id, timeout_s=5.0)
    except Exception as exc:  # the registry is what was asked for; live figures are a bonus
        Console(stderr=True).print(f"live figures unavailable ({exc})")
        return {}
    by_version: dict[tuple[str, str], dict[str, Sums]] = {}
    for key, sums in figures.items():
        segments = by_version.setdefault((key.model, key.version), {OVERALL: Sums()})
        segments[key.segment] = sums
        segments[OVERALL].merge(sums)
    return {
        version: {
            segment: {"count": s.count, "rmse": s.rmse, "mae": s.mae, "bias": s.bias}
            for segment, s in segments.items()
        }
        for version, segments in by_version.items()
    }


@models_app.command("alias")
def models_alias(
    model: Annotated[str, typer.Argument(help="registered model, e.g. tip")],
    alias: Annotated[str, typer.Argument(help="champion or challenger")],
    version: Annotated[str, typer.Argument(help="version number")],
    models: RegistryOption = Path("models"),
    bootstrap_servers: BootstrapOption = None,
    control_topic: ControlTopicOption = CONTROL_TOPIC,
) -> None:
    """Point ALIAS of MODEL at VERSION in the registry, then on the control topic: running services swap
    to the new champion without a restart."""
    from shared.registry import ModelRegistry

    registry = ModelRegistry(models)
    registry.set_alias(model, alias, version)
    typer.echo(f"{model}@{alias} -> {version}")
    publish_aliases(registry, [model], bootstrap_servers, control_topic)


def publish_aliases(
    registry: Any, models: list[str], bootstrap_servers: str | None, control_topic: str = CONTROL_TOPIC
) -> None:
    """Tell running fleets (the control topic) what the registry's aliases of `models` now say. Without any
    Kafka configured there is no fleet to tell; a configured one that does not answer is an error."""
    from shared.control import operator, publish_control, serving_records
    from shared.kafka import wait_for_cluster
    from shared.local_cluster import recorded_bootstrap_servers

    kafka = _kafka_settings(bootstrap_servers)
    if kafka.bootstrap_servers is None and recorded_bootstrap_servers() is None:
        Console(stderr=True).print(
            "no Kafka configured (--bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS): only the registry changed; "
            "services read it when they start"
        )
        return
    client_config = kafka.client_config()
    try:
        wait_for_cluster(client_config, kafka.connect_timeout_s)
        records = serving_records({m: registry.aliases(m) for m in models}, operator())
        publish_control(client_config, records, control_topic)
    except RidestreamError as exc:
        raise RidestreamError(
            f"the registry changed but the control topic did not ({exc}); running services keep their "
            "version: run the command again once Kafka answers"
        ) from None
    Console(stderr=True).print(f"published to {control_topic} at {client_config['bootstrap.servers']}")


@models_app.command("show")
def models_show(
    reference: Annotated[str, typer.Argument(help="MODEL, MODEL@ALIAS or MODEL/VERSION")],
    models: RegistryOption = Path("models"),
) -> None:
    """One version's details as JSON: aliases, metrics, the artifact's passport."""
    import json

    from shared.registry import ModelRegistry, parse_reference

    registry = ModelRegistry(models)
    model, alias, number = parse_reference(reference)
    info = registry.describe(registry.version_of(model, alias, number))
    typer.echo(json.dumps(info.to_json(), indent=2))


def _kafka_settings(bootstrap_servers: str | None) -> KafkaSettings:
    """An explicit --bootstrap-servers beats KAFKA_BOOTSTRAP_SERVERS; without one, the environment (or the
    default) decides."""
    from shared.settings import KafkaSettings

    if bootstrap_servers:
        return KafkaSettings(bootstrap_servers=bootstrap_servers)
    return KafkaSettings()


@app.command()
def produce(
    data: Annotated[
        list[Path] | None, typer.Option("--data", help="TLC trip file(s); none: synthetic rides")
    ] = None,
    rides: Annotated[int | None, typer.Option(help="at most this many rides")] = None,
    rate: Annotated[float | None, typer.Option(help="fixed rate, events/s")] = None,
    speedup: Annotated[float | None, typer.Option(help="event-time replay, X times real time")] = None,
    topic: Annotated[str | None, typer.Option(help="output topic (default rides.events)")] = None,
    partitions: Annotated[
        int | None, typer.Option(help="partitions when the topic is created (default 6)")
    ] = None,
    progress_interval: Annotated[
        float | None, typer.Option(help="ride seconds between progress events")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the synthetic generator and ride paths")] = None,
    bootstrap_servers: BootstrapOption = None,
    report: Annotated[Path | None, typer.Option(help="also write the summary as JSON to this file")] = None,
) -> None:
    """Replay rides (TLC files or synthetic) into Kafka as ride events keyed by ride_id."""
    from producer.run import produce as run_produce
    from producer.run import summary_json, summary_table
    from producer.settings import ProducerSettings

    # Flags left out (None) keep the environment's or the default value; pydantic validates the rest.
    flags: dict[str, Any] = {
        "data": data or None,
        "rides": rides,
        "rate": rate,
        "speedup": speedup,
        "topic": topic,
        "partitions": partitions,
        "progress_interval_s": progress_interval,
        "seed": seed,
    }
    settings = ProducerSettings(**{k: v for k, v in flags.items() if v is not None})
    kafka = _kafka_settings(bootstrap_servers)
    console = Console(stderr=True)
    outcome = run_produce(settings, kafka, console)
    Console().print(summary_table(outcome, settings.topic))
    if report is not None:
        report.write_text(summary_json(outcome))
    if outcome.summary.failed:
        raise RidestreamError(
            f"{outcome.summary.failed} events were not delivered (first error: {outcome.summary.first_error})"
        )


@app.command()
def schemas(
    check: Annotated[bool, typer.Option(help="exit non-zero when a file differs instead of writing")] = False,
) -> None:
    """Regenerate the JSON Schema files of the wire contract (schemas/json/) and the HTTP services' OpenAPI
    documents (schemas/openapi/)."""
    from schemas.json_schema import drifted_schemas, write_schemas
    from stack.openapi import drifted_openapi, write_openapi

    if check:
        drifted = drifted_schemas() + drifted_openapi()
        if drifted:
            raise RidestreamError(
                f"schema files out of date: {', '.join(drifted)} (run `ridestream schemas`)"
            )
        return
    for path in [*map(str, write_schemas()), *write_openapi()]:
        typer.echo(path)


DataOption = Annotated[
    list[Path] | None, typer.Option("--data", help="TLC trip file(s); none: synthetic rides")
]
ModelsOption = Annotated[Path, typer.Option("--models", help="model directory")]


@app.command()
def train(
    data: DataOption = None,
    models: ModelsOption = Path("models"),
    rides: Annotated[int, typer.Option(help="synthetic rides to train on when no --data is given")] = 50_000,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="do nothing when models already exist")
    ] = False,
    promote: Annotated[
        bool,
        typer.Option(
            "--promote",
            help="make the new versions champions (a new registry's first always are) and tell running "
            "services through the control topic",
        ),
    ] = False,
    bootstrap_servers: BootstrapOption = None,
    control_topic: ControlTopicOption = CONTROL_TOPIC,
) -> None:
    """Fit the duration, dynamic-duration, tip and cost models (and the zoomcamp baseline), and register
    each as a new version in the model registry at --models (or MLFLOW_TRACKING_URI)."""
    from consumers.training import models_present, train_models
    from producer.synthetic import synthesize_trips
    from producer.trips import read_many

    console = Console(stderr=True)
    if if_missing and models_present(models):
        console.print(f"models already in {models}; nothing to do")
        return
    frame = read_many(list(data)) if data else synthesize_trips(rides, seed=1)
    source = "files" if data else "synthetic"
    console.print(f"training on {len(frame.trips):,} rides ({source}); skipped {dict(frame.skipped)}")
    metrics = train_models(frame.trips, models, progress=console.print, promote=promote)
    Console().print_json(data=metrics)
    if promote:
        from consumers.registry import SERVICES
        from shared.registry import ModelRegistry

        served = sorted({model for spec in SERVICES for model in spec.models})
        publish_aliases(ModelRegistry(models), served, bootstrap_servers, control_topic)


@app.command()
def evaluate(
    data: Annotated[list[Path], typer.Option("--data", help="TLC trip file(s) to evaluate on")],
    models: ModelsOption = Path("models"),
    json_out: Annotated[Path | None, typer.Option("--json", help="write the metrics here as JSON")] = None,
) -> None:
    """RMSE and MAE of every model on any TLC file, next to the MLOps-zoomcamp baseline."""
    import json

    from rich.table import Table

    from consumers.training import evaluate_models
    from producer.trips import read_many

    results = evaluate_models(read_many(list(data)).trips, models)
    table = Table(title=f"evaluation on {', '.join(p.name for p in data)}")
    for column in ("model", "rmse", "mae"):
        table.add_column(column)
    rows = {**results["models"], "baseline (zoomcamp)": results["baseline"]}
    for name, values in rows.items():
        table.add_row(name, f"{values['rmse']:.3f}", f"{values['mae']:.3f}")
    Console().print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=2) + "\n")


@app.command()
def demo(
    data: DataOption = None,
    rides: Annotated[int, typer.Option(help="rides to replay")] = 2000,
    rate: Annotated[
        float | None, typer.Option(help="events/s (default 2000; ignored with --speedup)")
    ] = None,
    speedup: Annotated[float | None, typer.Option(help="event-time replay at X times real time")] = None,
    models: ModelsOption = Path("models"),
    bootstrap_servers: Annotated[
        str | None,
        typer.Option("--bootstrap-servers", "-b", help="use this cluster instead of starting a local broker"),
    ] = None,
    switch: Annotated[
        bool,
        typer.Option(
            "--switch/--no-switch", help="move the tip model's champion to another version half-way through"
        ),
    ] = True,
    rollout: Annotated[
        str | None,
        typer.Option(help="instead, roll tip's other version out live: canary (decided by a controller), ab"),
    ] = None,
) -> None:
    """The main job: local broker, models, the three services (duration twice) and the evaluator, rides, a
    live view with each version's live error, a champion moved mid-run (or a rollout), and a summary."""
    from stack.demo import DemoOptions, run_demo

    options = DemoOptions(
        data=list(data or []),
        rides=rides,
        rate=None if speedup else (rate or 2000.0),
        speedup=speedup,
        models_dir=models,
        bootstrap_servers=bootstrap_servers,
        switch=switch,
        rollout=rollout,
    )
    if not run_demo(options):
        raise RidestreamError("the demo ended before every expected prediction was seen")


class Guarantee(str, enum.Enum):
    at_least_once = "at_least_once"
    exactly_once = "exactly_once"


class Engine(str, enum.Enum):
    confluent = "confluent"
    faust = "faust"
    faust_batched = "faust-batched"


@app.command("serve")
def serve_command(
    host: Annotated[str | None, typer.Option(help="address to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8000; 0: any free port)")] = None,
    models: Annotated[Path | None, typer.Option("--models", help="model registry (default ./models)")] = None,
    bootstrap_servers: BootstrapOption = None,
    control_topic: Annotated[str | None, typer.Option(help="the control topic to follow")] = None,
    follow_control: Annotated[
        bool | None,
        typer.Option(
            "--follow-control/--no-follow-control",
            help="swap versions as the control topic says (needs Kafka; default on when a broker is known)",
        ),
    ] = None,
) -> None:
    """The estimate service: POST /v1/estimates gives each ride's duration, tip and total cost over HTTP."""
    from consumers.estimate.service import EstimateSettings
    from consumers.estimate.service import serve as serve_estimates

    flags: dict[str, Any] = {
        "host": host,
        "port": port,
        "models_dir": models,
        "control_topic": control_topic,
        "follow_control": follow_control,
    }
    # (flags beat the environment, which model_validate would not read)
    settings = EstimateSettings(**{k: v for k, v in flags.items() if v is not None})
    kafka = _kafka_settings(bootstrap_servers)
    try:
        kafka.client_config()
    except ConfigError as exc:
        if follow_control:
            raise
        logging.getLogger(__name__).warning("%s; estimates will not follow the control topic", exc)
        serve_estimates(settings, None)
        return
    serve_estimates(settings, kafka)


@app.command("backend")
def backend_command(
    host: Annotated[str | None, typer.Option(help="address to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8080; 0: any free port)")] = None,
    estimate_url: Annotated[
        str | None, typer.Option(help="the estimate service (default http://127.0.0.1:8000)")
    ] = None,
    zones: Annotated[Path | None, typer.Option(help="TLC taxi_zone_lookup.csv, for zone names")] = None,
    bootstrap_servers: BootstrapOption = None,
) -> None:
    """The TaxiApp backend: ride requests, driver updates, predictions streamed to riders, the rider page."""
    from consumers.backend.service import BackendSettings
    from consumers.backend.service import serve as serve_backend

    flags: dict[str, Any] = {"host": host, "port": port, "estimate_url": estimate_url, "zones_csv": zones}
    settings = BackendSettings(**{k: v for k, v in flags.items() if v is not None})
    serve_backend(settings, _kafka_settings(bootstrap_servers))


# The registry's services as the command line's choices (typer takes an Enum; the registry is the one list).
# Its members are built at run time, which mypy's Enum() support cannot follow (hence the narrow ignore).
# The evaluator is no scorer (it loads no model) but runs and scales the same way.
EVALUATOR = "evaluator"
Service = enum.Enum(  # type: ignore[misc]
    "Service", {name: name for name in (*SERVICE_NAMES, EVALUATOR)}, type=str
)


@app.command()
def consume(
    service: Annotated[Service, typer.Argument(help="which scoring service to run")],
    bootstrap_servers: BootstrapOption = None,
    models: Annotated[
        Path | None, typer.Option("--models", help="model directory (default ./models)")
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="consumer group id (default ridestream-<service>)")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=f"records per micro-batch (default {DEFAULT_BATCH_SIZE})")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="serve /metrics, /healthz, /readyz on this port")
    ] = None,
    instance_id: Annotated[
        str | None, typer.Option(help="static group membership id (group.instance.id)")
    ] = None,
    max_messages: Annotated[
        int | None, typer.Option(help="stop after this many records (bounded runs)")
    ] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(help="stop after this many seconds without records")
    ] = None,
    processing_guarantee: Annotated[
        Guarantee | None,
        typer.Option(
            help="at_least_once (default) or exactly_once (transactions; read outputs with read_committed)"
        ),
    ] = None,
    instance_name: Annotated[
        str | None,
        typer.Option(
            help="stable instance name; names the transactional.id under exactly_once (default: host name)"
        ),
    ] = None,
    deployment: Annotated[
        str | None,
        typer.Option(
            help="blue/green: blue (default) or green, a consumer group of its own (docs/deployments.md)"
        ),
    ] = None,
    engine: Annotated[
        Engine, typer.Option(help="confluent (default) or Faust agents per event / batched (docs/faust.md)")
    ] = Engine.confluent,
) -> None:
    """Run one scoring service: consume ride events, publish predictions, dead-letter bad input."""
    flags = {
        "models_dir": models,
        "group_id": group,
        "batch_size": batch_size,
        "metrics_port": metrics_port,
        "group_instance_id": instance_id,
        "max_messages": max_messages,
        "idle_timeout_s": idle_timeout,
        "processing_guarantee": processing_guarantee.value if processing_guarantee else None,
        "instance_name": instance_name,
        "deployment": deployment,
    }
    if deployment is not None and (engine != Engine.confluent or service.value == EVALUATOR):
        raise ConfigError("--deployment (blue/green) is for scoring services on the confluent engine")
    kafka = _kafka_settings(bootstrap_servers)
    overrides = {k: v for k, v in flags.items() if v is not None}
    if service.value == EVALUATOR:
        run_evaluator_command(overrides, kafka, engine)
        return
    spec = service_spec(service.value)
    if engine == Engine.confluent:
        stats = serve(spec, overrides, kafka)
    else:
        try:
            from stack.faust_engine import serve_with_faust
        except ImportError as exc:
            raise RidestreamError(
                f"--engine {engine.value} needs faust: pip install 'ridestream[faust]' ({exc})"
            ) from None

        stats = serve_with_faust(spec, overrides, kafka, batched=engine == Engine.faust_batched)
    logging.getLogger("ridestream").info("stopped: %s", stats)


def run_evaluator_command(overrides: dict[str, Any], kafka: KafkaSettings, engine: Engine) -> None:
    from consumers.evaluator.service import EvaluatorSettings, run_evaluator

    unsupported = sorted(set(overrides) - set(EvaluatorSettings.model_fields))
    if unsupported or engine != Engine.confluent:
        flags = [f"--{name.replace('_', '-')}" for name in unsupported] + (
            [f"--engine {engine.value}"] if engine != Engine.confluent else []
        )
        raise RidestreamError(f"the evaluator does not take {', '.join(flags)} (see docs/models.md)")
    consumed = run_evaluator(EvaluatorSettings(**overrides), kafka)
    logging.getLogger("ridestream").info("stopped after %d records", consumed)


def main() -> None:
    run_guarded(app)


if __name__ == "__main__":
    main()
