"""The main job, for a person: broker → models → fleet → rides → live view → summary.

Everything started here is stopped here, in reverse order, on success, error or Ctrl+C (an ExitStack).
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from consumers.evaluator.service import SERVICE as EVALUATOR
from consumers.registry import SERVICE_NAMES
from producer.run import ProduceReport, produce
from producer.settings import ProducerSettings
from schemas.topics import CONTROL_TOPIC, RIDE_EVENTS_TOPIC, dead_letter_topic, prediction_topic
from shared.control import ControlLog
from shared.errors import RidestreamError
from shared.kafka import ensure_topic
from shared.settings import KafkaSettings
from stack.fleet import (
    ServiceProcess,
    port_or_free,
    running_fleet,
    start_http_service,
    stop_service,
    wait_ready,
)
from stack.live_view import FleetView, FleetWatcher

# Seconds without a new prediction, once the producer is done, after which the demo stops waiting.
SETTLE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DemoOptions:
    data: list[Path] = field(default_factory=list)
    rides: int = 2000
    rate: float | None = 2000.0
    speedup: float | None = None
    models_dir: Path = Path("models")
    instances: dict[str, int] = field(default_factory=lambda: {"duration": 2, "tip": 1, "cost": 1})
    partitions: int = 6
    bootstrap_servers: str | None = None
    live: bool = True
    # Move SWITCHED_MODEL's champion to its other version once half the rides have been scored.
    switch: bool = True
    # Or roll the other version out with this strategy (canary: decided live by a controller).
    rollout: str | None = None


SWITCHED_MODEL = "tip"
# The request path's documented ports, taken when free.
ESTIMATE_PORT, BACKEND_PORT = 8000, 8080
ZONE_LOOKUP = "taxi_zone_lookup.csv"
EVALUATOR_ENV = {"PUBLISH_INTERVAL_S": "1"}


def expected_predictions(report: ProduceReport) -> dict[str, int]:
    started = report.summary.published["ride_started"]
    return {"duration": started + report.summary.published["ride_progress"], "tip": started, "cost": started}


def ensure_models(options: DemoOptions, console: Console) -> None:
    from consumers.training import models_present, train_models
    from producer.synthetic import synthesize_trips
    from producer.trips import read_many

    if models_present(options.models_dir):
        console.print(f"models: using {options.models_dir}")
        return
    source = "the given TLC files" if options.data else "20,000 synthetic rides"
    with console.status(f"training models on {source} (first run only)…"):
        trips = read_many(options.data).trips if options.data else synthesize_trips(20_000, seed=1).trips
        train_models(trips, options.models_dir)
    console.print(f"models: trained into {options.models_dir}")


def ensure_second_version(options: DemoOptions, console: Console) -> str | None:
    """The version of SWITCHED_MODEL the demo moves its champion to: another one than the champion, trained
    (on other synthetic rides) when the registry has none. None without a registry."""
    from consumers.training import train_models
    from producer.synthetic import synthesize_trips
    from shared.registry import CHAMPION, ModelRegistry, registry_present

    if not registry_present(options.models_dir):
        return None
    registry = ModelRegistry(options.models_dir)
    champion = registry.alias_version(SWITCHED_MODEL, CHAMPION)
    others = [
        v.version for v in registry.versions([SWITCHED_MODEL]) if v.version != champion and not v.refused
    ]
    if others:
        return others[-1]
    with console.status(f"training a second version of {SWITCHED_MODEL} to switch to…"):
        trips = synthesize_trips(20_000, seed=2).trips
        trained = train_models(trips, options.models_dir, only=[SWITCHED_MODEL])
    return str(trained["models"][SWITCHED_MODEL]["registry_version"])


def version_labels(models_dir: Path) -> dict[str, str]:
    """artifact version → "tip v2" for every registered version (the live view's names)."""
    from shared.registry import ModelRegistry, registry_present

    if not registry_present(models_dir):
        return {}
    return {v.artifact_version: f"{v.model} v{v.version}" for v in ModelRegistry(models_dir).versions()}


def move_champion(models_dir: Path, version: str, client_config: dict[str, str]) -> str:
    """Point SWITCHED_MODEL's champion at `version` in the registry and on the control topic, as
    `ridestream models alias` does; returns the line the live view shows."""
    from shared.control import operator, publish_control, serving_records
    from shared.registry import CHAMPION, ModelRegistry

    registry = ModelRegistry(models_dir)
    before = registry.alias_version(SWITCHED_MODEL, CHAMPION)
    registry.set_alias(SWITCHED_MODEL, CHAMPION, version)
    publish_control(
        client_config, serving_records({SWITCHED_MODEL: registry.aliases(SWITCHED_MODEL)}, operator())
    )
    return (
        f"{time.strftime('%H:%M:%S')} moved {SWITCHED_MODEL}@champion v{before} → v{version} "
        "(`ridestream models alias`): the running tip instance swaps without a restart"
    )


def start_broker(stack: ExitStack, console: Console) -> str:
    from stack.broker import LocalKafka

    with console.status("starting a local Apache Kafka broker (KRaft)…"):
        kafka = stack.enter_context(LocalKafka.start(nodes=1))
    console.print(f"broker: {kafka.bootstrap_servers}")
    return kafka.bootstrap_servers


def summary(view: FleetView, report: ProduceReport, expected: dict[str, int]) -> Table:
    table = Table(title="ridestream demo summary")
    for column in ("service", "expected", "predictions", "p50 ms", "p99 ms", "versions: predictions, live"):
        table.add_column(column, justify="left" if column[0] in "sv" else "right")
    for service, count in expected.items():
        seen = view.services[service]
        p50, p99 = seen.percentile(0.5), seen.percentile(0.99)
        table.add_row(
            service,
            f"{count:,}",
            f"{seen.predictions:,}",
            "—" if p50 is None else f"{p50:.0f}",
            "—" if p99 is None else f"{p99:.0f}",
            view.serving_cell(service),
        )
    table.caption = (
        f"published {report.summary.total:,} events from {report.source}; failed {report.summary.failed}"
    )
    return table


@dataclass
class LiveRollout:
    """A rollout of SWITCHED_MODEL's other version during the demo, its controller on a thread, and the
    decisions it has shown."""

    control: ControlLog
    started_note: str
    shown: int = 0

    @classmethod
    def start(
        cls,
        stack: ExitStack,
        options: DemoOptions,
        version: str,
        client_config: dict[str, str],
        stop: threading.Event,
    ) -> LiveRollout:
        from consumers.registry import service_spec
        from schemas.control import Gates
        from shared.registry import ModelRegistry
        from stack import deploy

        registry = ModelRegistry(options.models_dir)
        strategy = options.rollout or "canary"
        steps = deploy.steps_for(strategy, DEMO_CANARY_STEPS if strategy == "canary" else None, None)  # type: ignore[arg-type]
        fleet = deploy.read_fleet_state(client_config)
        # Small gates, for a demo of a few thousand rides on a laptop (the defaults are 200 rides a step).
        gates = Gates(min_rides=40, tolerance=0.25, max_p99_ms=60_000)
        spec = service_spec(SWITCHED_MODEL)
        state = deploy.started(spec, registry, fleet, strategy, {SWITCHED_MODEL: version}, steps, gates)  # type: ignore[arg-type]
        controller = deploy.Controller(
            client_config, registry, interval_s=1.0, group=f"demo-{uuid.uuid4().hex[:6]}"
        )
        thread = threading.Thread(target=controller.run, args=(stop,), name="deploy-controller", daemon=True)
        thread.start()
        stack.callback(thread.join, 10)
        stack.callback(stop.set)  # (callbacks run last first: the controller is told to stop, then joined)
        deploy.publish_rollout(client_config, state, CONTROL_TOPIC)
        control = ControlLog(client_config)
        stack.callback(control.close)
        stamp = time.strftime("%H:%M:%S")
        note = f"{stamp} {strategy} of {SWITCHED_MODEL} v{version} started: {state.decisions[-1].reason}"
        return cls(control, note)

    def poll(self, view: FleetView) -> None:
        """Show each new decision of the rollout as it happens."""
        from schemas.control import RolloutState, rollout_key

        if not self.control.poll(0):
            return
        raw = self.control.state.get(rollout_key(SWITCHED_MODEL))
        if raw is None:
            return
        state = RolloutState.model_validate_json(raw)
        for decision in state.decisions[self.shown :]:
            if decision.action != "start":
                view.notes.append(
                    f"{decision.at:%H:%M:%S} {state.strategy} step {decision.step + 1}: {decision.action}: "
                    f"{decision.reason}"
                )
        self.shown = len(state.decisions)


DEMO_CANARY_STEPS = [0.25, 0.5, 1.0]


def zone_lookup(options: DemoOptions) -> Path | None:
    """The TLC zone names, beside the data files or in ../shared/data, when there."""
    for folder in [*(path.parent for path in options.data), Path("../shared/data")]:
        if (folder / ZONE_LOOKUP).is_file():
            return folder / ZONE_LOOKUP
    return None


def start_request_path(
    stack: ExitStack, options: DemoOptions, bootstrap: str, log_dir: Path
) -> list[ServiceProcess]:
    """The estimate service and the backend, beside the fleet (docs/http.md)."""
    estimate_port, backend_port = port_or_free(ESTIMATE_PORT), port_or_free(BACKEND_PORT)
    zones = zone_lookup(options)
    backend = ["backend", "--estimate-url", f"http://127.0.0.1:{estimate_port}"]
    web = [
        start_http_service(
            "estimate", ["serve", "--models", str(options.models_dir)], estimate_port, bootstrap, log_dir
        ),
        start_http_service(
            "backend",
            [*backend, *(["--zones", str(zones)] if zones else [])],
            backend_port,
            bootstrap,
            log_dir,
        ),
    ]
    stack.callback(lambda: [stop_service(service) for service in web])
    return web


def run_demo(options: DemoOptions, console: Console | None = None) -> bool:
    """Run the whole fleet once; True when every expected prediction was seen."""
    console = console or Console()
    stop = threading.Event()
    with ExitStack() as stack:
        bootstrap = options.bootstrap_servers or start_broker(stack, console)
        kafka = KafkaSettings(bootstrap_servers=bootstrap)
        client_config = kafka.client_config()
        ensure_models(options, console)
        topics = [
            RIDE_EVENTS_TOPIC,
            *map(prediction_topic, SERVICE_NAMES),
            *map(dead_letter_topic, SERVICE_NAMES),
        ]
        for topic in topics:
            ensure_topic(client_config, topic, options.partitions)
        switch_to = ensure_second_version(options, console) if options.switch or options.rollout else None
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ridestream-demo-")))
        counts = {**options.instances, EVALUATOR: 1}
        fleet = stack.enter_context(
            running_fleet(counts, bootstrap, options.models_dir, log_dir, {EVALUATOR: EVALUATOR_ENV})
        )
        web = start_request_path(stack, options, bootstrap, log_dir)
        with console.status(f"starting {len(fleet) + len(web)} service processes…"):
            wait_ready([*fleet, *web])
        console.print(
            "fleet: " + ", ".join(f"{i.name} (pid {i.process.pid}, metrics :{i.metrics_port})" for i in fleet)
        )
        estimate, backend = web
        console.print(
            f"rider page: http://127.0.0.1:{backend.metrics_port}/   estimate service: "
            f"http://127.0.0.1:{estimate.metrics_port}/docs   (both up while the demo runs)"
        )
        watcher = FleetWatcher(client_config)
        watcher.view.labels = version_labels(options.models_dir)
        stack.callback(watcher.close)
        settings = ProducerSettings(
            data=options.data,
            rides=options.rides,
            rate=options.rate,
            speedup=options.speedup,
            partitions=options.partitions,
        )
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="producer"))
        producing = pool.submit(produce, settings, kafka, Console(quiet=True), stop.is_set)
        last_change, last_total = time.monotonic(), -1
        rollout: LiveRollout | None = None
        with Live(
            watcher.view.render("ridestream: live predictions"),
            console=console,
            refresh_per_second=4,
            transient=False,
            auto_refresh=options.live,
        ) as live:
            try:
                while True:
                    watcher.poll(0.25)
                    live.update(watcher.view.render("ridestream: live predictions"))
                    total = sum(v.predictions for v in watcher.view.services.values())
                    if total != last_total:
                        last_change, last_total = time.monotonic(), total
                    if rollout is not None:
                        rollout.poll(watcher.view)
                    scored = watcher.view.services[SWITCHED_MODEL].predictions
                    if switch_to and options.rollout and scored >= options.rides // 5:
                        rollout = LiveRollout.start(stack, options, switch_to, client_config, stop)
                        watcher.view.notes.append(rollout.started_note)
                        switch_to = None
                    elif switch_to and scored >= options.rides // 2:
                        watcher.view.notes.append(move_champion(options.models_dir, switch_to, client_config))
                        watcher.view.labels = version_labels(options.models_dir)
                        switch_to = None
                    if producing.done():
                        report = producing.result()  # re-raises the producer's error, if any
                        expected = expected_predictions(report)
                        done = all(watcher.view.services[s].predictions >= n for s, n in expected.items())
                        if done or time.monotonic() - last_change > SETTLE_TIMEOUT_S:
                            break
                    for instance in [*fleet, *web]:
                        if instance.process.poll() is not None:
                            raise RidestreamError(f"{instance.name} exited:\n{instance.log_tail()}")
            except KeyboardInterrupt:
                stop.set()
                console.print("stopping…")
                return False
        console.print(summary(watcher.view, report, expected))
        return done
