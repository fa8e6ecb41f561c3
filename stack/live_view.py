"""A terminal view of the fleet at work: predictions per service, throughput, latency, the model versions
serving with their live error (the evaluator's figures), and a few recent rides with what was predicted at
their start next to what actually happened.

It reads the same topics any client would (it is a plain consumer, assigned at the topics' current ends),
so what it shows is what was really delivered.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table

from consumers.evaluator.join import FigureKey, Sums, fleet_figures
from consumers.evaluator.service import EVALUATOR_GROUP, latest_snapshots
from consumers.registry import SERVICE_NAMES, SERVICES
from schemas.topics import EVALUATIONS_TOPIC, RIDE_EVENTS_TOPIC, prediction_topic
from shared.kafka import OFFSET_BEGINNING, TopicPartition, make_consumer

MAX_TRACKED = 200_000
VALUE_FIELDS = {spec.name: spec.value_field for spec in SERVICES}


@dataclass
class ServiceView:
    predictions: int = 0
    # (model name, model version) → predictions it made, in the order the versions first appeared
    versions: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    window: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=50))

    def rate(self) -> float:
        if len(self.window) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.window[0], self.window[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class FleetView:
    services: dict[str, ServiceView] = field(
        default_factory=lambda: {s: ServiceView() for s in SERVICE_NAMES}
    )
    events: Counter[str] = field(default_factory=Counter)
    event_ts: OrderedDict[str, int] = field(default_factory=OrderedDict)
    start_predictions: OrderedDict[str, dict[str, float]] = field(default_factory=OrderedDict)
    actuals: OrderedDict[str, tuple[float, float, float]] = field(default_factory=OrderedDict)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    # artifact version → what a person calls it ("tip v2"), from the registry
    labels: dict[str, str] = field(default_factory=dict)
    # (service, artifact version) → the evaluator's live figures over every segment
    live: dict[tuple[str, str], Sums] = field(default_factory=dict)
    notes: deque[str] = field(default_factory=lambda: deque(maxlen=4))

    def on_evaluations(self, figures: Mapping[FigureKey, Sums]) -> None:
        live: dict[tuple[str, str], Sums] = {}
        for key, sums in figures.items():
            live.setdefault((key.service, key.version), Sums()).merge(sums)
        self.live = live

    def serving_cell(self, service: str) -> str:
        """Per model, each version that served (newest last) with its predictions and live RMSE."""
        by_model: dict[str, list[str]] = {}
        for (model, version), count in self.services[service].versions.items():
            live = self.live.get((service, version))
            error = f" (rmse {live.rmse:.2f} over {live.count:,})" if live and live.count else ""
            name = self.labels.get(version, f"{model} {version[:8]}").split(" ", 1)[-1]
            by_model.setdefault(model, []).append(f"{name}: {count:,}{error}")
        return "; ".join(f"{model} " + " → ".join(cells) for model, cells in by_model.items()) or "—"

    def on_event(self, value: dict[str, Any], timestamp_ms: int) -> None:
        self.events[value.get("event_type", "?")] += 1
        if value.get("event_type") == "ride_completed":
            self.on_completed(value)
            return
        self.event_ts[value.get("event_id", "")] = timestamp_ms
        if len(self.event_ts) > MAX_TRACKED:
            self.event_ts.popitem(last=False)

    def on_prediction(self, service: str, value: dict[str, Any], timestamp_ms: int) -> None:
        view = self.services[service]
        view.predictions += 1
        view.versions[(value.get("model_name", "?"), value.get("model_version", "?"))] += 1
        source_ts = self.event_ts.get(value.get("source_event_id", ""))
        if source_ts is not None:
            view.latencies_ms.append(max(0.0, timestamp_ms - source_ts))
        if value.get("source_event_type") == "ride_started":
            self.start_predictions.setdefault(value["ride_id"], {})[service] = float(
                value[VALUE_FIELDS[service]]
            )
            if len(self.start_predictions) > MAX_TRACKED:
                self.start_predictions.popitem(last=False)

    def on_completed(self, value: dict[str, Any]) -> None:
        """Remember what actually happened; the row shows the start predictions whenever they arrive (a fast
        replay can deliver a ride's completion before the services have scored its start)."""
        self.actuals[value["ride_id"]] = (
            value["duration_minutes"],
            value["tip_amount_usd"],
            value["total_amount_usd"],
        )
        if len(self.actuals) > MAX_TRACKED:
            self.actuals.popitem(last=False)
        self.recent.appendleft(value["ride_id"])

    def recent_rows(self) -> list[tuple[str, ...]]:
        rows = []
        for ride_id in self.recent:
            predicted = self.start_predictions.get(ride_id, {})
            actual = dict(zip(("duration", "tip", "cost"), self.actuals.get(ride_id, (None, None, None))))
            cells = []
            for service, unit in (("duration", " min"), ("tip", " $"), ("cost", " $")):
                guess, real = predicted.get(service), actual[service]
                guessed = "—" if guess is None else f"{guess:.1f}"
                recorded = "—" if real is None else f"{real:.1f}"
                cells.append(f"{guessed} / {recorded}{unit}")
            rows.append((ride_id, *cells))
        return rows

    def tick(self) -> None:
        now = time.monotonic()
        for view in self.services.values():
            view.window.append((now, view.predictions))

    def render(self, title: str) -> Group:
        services = Table(title=title, expand=False)
        for column in ("service", "predictions", "per s", "p50 ms", "p99 ms", "versions: predictions, live"):
            services.add_column(column, justify="left" if column[0] in "sv" else "right")
        for name, view in self.services.items():
            p50, p99 = view.percentile(0.5), view.percentile(0.99)
            services.add_row(
                name,
                f"{view.predictions:,}",
                f"{view.rate():,.0f}",
                "—" if p50 is None else f"{p50:.0f}",
                "—" if p99 is None else f"{p99:.0f}",
                self.serving_cell(name),
            )
        events = (
            ", ".join(f"{kind} {count:,}" for kind, count in sorted(self.events.items()))
            or "waiting for rides"
        )
        rides = Table(title="recent completed rides: predicted at start / actual", expand=False)
        for column in ("ride", "duration", "tip", "total cost"):
            rides.add_column(column)
        for row in self.recent_rows():
            rides.add_row(*row)
        return Group(services, f"events seen: {events}", *self.notes, rides)


class FleetWatcher:
    """Consumes rides.events and every predictions topic from their current end into a FleetView."""

    def __init__(
        self,
        client_config: Mapping[str, str],
        input_topic: str = RIDE_EVENTS_TOPIC,
        evaluations_topic: str = EVALUATIONS_TOPIC,
    ) -> None:
        self.view = FleetView()
        self.topics = {input_topic: None, **{prediction_topic(s): s for s in SERVICE_NAMES}}
        self.evaluations_topic = evaluations_topic
        # The evaluator's snapshots, latest per key, read from the beginning (the topic is compacted).
        self.snapshots: dict[str, bytes] = {}
        self.consumer = make_consumer(client_config, f"ridestream-view-{uuid.uuid4().hex[:8]}")
        self.consumer.assign(self.current_ends())

    def current_ends(self) -> list[TopicPartition]:
        metadata = self.consumer.list_topics(timeout=10)
        ends = []
        for topic in self.topics:
            for partition in metadata.topics[topic].partitions if topic in metadata.topics else []:
                _low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                ends.append(TopicPartition(topic, partition, high))
        if self.evaluations_topic in metadata.topics:
            ends.append(TopicPartition(self.evaluations_topic, 0, OFFSET_BEGINNING))
        return ends

    def poll(self, timeout_s: float = 0.2) -> int:
        messages = self.consumer.consume(5000, timeout_s)
        for message in messages:
            if message.error() is not None:
                continue
            if message.topic() == self.evaluations_topic:
                self.snapshots[(message.key() or b"").decode()] = message.value() or b"{}"
                continue
            try:
                value = json.loads(message.value() or b"")
            except ValueError:
                continue
            topic = message.topic()
            service = None if topic is None else self.topics.get(topic)
            timestamp = message.timestamp()[1]
            if service is None:
                self.view.on_event(value, timestamp)
            else:
                self.view.on_prediction(service, value, timestamp)
        if self.snapshots:
            self.view.on_evaluations(
                fleet_figures(latest_snapshots(self.snapshots, EVALUATOR_GROUP).values())
            )
        self.view.tick()
        return len(messages)

    def close(self) -> None:
        self.consumer.close()
