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
from consumers.routing import Mode, RoutedScorer
from shared.control import ControlLog
from shared.errors import ModelArtifactError
from shared.kafka import wait_for_cluster
from shared.lifecycle import run_guarded
from shared.metrics import ServiceMetrics
from shared.protocols import Scorer
from shared.registry import CHAMPION, registry_present, serving_registry
from shared.reload import HotReloader, Plan, Versions, changed_versions, desired_plan, pinned
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
    control = ControlLog(client_config, settings.control_topic)
    try:
        scorer, reloader = follow_control(spec, settings, control, metrics)
    except BaseException:
        control.close()
        raise
    try:
        return run_service(settings, kafka, scorer, stop, metrics, reloader)
    finally:
        reloader.stop()  # (the runner stops it on its way out too; a failure before it exists does not)


class PlanBuilder:
    """Scorers of plans, each version set loaded once: a canary step only changes the share, so it swaps
    in a new router over the scorers already loaded."""

    KEEP = 4

    def __init__(self, spec: ServiceSpec, settings: ServiceSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.loaded: dict[tuple[tuple[str, str], ...], Scorer] = {}

    def scorer_of(self, versions: tuple[tuple[str, str], ...]) -> Scorer:
        if versions not in self.loaded:
            self.loaded[versions] = self.spec.load_scorer(self.settings.models_dir, dict(versions))
            while len(self.loaded) > self.KEEP:
                del self.loaded[next(iter(self.loaded))]
        return self.loaded[versions]

    def __call__(self, plan: Plan) -> Scorer:
        champion = self.scorer_of(plan.champion)
        if not plan.mode:
            return champion
        mode: Mode = "shadow" if plan.mode == "shadow" else "split"
        return RoutedScorer(champion, self.scorer_of(plan.challenger), plan.share, mode, plan.epoch)


def follow_control(
    spec: ServiceSpec,
    settings: ServiceSettings,
    control: ControlLog,
    metrics: ServiceMetrics,
    report_status: bool = True,
) -> tuple[Scorer, HotReloader]:
    """The scorer of the plan the control log (read to its end) asks for, or else of the registry's
    champions, and the hot reloader that follows the log from there."""
    registry = serving_registry(settings.models_dir)
    champions = {m: v for m in spec.models if (v := registry.alias_version(m, CHAMPION)) is not None}

    def refused(versions: Versions, reason: str) -> None:
        for model, version in versions.items():
            metrics.on_model_refused(model, version)
            try:
                registry.mark_refused(model, version, f"{settings.service}@{settings.member_name}: {reason}")
            except Exception as exc:  # the refusal is logged and counted already; the tag is a courtesy
                log.warning("could not tag %s/%s as refused in the registry: %s", model, version, exc)

    moved_at = {m: t for m in spec.models if (t := registry.aliases_moved_at(m)) is not None}
    build = PlanBuilder(spec, settings)
    state = control.read_to_end()
    plan = desired_plan(
        state,
        settings.service,
        spec.models,
        champions,
        settings.member_name,
        moved_at,
        settings.deployment,
    )
    refused_at_start: Plan | None = None
    try:
        scorer = build(plan)
    except ModelArtifactError as exc:
        fallback = Plan(pinned(champions), epoch=plan.epoch)
        if plan == fallback:
            raise
        # The control log can name versions this registry cannot serve (a registry made anew beside an old
        # broker, a corrupt version published while this instance was down): serve the registry's own.
        log.error("refused %s from the control topic (%s); serving the registry's champions", plan.label, exc)
        refused(changed_versions(plan, fallback), f"load failed: {exc}")
        refused_at_start, plan = plan, fallback
        scorer = build(plan)
    reloader = HotReloader(
        settings.service,
        settings.member_name,
        spec.models,
        champions,
        plan,
        control,
        build,
        refused,
        moved_at,
        settings.deployment,
    )
    if refused_at_start is not None:
        reloader.refused = refused_at_start
    reloader.report_status = report_status
    reloader.start()
    return scorer, reloader


def main(name: str) -> None:
    """The `python -m consumers.<name>` entry point: configured by environment only."""
    spec = service_spec(name)
    run_guarded(lambda: serve(spec))
