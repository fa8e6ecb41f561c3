"""Run one service of the registry: settings → model → clients → runner → run.

`python -m consumers.<name>` and `ridestream consume <name>` both end here; nothing on this path imports the
CLI libraries or the operator's stack, so a scoring process loads only what it runs.

With a model registry the service serves what the control topic says (each model's champion there, else the
registry's champion) and follows it: a moved alias is swapped in without a restart (shared/reload.py).
Plain artifact files (a models folder from before the registry) have no versions, so nothing to follow.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from consumers.registry import ServiceSpec, service_spec
from shared.control import ControlLog
from shared.errors import ModelArtifactError
from shared.kafka import wait_for_cluster
from shared.lifecycle import run_guarded
from shared.metrics import ServiceMetrics
from shared.protocols import Scorer
from shared.registry import CHAMPION, ModelRegistry, registry_present
from shared.reload import HotReloader, Versions, desired_versions
from shared.runner import RunStats
from shared.service import ServiceSettings, run_service
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)


def serve(
    spec: ServiceSpec,
    overrides: Mapping[str, Any] | None = None,
    kafka: KafkaSettings | None = None,
    stop: threading.Event | None = None,
) -> RunStats:
    """`overrides` are CLI flags that beat the environment. Without `stop`, SIGTERM/SIGINT stop the run."""
    settings = spec.settings(overrides)
    kafka = kafka or KafkaSettings()
    metrics = ServiceMetrics(settings.service)
    if not registry_present(settings.models_dir):
        log.info("no registry in %s: serving its plain files, without hot reload", settings.models_dir)
        return run_service(settings, kafka, spec.load_scorer(settings.models_dir), stop, metrics)
    client_config = kafka.client_config()
    wait_for_cluster(client_config, kafka.connect_timeout_s)
    scorer, reloader = follow_control(
        spec, settings, ControlLog(client_config, settings.control_topic), metrics
    )
    return run_service(settings, kafka, scorer, stop, metrics, reloader)


def follow_control(
    spec: ServiceSpec, settings: ServiceSettings, control: ControlLog, metrics: ServiceMetrics
) -> tuple[Scorer, HotReloader]:
    """The scorer of the versions the control log (read to its end) or else the registry names as champion,
    and the hot reloader that follows the log from there."""
    registry = ModelRegistry(settings.models_dir)
    champions = {m: v for m in spec.models if (v := registry.alias_version(m, CHAMPION)) is not None}

    def refused(versions: Versions, reason: str) -> None:
        for model, version in versions.items():
            metrics.on_model_refused(model, version)
            try:
                registry.mark_refused(
                    model, version, f"{settings.service}@{settings.instance_name}: {reason}"
                )
            except Exception as exc:  # the refusal is logged and counted already; the tag is a courtesy
                log.warning("could not tag %s/%s as refused in the registry: %s", model, version, exc)

    serving = desired_versions(control.read_to_end(), spec.models, champions)
    try:
        scorer = spec.load_scorer(settings.models_dir, serving)
    except ModelArtifactError as exc:
        if serving == champions:
            raise
        # The control log can name versions this registry cannot serve (a registry made anew beside an old
        # broker, a corrupt version published while this instance was down): serve the registry's own.
        log.error("refused %s from the control topic (%s); serving the registry's champions", serving, exc)
        refused({m: v for m, v in serving.items() if champions.get(m) != v}, f"load failed: {exc}")
        serving = champions
        scorer = spec.load_scorer(settings.models_dir, serving)
    reloader = HotReloader(
        settings.service,
        spec.models,
        serving,
        control,
        lambda versions: spec.load_scorer(settings.models_dir, versions),
        refused,
    )
    reloader.start()
    return scorer, reloader


def main(name: str) -> None:
    """The `python -m consumers.<name>` entry point: configured by environment only."""
    spec = service_spec(name)
    run_guarded(lambda: serve(spec))
