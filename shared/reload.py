"""Hot reload: a running service follows the control topic and changes model version without a restart.

    control log ──► follower thread: desired versions changed?
                      load them (registry, passport checks) → warm them (one score of a real batch)
                      ├─ ok:     hand the new scorer over ──► the run loop swaps it in between two batches
                      └─ failed: refuse it (log, metric, registry tag); the old version keeps serving

The run loop never waits for a load: it picks a ready scorer up at a batch boundary, so every batch is
scored by exactly one version, and under exactly-once a batch and its offsets still commit together.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pydantic import ValidationError

from schemas.control import ServingState, serving_key
from shared.control import ControlLog
from shared.protocols import Scorer

log = logging.getLogger(__name__)

# model → registry version
Versions = Mapping[str, str]
LoadScorer = Callable[[Versions], Scorer]
OnRefused = Callable[[Versions, str], None]
POLL_S = 0.5


class Swap(NamedTuple):
    scorer: Scorer
    versions: dict[str, str]


def versions_label(versions: Versions) -> str:
    """`duration=3,dynamic_duration=2`: the registry versions a service serves, as one metric label."""
    return ",".join(f"{model}={version}" for model, version in sorted(versions.items()))


def desired_versions(state: Mapping[str, bytes], models: Sequence[str], fallback: Versions) -> dict[str, str]:
    """Each model's champion by the control log, or `fallback`'s version when the log does not name one."""
    desired = dict(fallback)
    for model in models:
        raw = state.get(serving_key(model))
        if raw is None:
            continue
        try:
            champion = ServingState.model_validate_json(raw).champion()
        except ValidationError as exc:
            log.warning("control record %s is not a ServingState (%s); ignored", serving_key(model), exc)
            continue
        if champion is not None:
            desired[model] = champion
    return desired


def warm_up(scorer: Scorer, sample: Sequence[Any]) -> str | None:
    """Score one real batch with a freshly loaded scorer; the reason it is unfit, or None."""
    events = [event for event in sample if event.event_type in scorer.scored_event_types]
    if not events:
        return None
    try:
        result = scorer.score(events, datetime.now(UTC))
    except Exception as exc:  # a model may raise anything from its predict
        return f"warm-up failed: {exc!r}"
    if len(result.failures) == len(events):
        return f"warm-up failed: every one of {len(events)} events unscoreable ({result.failures[0][1]})"
    return None


class HotReloader:
    """Follows the control log on a thread of its own and prepares the scorer of each new desired state.

    `load(versions)` builds a scorer of exactly those registry versions (raising when one cannot be loaded);
    `on_refused(versions, reason)` reports a version that failed to load or warm up. The run loop calls
    `offer_sample` with each batch's events (the warm-up batch) and `take_swap` at each batch boundary.
    """

    def __init__(
        self,
        service: str,
        models: Sequence[str],
        serving: Versions,
        control: ControlLog,
        load: LoadScorer,
        on_refused: OnRefused,
    ) -> None:
        self.service = service
        self.models = tuple(models)
        self.serving = dict(serving)
        self.control = control
        self.load = load
        self.on_refused = on_refused
        self.refused: dict[str, str] | None = None
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
        """A warmed scorer for the new desired versions, once; None when there is nothing to swap."""
        if self._ready is None:
            return None
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is not None:
            self.serving = dict(ready.versions)
        return ready

    def _follow(self) -> None:
        try:
            while not self._stop.is_set():
                if self.control.poll(POLL_S):
                    self._prepare(desired_versions(self.control.state, self.models, self.serving))
        except Exception:
            log.exception(
                "%s: following the control topic failed; this instance keeps its version", self.service
            )
        finally:
            self.control.close()

    def _prepare(self, desired: dict[str, str]) -> None:
        pending = self._ready.versions if self._ready is not None else self.serving
        if desired == pending or desired == self.refused:
            return
        log.info(
            "%s: loading %s (serving %s)", self.service, versions_label(desired), versions_label(self.serving)
        )
        try:
            scorer = self.load(desired)
        except Exception as exc:
            self._refuse(desired, f"load failed: {exc}")
            return
        if not self._sampled.is_set():
            log.info(
                "%s: %s loaded; waiting for a batch to warm it up with", self.service, versions_label(desired)
            )
        self._sampled.wait()
        if self._stop.is_set():
            return
        problem = warm_up(scorer, self._sample)
        if problem is not None:
            self._refuse(desired, problem)
            return
        with self._lock:
            self._ready = Swap(scorer, desired)
        self.refused = None
        log.info("%s: %s warmed up; swapping it in at the next batch", self.service, versions_label(desired))

    def _refuse(self, desired: dict[str, str], reason: str) -> None:
        self.refused = desired
        changed = {m: v for m, v in desired.items() if self.serving.get(m) != v}
        log.error(
            "%s: refused %s (%s); still serving %s",
            self.service,
            versions_label(changed),
            reason,
            versions_label(self.serving),
        )
        self.on_refused(changed, reason)
