"""The evaluator service: live accuracy of every model version, from the ground truth on the input topic.

    rides.events (ride_completed) ─┐
    predictions.duration ──────────┼─► per partition: join by ride_id (consumers/evaluator/join.py)
    predictions.tip, .cost ────────┘        │ every publish interval
                                            ├─► ridestream.evaluations: one compacted record per partition
                                            ├─► Prometheus: ridestream_live_error, ridestream_live_count
                                            └─► commit each topic's offset at its oldest waiting record

All input topics must have the same partition count: keyed by ride_id, one ride's predictions and outcome
then share a partition number, and the range assignor gives one instance the same partitions of every
topic. It scales like the scoring services: more instances in the group, up to the partition count.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumers.evaluator.join import (
    CARD_PAYMENT,
    FigureKey,
    Outcome,
    PartitionJoin,
    Sums,
    fleet_figures,
    prediction_from,
)
from schemas.events import RideCompleted
from schemas.topics import EVALUATIONS_TOPIC, RIDE_EVENTS_TOPIC, prediction_topic, shadow_topic
from shared.control import ControlLog, ensure_control_topic
from shared.errors import ConfigError
from shared.guarantees import DeliveryLedger
from shared.kafka import (
    KafkaException,
    TopicPartition,
    ensure_topic,
    make_producer,
    make_record_consumer,
    partition_count,
    wait_for_cluster,
)
from shared.lifecycle import stop_event
from shared.metrics import ServiceMetrics, serve_metrics
from shared.records import InputRecord
from shared.serde import decode_event
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)

SERVICE = "evaluator"
EVALUATOR_GROUP = "ridestream-evaluator"
EVALUATED_SERVICES = ("duration", "tip", "cost")
# A prediction waits this long for its ride's outcome (and an outcome this long for late predictions):
# longer than any NYC ride (the contract's limit is 24 h, real ones end within a few hours).
DEFAULT_MAX_WAIT_S = 4 * 3600.0
# After its outcome, a ride is kept this long for predictions that arrive late (a scoring service lagging).
DEFAULT_GRACE_S = 900.0
DEFAULT_PUBLISH_INTERVAL_S = 5.0


class EvaluatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVALUATOR_", frozen=True, extra="ignore")

    group_id: str = EVALUATOR_GROUP
    input_topic: str = RIDE_EVENTS_TOPIC
    prediction_topics: str = Field(
        default=",".join(
            topic
            for service in EVALUATED_SERVICES
            for topic in (prediction_topic(service), shadow_topic(prediction_topic(service)))
        ),
        description="comma-separated prediction topics to judge (the user topics and their shadows)",
    )
    evaluations_topic: str = EVALUATIONS_TOPIC
    max_wait_s: float = Field(default=DEFAULT_MAX_WAIT_S, gt=0)
    grace_s: float = Field(default=DEFAULT_GRACE_S, ge=0)
    publish_interval_s: float = Field(default=DEFAULT_PUBLISH_INTERVAL_S, gt=0, le=3600)
    batch_size: int = Field(default=2000, ge=1, le=100_000)
    batch_timeout_s: float = Field(default=0.1, gt=0, le=60)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    session_timeout_s: float = Field(default=45.0, ge=6, le=300)
    max_messages: int | None = Field(default=None, ge=1)
    idle_timeout_s: float | None = Field(default=None, gt=0)
    # Accepted so that `ridestream consume evaluator --models DIR` reads like the other services; the
    # evaluator judges predictions by the version they carry and loads no model.
    models_dir: Path | None = None

    def topics(self) -> list[str]:
        extra = [t.strip() for t in self.prediction_topics.split(",") if t.strip()]
        if not extra:
            raise ConfigError("EVALUATOR_PREDICTION_TOPICS names no topic")
        return [self.input_topic, *extra]


class EvaluatorMetrics:
    def __init__(self, metrics: ServiceMetrics) -> None:
        r = metrics.registry
        self.service = metrics
        labels = ["model_service", "model", "version", "segment"]
        self.error = Gauge(
            "ridestream_live_error",
            "Live error of predicted minus actual, over this instance's partitions (stat: rmse, mae, bias)",
            [*labels, "stat"],
            registry=r,
        )
        self.count = Gauge(
            "ridestream_live_count", "Predictions judged against their ride's outcome", labels, registry=r
        )
        self.expired = Counter(
            "ridestream_evaluator_expired",
            "Predictions whose ride's outcome did not arrive within the wait limit",
            registry=r,
        )
        self.ignored = Counter(
            "ridestream_evaluator_ignored",
            "Input records that are neither outcome nor prediction",
            registry=r,
        )
        self.waiting = Gauge("ridestream_evaluator_waiting_rides", "Rides held for their join", registry=r)

    def publish(self, figures: Mapping[FigureKey, Sums], waiting: int) -> None:
        for key, sums in figures.items():
            labels = tuple(key)
            self.count.labels(*labels).set(sums.count)
            for stat in ("rmse", "mae", "bias"):
                self.error.labels(*labels, stat).set(getattr(sums, stat))
        self.waiting.set(waiting)


def settled_partition_count(client_config: Mapping[str, str], topic: str, timeout_s: float = 15.0) -> int:
    """The topic's partition count once its metadata has spread: a topic another process has just created
    can show 0 partitions for a moment."""
    deadline = time.monotonic() + timeout_s
    while (found := partition_count(client_config, topic)) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # metadata propagation has no event to wait on
    return found


def outcome_of(record: InputRecord) -> tuple[str, Outcome] | None:
    """(ride_id, outcome) of a ride_completed record; None for other events (and bad records, which the
    scoring services dead-letter)."""
    if record.value is None or b'"ride_completed"' not in record.value:
        return None
    event = decode_event(record.value)
    if not isinstance(event, RideCompleted):
        return None
    outcome = Outcome(
        record.topic,
        record.offset,
        event.duration_minutes,
        event.tip_amount_usd,
        event.total_amount_usd,
        event.payment_type == CARD_PAYMENT,
    )
    return event.ride_id, outcome


def snapshot_key(group_id: str, partition: int) -> str:
    return f"{group_id}/{partition}"


def latest_snapshots(state: Mapping[str, bytes], group_id: str) -> dict[int, dict[str, Any]]:
    """partition → the latest snapshot this group published (the evaluations log read to its end)."""
    found: dict[int, dict[str, Any]] = {}
    prefix = f"{group_id}/"
    for key, value in state.items():
        if key.startswith(prefix):
            try:
                snapshot = json.loads(value)
                found[int(snapshot["partition"])] = snapshot
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("evaluations record %s is unreadable (%s); ignored", key, exc)
    return found


class Evaluator:
    def __init__(
        self, settings: EvaluatorSettings, client_config: Mapping[str, str], metrics: ServiceMetrics
    ):
        self.settings = settings
        self.client_config = dict(client_config)
        self.metrics = metrics
        self.live = EvaluatorMetrics(metrics)
        self.topics = settings.topics()
        self.joins: dict[int, PartitionJoin] = {}
        self.consumer = make_record_consumer(
            client_config,
            settings.group_id,
            {
                # Co-partitioning: partition n of every input topic goes to the same instance.
                "partition.assignment.strategy": "range",
                "session.timeout.ms": int(settings.session_timeout_s * 1000),
            },
        )
        self.producer = make_producer(client_config, {"linger.ms": 50})
        self.consumed = 0

    def check_topics(self) -> None:
        """Every input topic exists with the input topic's partition count (prediction topics are created
        with it when missing)."""
        partitions = partition_count(self.client_config, self.settings.input_topic)
        if partitions == 0:
            ensure_topic(self.client_config, self.settings.input_topic, 6)
            partitions = partition_count(self.client_config, self.settings.input_topic)
        for topic in self.topics[1:]:
            ensure_topic(self.client_config, topic, partitions)
            found = settled_partition_count(self.client_config, topic)
            if found != partitions:
                raise ConfigError(
                    f"{topic} has {found} partitions, {self.settings.input_topic} has {partitions}: the "
                    "evaluator joins by ride_id and needs every input topic co-partitioned (equal counts)"
                )
        ensure_control_topic(self.client_config, self.settings.evaluations_topic)

    def on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        numbers = sorted({p.partition for p in partitions} - set(self.joins))
        if not numbers:
            return
        reader = ControlLog(self.client_config, self.settings.evaluations_topic)
        try:
            snapshots = latest_snapshots(reader.read_to_end(), self.settings.group_id)
        finally:
            reader.close()
        for number in numbers:
            snapshot = snapshots.get(number)
            self.joins[number] = PartitionJoin.restore(snapshot) if snapshot else PartitionJoin(number)
        log.info("evaluating partitions %s (%d restored)", numbers, sum(n in snapshots for n in numbers))

    def on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        numbers = {p.partition for p in partitions}
        self.publish([n for n in self.joins if n in numbers])
        for number in numbers:
            self.joins.pop(number, None)

    def on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        """The group moved these partitions on without us (a session timeout): their new owner restores the
        last snapshot, so this one must neither publish nor commit, only forget."""
        numbers = {p.partition for p in partitions}
        log.warning("lost partitions %s to the group; dropping their state unpublished", sorted(numbers))
        for number in numbers:
            self.joins.pop(number, None)

    def process(self, records: Sequence[InputRecord]) -> None:
        now = time.monotonic()
        input_topic = self.settings.input_topic
        ignored = 0
        for record in records:
            join = self.joins.get(record.partition)
            if join is None:
                join = self.joins[record.partition] = PartitionJoin(record.partition)
            if record.topic == input_topic:
                found = outcome_of(record)
                if found is not None:
                    join.add_outcome(found[0], found[1], now)
                continue
            try:
                decoded = json.loads(record.value or b"")
            except ValueError:
                decoded = None
            prediction = (
                prediction_from(record.topic, record.offset, decoded) if isinstance(decoded, dict) else None
            )
            if prediction is None:
                ignored += 1
                continue
            join.add_prediction(str(decoded.get("ride_id", "")), prediction, now)
        if ignored:
            self.live.ignored.inc(ignored)
        self.consumed += len(records)

    def publish(self, numbers: Iterable[int] | None = None) -> None:
        """Expire, publish each partition's snapshot, then commit each topic's resume offset: the snapshot
        first, so a committed offset never runs ahead of the figures a restart restores."""
        now = time.monotonic()
        chosen = sorted(self.joins if numbers is None else numbers)
        offsets: list[TopicPartition] = []
        ledger = DeliveryLedger()
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for number in chosen:
            join = self.joins[number]
            self.live.expired.inc(join.expire(now, self.settings.max_wait_s, self.settings.grace_s))
            snapshot = {**join.snapshot(), "group_id": self.settings.group_id, "updated_at": stamp}
            key = snapshot_key(self.settings.group_id, number)
            ledger.expect()
            self.producer.produce(
                self.settings.evaluations_topic,
                json.dumps(snapshot).encode(),
                key.encode(),
                on_delivery=ledger.on_delivery,
            )
            offsets.extend(TopicPartition(t, number, o) for t, o in snapshot["resume"].items())
        if not chosen:
            return
        self.producer.flush(30)
        problem = ledger.first_problem()
        if problem is not None:
            log.error(
                "evaluations not published (%s); offsets not committed, the next interval retries", problem
            )
            return
        if offsets:
            try:
                self.consumer.commit(offsets)
            except KafkaException as exc:
                # Ownership moved mid-interval (or the coordinator did): the next owner restores the
                # snapshot just published and replays from the last committed offsets, which the skip rule
                # makes safe; nothing to do here but say so.
                log.warning(
                    "offsets not committed (%s); the partitions' next owner replays from the last", exc
                )
        total: dict[FigureKey, Sums] = {}
        for join in self.joins.values():
            for figure, sums in join.sums.items():
                total.setdefault(figure, Sums()).merge(sums)
        self.live.publish(total, sum(len(j.rides) for j in self.joins.values()))

    def run(self, stop: threading.Event) -> int:
        self.consumer.subscribe(
            self.topics, on_assign=self.on_assign, on_revoke=self.on_revoke, on_lost=self.on_lost
        )
        last_publish = last_record = time.monotonic()
        clean = False
        try:
            while not stop.is_set():
                records = self.consumer.consume(self.settings.batch_size, self.settings.batch_timeout_s)
                self.metrics.on_loop(ready=bool(self.consumer.assignment()))
                if records:
                    self.process(records)
                    last_record = time.monotonic()
                if time.monotonic() - last_publish >= self.settings.publish_interval_s:
                    self.publish()
                    last_publish = time.monotonic()
                if self.bounded_run_over(last_record):
                    break
            clean = True
        finally:
            if clean:
                self.publish()
            self.consumer.close()
        return self.consumed

    def bounded_run_over(self, last_record: float) -> bool:
        limit, idle = self.settings.max_messages, self.settings.idle_timeout_s
        if limit is not None and self.consumed >= limit:
            return True
        return idle is not None and time.monotonic() - last_record > idle


def run_evaluator(
    settings: EvaluatorSettings, kafka: KafkaSettings, stop: threading.Event | None = None
) -> int:
    """Run until stopped; returns the records consumed."""
    client_config = kafka.client_config()
    wait_for_cluster(client_config, kafka.connect_timeout_s)
    metrics = ServiceMetrics(SERVICE)
    evaluator = Evaluator(settings, client_config, metrics)
    evaluator.check_topics()
    if settings.metrics_port is not None:
        serve_metrics(metrics, settings.metrics_port, settings.metrics_host)
    stop = stop_event(stop)
    log.info("evaluator judging %s", ", ".join(evaluator.topics))
    return evaluator.run(stop)


def read_fleet_figures(
    client_config: Mapping[str, str],
    topic: str = EVALUATIONS_TOPIC,
    group_id: str = EVALUATOR_GROUP,
    timeout_s: float = 30.0,
) -> dict[FigureKey, Sums]:
    """The whole fleet's live figures: every partition's latest snapshot on the evaluations topic, summed."""
    reader = ControlLog(client_config, topic)
    try:
        return fleet_figures(latest_snapshots(reader.read_to_end(timeout_s), group_id).values())
    finally:
        reader.close()
