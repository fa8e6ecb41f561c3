"""Hot reload: a running service follows the control topic and changes what it serves without a restart.

    control log ──► follower thread: the desired plan changed? (serving/<model>, rollout/<service>)
                      build it (registry loads, passport checks) → warm each version on a real batch
                      ├─ ok:     hand the new scorer over ──► the run loop swaps it in between two batches
                      └─ failed: refuse it (log, metric, registry tag); the old plan keeps serving

A plan is what one instance serves: its champion versions, and during a rollout the challenger versions,
the challenger's share of rides, how the two are routed, and the rollout's epoch. The run loop never waits
for a load: it picks a ready scorer up at a batch boundary, so every batch is scored under one plan, and
under exactly-once a batch and its offsets still commit together.

The same thread publishes this instance's status (status/<service>/<instance>) every few seconds: what it
serves, under which epoch, its predictions and unscoreable events per variant, its p99 latency, and the
last refusal. The rollout controller reads it for its gates.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pydantic import ValidationError

from schemas.control import STATUS_PREFIX, RolloutState, ServingState, rollout_key, serving_key
from shared.control import ControlLog
from shared.handover import CutoverIndex, HandoverStep
from shared.protocols import Scorer

log = logging.getLogger(__name__)

# model → registry version
Versions = Mapping[str, str]
OnRefused = Callable[[Versions, str], None]
POLL_S = 0.5
STATUS_INTERVAL_S = 2.0


class Plan(NamedTuple):
    """What an instance serves. `mode` is "" without a rollout, else "split" or "shadow"."""

    champion: tuple[tuple[str, str], ...]
    challenger: tuple[tuple[str, str], ...] = ()
    share: float = 0.0
    mode: str = ""
    epoch: int = 0
    # blue/green: who is live, and since which epochs (shared/handover.py); empty: blue throughout
    handovers: tuple[HandoverStep, ...] = ()
    live: str = "blue"

    @property
    def label(self) -> str:
        """`tip=2` or, during a rollout, `tip=2 | tip=3 @25% split`: one metric label."""
        champion = versions_label(dict(self.champion))
        if not self.mode:
            return champion
        return f"{champion} | {versions_label(dict(self.challenger))} @{self.share:.0%} {self.mode}"


class Swap(NamedTuple):
    scorer: Scorer
    plan: Plan


def versions_label(versions: Versions) -> str:
    """`duration=3,dynamic_duration=2`: the registry versions a service serves, as one metric label."""
    return ",".join(f"{model}={version}" for model, version in sorted(versions.items()))


def pinned(versions: Versions) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(versions.items()))


def parse(raw: bytes | None, contract: type[ServingState] | type[RolloutState]) -> Any:
    if raw is None:
        return None
    try:
        return contract.model_validate_json(raw)
    except ValidationError as exc:
        log.warning("control record is not a %s (%s); ignored", contract.__name__, exc)
        return None


def desired_versions(
    state: Mapping[str, bytes],
    models: Sequence[str],
    fallback: Versions,
    fallback_at: Mapping[str, datetime] | None = None,
) -> dict[str, str]:
    """Each model's champion by the control log, or `fallback`'s version (the registry's) when the log does
    not name one or the registry's aliases moved after the log's record (a `models alias` without Kafka)."""
    desired = dict(fallback)
    for model in models:
        serving: ServingState | None = parse(state.get(serving_key(model)), ServingState)
        champion = serving.champion() if serving is not None else None
        moved_at = (fallback_at or {}).get(model)
        if serving is not None and moved_at is not None and moved_at > serving.updated_at:
            continue
        if champion is not None:
            desired[model] = champion
    return desired


def latest_serving_update(state: Mapping[str, bytes], models: Sequence[str]) -> datetime | None:
    stamps = [
        s.updated_at for m in models if (s := parse(state.get(serving_key(m)), ServingState)) is not None
    ]
    return max(stamps, default=None)


def desired_plan(
    state: Mapping[str, bytes],
    service: str,
    models: Sequence[str],
    fallback: Versions,
    instance: str,
    fallback_at: Mapping[str, datetime] | None = None,
    deployment: str = "blue",
) -> Plan:
    """The plan the control log asks of this instance of `deployment` (docs/deployments.md)."""
    champion = desired_versions(state, models, fallback, fallback_at)
    rollout: RolloutState | None = parse(state.get(rollout_key(service)), RolloutState)
    if rollout is None:
        return Plan(pinned(champion))
    epoch = rollout.epoch
    handovers, live = tuple(HandoverStep(h.epoch, h.to) for h in rollout.handovers), rollout.live
    if not rollout.running:
        # A finished rollout's outcome stands until the registry's aliases are moved again after it (the
        # controller publishes both; whichever is read first, this instance never flips back meanwhile).
        serving_at = latest_serving_update(state, models)
        if serving_at is None or serving_at <= rollout.updated_at:
            outcome = rollout.challenger if rollout.status == "promoted" else rollout.champion
            champion = {**champion, **outcome}
        return Plan(pinned(champion), epoch=epoch, handovers=handovers, live=live)
    champion = {**champion, **rollout.champion}
    challenger = {**champion, **rollout.challenger}
    if rollout.strategy == "rolling":
        switched = instance in rollout.switched
        return Plan(pinned(challenger if switched else champion), epoch=epoch, handovers=handovers, live=live)
    if rollout.strategy == "blue-green":
        serves = challenger if deployment == rollout.challenger_deployment else champion
        return Plan(pinned(serves), epoch=epoch, handovers=handovers, live=live)
    mode = "shadow" if rollout.strategy == "shadow" else "split"
    return Plan(pinned(champion), pinned(challenger), rollout.share(), mode, epoch, handovers, live)


def parts_of(scorer: Scorer) -> Sequence[Scorer]:
    """The scorers a routed scorer is made of (each is warmed up), or the scorer itself."""
    parts: Sequence[Scorer] | None = getattr(scorer, "parts", None)
    return parts if parts is not None else (scorer,)


def warm_up(scorer: Scorer, sample: Sequence[Any]) -> str | None:
    """Score one real batch with each freshly built scorer; the reason one is unfit, or None."""
    for part in parts_of(scorer):
        events = [event for event in sample if event.event_type in part.scored_event_types]
        if not events:
            continue
        try:
            result = part.score(events, datetime.now(UTC))
        except Exception as exc:  # a model may raise anything from its predict
            return f"warm-up failed: {exc!r}"
        if len(result.failures) == len(events):
            return f"warm-up failed: every one of {len(events)} events unscoreable ({result.failures[0][1]})"
    return None


def changed_versions(plan: Plan, serving: Plan) -> dict[str, str]:
    """The versions `plan` would newly load (what a refusal is about)."""
    before = set(serving.champion) | set(serving.challenger)
    return dict(sorted((set(plan.champion) | set(plan.challenger)) - before))


class HotReloader:
    """Follows the control log on a thread of its own and prepares the scorer of each new desired plan.

    `build(plan)` makes a scorer of exactly that plan (raising when a version cannot be loaded);
    `on_refused(versions, reason)` reports versions that failed to load or warm up. The run loop calls
    `offer_sample` with each batch's events (the warm-up batch) and `take_swap` at each batch boundary;
    `status_source` (set by the run loop) gives what the status record reports.
    """

    def __init__(
        self,
        service: str,
        instance: str,
        models: Sequence[str],
        fallback: Versions,
        serving: Plan,
        control: ControlLog,
        build: Callable[[Plan], Scorer],
        on_refused: OnRefused,
        fallback_at: Mapping[str, datetime] | None = None,
        deployment: str = "blue",
    ) -> None:
        self.service = service
        self.instance = instance
        self.deployment = deployment
        self.models = tuple(models)
        self.fallback = dict(fallback)
        self.fallback_at = dict(fallback_at or {})
        self.serving = serving
        self.control = control
        self.build = build
        self.on_refused = on_refused
        self.refused: Plan | None = None
        self.refusal = ""
        # blue/green cut-overs, from the switch records of this service (read by the run loop)
        self.cutovers = CutoverIndex(service)
        for key, value in list(control.state.items()):
            self.cutovers.add(key, value)
        self.status_source: Callable[[], dict[str, Any]] | None = None
        # Off for followers that are not instances of the service's fleet (the estimate service): the
        # rollout controller counts every status/<service>/... report as one.
        self.report_status = True
        self._sample: Sequence[Any] = ()
        self._sampled = threading.Event()
        self._ready: Swap | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"{service}-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._sampled.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def offer_sample(self, events: Sequence[Any]) -> None:
        """The latest batch's events (a reference only: the loop does not pay for a copy)."""
        if events:
            self._sample = events
            self._sampled.set()

    def take_swap(self) -> Swap | None:
        """A warmed scorer for the new desired plan, once; None when there is nothing to swap."""
        if self._ready is None:  # the common case, without taking the lock
            return None
        with self._lock:
            ready, self._ready = self._ready, None
            if ready is not None:
                self.serving = ready.plan
        return ready

    def relevant(self, changes: Sequence[tuple[str, bytes | None]]) -> bool:
        """Records that can change this instance's plan (not the instances' status reports)."""
        keys = {serving_key(m) for m in self.models} | {rollout_key(self.service)}
        return any(key in keys for key, _value in changes)

    def desired(self) -> Plan:
        return desired_plan(
            self.control.state,
            self.service,
            self.models,
            self.fallback,
            self.instance,
            self.fallback_at,
            self.deployment,
        )

    def _follow(self) -> None:
        last_status = 0.0
        try:
            while not self._stop.is_set():
                changes = self.control.poll(POLL_S)
                for key, value in changes:
                    self.cutovers.add(key, value)
                if changes and self.relevant(changes):
                    self._prepare_guarded(self.desired())
                if self.report_status and time.monotonic() - last_status >= STATUS_INTERVAL_S:
                    self._publish_status()
                    last_status = time.monotonic()
        except Exception:
            log.exception("%s: following the control topic failed; keeping the current plan", self.service)
        finally:
            self.control.close()

    def _publish_status(self) -> None:
        status = {
            "service": self.service,
            "instance": self.instance,
            "deployment": self.deployment,
            "serving": self.serving.label,
            "epoch": self.serving.epoch,
            "refused": self.refusal,
            "updated_at": datetime.now(UTC).isoformat(),
            **(self.status_source() if self.status_source is not None else {}),
        }
        key = f"{STATUS_PREFIX}{self.service}/{self.instance}"
        self.control.publish(key, json.dumps(status).encode())

    def _prepare_guarded(self, plan: Plan) -> None:
        try:
            self._prepare(plan)
        except Exception:  # one bad plan must not end the following: the next record may mend it
            log.exception("%s: preparing %s failed; keeping %s", self.service, plan.label, self.serving.label)

    def _prepare(self, plan: Plan) -> None:
        """Build, warm and hand over `plan`. A plan refused before is tried again: it is asked for by a new
        record (the alias moved again, or a version failed only because the registry was down)."""
        with self._lock:
            pending = self._ready.plan if self._ready is not None else self.serving
        if plan == pending:
            return
        log.info("%s: preparing %s (serving %s)", self.service, plan.label, self.serving.label)
        try:
            scorer = self.build(plan)
        except Exception as exc:
            self._refuse(plan, f"load failed: {exc}")
            return
        if not self._sampled.is_set():
            log.info("%s: %s loaded; waiting for a batch to warm it up with", self.service, plan.label)
        self._sampled.wait()
        if self._stop.is_set():
            return
        problem = warm_up(scorer, self._sample)
        if problem is not None:
            self._refuse(plan, problem)
            return
        with self._lock:
            self._ready = Swap(scorer, plan)
        self.refused, self.refusal = None, ""
        log.info("%s: %s warmed up; swapping it in at the next batch", self.service, plan.label)

    def _refuse(self, plan: Plan, reason: str) -> None:
        self.refused = plan
        changed = changed_versions(plan, self.serving)
        self.refusal = f"{versions_label(changed)}: {reason}"
        log.error(
            "%s: refused %s (%s); still serving %s",
            self.service,
            versions_label(changed),
            reason,
            self.serving.label,
        )
        self.on_refused(changed, reason)
