"""The one run loop every scoring service shares.

    consume a micro-batch → decode and validate → score once per batch → produce predictions and dead
    letters → every commit interval: flush, verify delivery, commit the offsets

No business logic lives here: decoding is `shared.serde`, scoring is the service's pure scorer, dead-letter
records are `shared.dead_letter`. The loop talks to the Protocols of `shared.protocols` and to engine-neutral
`InputRecord`s, so component tests drive it with in-memory fakes and integration tests with the real broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from schemas.control import SwitchRecord, switch_key
from shared.dead_letter import DeadLetter, dead_letter_for
from shared.errors import KafkaUnavailableError
from shared.guarantees import AtLeastOnce, DeliveryLedger, IntervalCommitter
from shared.kafka import KafkaError, KafkaException, TopicPartition, produce_with_backoff
from shared.metrics import ServiceMetrics
from shared.protocols import EncodedOutput, MessageProducer, RecordConsumer, Scorer
from shared.records import Headers, InputRecord, offset_ranges
from shared.reload import HotReloader
from shared.serde import Rejected, RideEventModel, decode_event

log = logging.getLogger(__name__)

# The defaults of a service's loop, in one place: ServiceSettings, the CLI help and README show these.
DEFAULT_BATCH_SIZE = 2000
DEFAULT_BATCH_TIMEOUT_S = 0.01
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024
DEFAULT_BROKER_LOSS_TIMEOUT_S = 60.0
DEFAULT_FLUSH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RunnerConfig:
    service: str
    output_topic: str
    dlq_topic: str
    shadow_topic: str = ""
    # Where switch records go (the control topic) and the instance name they carry; "" writes none.
    control_topic: str = ""
    instance: str = ""
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    broker_loss_timeout_s: float = DEFAULT_BROKER_LOSS_TIMEOUT_S
    flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S
    lag_interval_s: float = 5.0
    # Bounded runs, for tests and benchmarks: stop after this many records / this long without any.
    max_messages: int | None = None
    idle_timeout_s: float | None = None


@dataclass
class RunStats:
    consumed: int = 0
    predictions: int = 0
    dead_lettered: int = 0
    ignored: int = 0
    batches: int = 0


class Decoded(NamedTuple):
    """A record that decoded into an event this service scores."""

    record: InputRecord
    event: RideEventModel


class Refused(NamedTuple):
    """A record that is dead-lettered, and why."""

    record: InputRecord
    reason: str
    detail: str


@dataclass
class BatchPlan:
    """One micro-batch sorted into what to score, what to dead-letter and what to pass over."""

    to_score: list[Decoded] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    # Refusals by the decoder (not the model): each counts as an "invalid" input event.
    undecoded: int = 0

    def events(self) -> list[RideEventModel]:
        return [decoded.event for decoded in self.to_score]

    def event_types(self) -> Counter[str]:
        """Inputs by event type, refused ones as "invalid"."""
        counts: Counter[str] = Counter(decoded.event.event_type for decoded in self.to_score)
        counts.update(self.ignored)
        if self.undecoded:
            counts["invalid"] += self.undecoded
        return counts

    def dead_reasons(self) -> Counter[str]:
        return Counter(refusal.reason for refusal in self.refused)

    def dead_letters(self, service: str) -> list[DeadLetter]:
        return [dead_letter_for(r.record, r.reason, r.detail, service) for r in self.refused]


@dataclass(frozen=True)
class ScoredBatch:
    """What one micro-batch becomes: its plan, its encoded predictions and its dead-letter records."""

    plan: BatchPlan
    predictions: Sequence[EncodedOutput]
    dead_letters: list[DeadLetter]


class BrokerWatch:
    """Remembers since when every broker has been unreachable, from librdkafka's error callback."""

    DOWN_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.fatal: KafkaError | None = None

    def on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal = error
        elif error.code() == KafkaError._ALL_BROKERS_DOWN and self.down_since is None:
            self.down_since = time.monotonic()

    def on_contact(self) -> None:
        self.down_since = None

    def down_for(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since


def plan_batch(records: Sequence[InputRecord], scored_types: frozenset[str], max_payload: int) -> BatchPlan:
    """Decode every record; sort it into scored, refused (with the reason) or ignored."""
    plan = BatchPlan()
    for record in records:
        value = record.value
        decoded: RideEventModel | Rejected = (
            Rejected("oversized", f"{len(value)} bytes > {max_payload}")
            if value is not None and len(value) > max_payload
            else decode_event(value)
        )
        if isinstance(decoded, Rejected):
            plan.refused.append(Refused(record, decoded.reason, decoded.detail))
            plan.undecoded += 1
        elif decoded.event_type in scored_types:
            plan.to_score.append(Decoded(record, decoded))
        else:
            plan.ignored.append(decoded.event_type)
    return plan


def score_batch(
    records: Sequence[InputRecord], scorer: Scorer, service: str, max_payload: int, produced_at: datetime
) -> ScoredBatch:
    """Decode a micro-batch, score its valid events with one call, and refuse the rows the model could not
    score. Every engine (this runner, the Faust agents, the benchmark's peers) goes through here, so what is
    scored or refused, and why, is decided in one place."""
    plan = plan_batch(records, scorer.scored_event_types, max_payload)
    result = scorer.score(plan.events(), produced_at)
    for position, reason in result.failures:
        plan.refused.append(Refused(plan.to_score[position].record, "unscoreable", reason))
    return ScoredBatch(plan, result.predictions, plan.dead_letters(service))


def record_batch(
    metrics: ServiceMetrics, stats: RunStats, batch: ScoredBatch, consumed: int, seconds: float
) -> None:
    """Metrics and run counters of one processed batch (what it produced is counted on commit:
    `count_outputs`)."""
    now_ms = time.time() * 1000
    latencies = [
        max(0.0, (now_ms - d.record.timestamp_ms) / 1000)
        for d in batch.plan.to_score
        if d.record.timestamp_ms > 0
    ]
    # One counter update per kind and batch: a labelled counter costs microseconds per call.
    for event_type, count in batch.plan.event_types().items():
        metrics.on_event(event_type, count)
    for event_type, count in Counter(batch.plan.ignored).items():
        metrics.on_ignored(event_type, count)
    metrics.on_batch(consumed, seconds, latencies)
    stats.consumed += consumed
    stats.predictions += len(batch.predictions)
    stats.dead_lettered += len(batch.dead_letters)
    stats.ignored += len(batch.plan.ignored)
    stats.batches += 1


def count_outputs(metrics: ServiceMetrics, batch: ScoredBatch) -> None:
    """The batch's predictions and dead letters are durable (committed): count them."""
    metrics.on_predictions(len(batch.predictions))
    for reason, count in batch.plan.dead_reasons().items():
        metrics.on_dead_letter(reason, count)


class ServiceRunner:
    def __init__(
        self,
        consumer: RecordConsumer,
        producer: MessageProducer,
        scorer: Scorer,
        config: RunnerConfig,
        metrics: ServiceMetrics | None = None,
        watch: BrokerWatch | None = None,
        committer: IntervalCommitter | None = None,
        reloader: HotReloader | None = None,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.committer = committer or AtLeastOnce(consumer, producer, config.service, config.flush_timeout_s)
        self.scorer = scorer
        self.config = config
        self.metrics = metrics or ServiceMetrics(config.service)
        self.watch = watch or BrokerWatch()
        self.stats = RunStats()
        self.reloader = reloader
        self.epoch = 0
        # (topic, partition) → (epoch, offset) of the last switch record written
        self.recorded_switches: dict[tuple[str, int], tuple[int, int]] = {}
        serving = ""
        if reloader is not None:
            serving, self.epoch = reloader.serving.label, reloader.serving.epoch
            reloader.status_source = self.status
        self.metrics.on_model_loaded(scorer.model_name, scorer.model_version, serving)
        self._last_lag = 0.0

    def run(self, stop: threading.Event) -> RunStats:
        """Process batches until `stop` is set (or a bounded run ends); then commit and leave the group."""
        last_record = time.monotonic()
        finished = False
        try:
            while not stop.is_set():
                self.swap_model_if_ready()
                records = self.consumer.consume(self.config.batch_size, self.config.batch_timeout_s)
                self.raise_if_fatal()
                self.metrics.on_loop(ready=bool(self.consumer.assignment()) and self.watch.down_since is None)
                if records:
                    self.watch.on_contact()
                    self.process(records)
                    last_record = time.monotonic()
                else:
                    self.committer.tick()
                    self.check_brokers()
                self.report_lag()
                if self.bounded_run_over(last_record):
                    break
            finished = True
        finally:
            self.close(clean=finished)
        return self.stats

    def swap_model_if_ready(self) -> None:
        """Between two batches: take the new model version hot reload has loaded and warmed, if any."""
        swap = self.reloader.take_swap() if self.reloader is not None else None
        if swap is None:
            return
        previous = self.scorer.model_version
        self.scorer, self.epoch = swap.scorer, swap.plan.epoch
        label = swap.plan.label
        self.metrics.on_model_swapped(self.scorer.model_name, self.scorer.model_version, label)
        log.info(
            "%s: now serving %s (%s; was %s), epoch %d",
            self.config.service,
            label,
            self.scorer.model_version,
            previous,
            self.epoch,
        )

    def status(self) -> dict[str, Any]:
        """What this instance reports on the control topic (read from the reload thread)."""
        return {
            "predicted": dict(getattr(self.scorer, "predicted", {})),
            "unscoreable": dict(getattr(self.scorer, "unscoreable", {})),
            "p99_ms": self.metrics.recent_p99_ms(),
            "consumed": self.stats.consumed,
            "dead_lettered": self.stats.dead_lettered,
        }

    def record_switches(self, records: Sequence[InputRecord], ledger: DeliveryLedger) -> None:
        """Write down, for each partition in this batch seen first under the current epoch, the offset from
        which it is scored under it: produced with the batch, so under exactly-once in its transaction."""
        if self.epoch == 0 or not self.config.control_topic:
            return
        for span in offset_ranges(records):
            where = (span.topic, span.partition)
            epoch, offset = self.recorded_switches.get(where, (0, -1))
            # Written once per epoch, and again when the partition is replayed from before that offset (an
            # aborted transaction took the first record with it).
            if epoch == self.epoch and span.first > offset:
                continue
            self.recorded_switches[where] = (self.epoch, span.first)
            record = SwitchRecord(
                service=self.config.service,
                topic=span.topic,
                partition=span.partition,
                offset=span.first,
                epoch=self.epoch,
                instance=self.config.instance,
            )
            key = switch_key(self.config.service, span.partition, self.epoch, span.first)
            self.produce(
                self.config.control_topic, key.encode(), record.model_dump_json().encode(), None, ledger
            )

    def raise_if_fatal(self) -> None:
        if self.watch.fatal is not None:
            raise KafkaException(self.watch.fatal)

    def check_brokers(self) -> None:
        """End the process when the cluster has been gone longer than allowed: no zombie reporting healthy."""
        if self.watch.down_since is None:
            return
        try:
            self.consumer.list_topics(timeout=1.0)
            self.watch.on_contact()
        except KafkaException:
            if self.watch.down_for() > self.config.broker_loss_timeout_s:
                raise KafkaUnavailableError(
                    f"{self.config.service}: no Kafka broker reachable for {self.watch.down_for():.0f}s "
                    f"(limit {self.config.broker_loss_timeout_s:.0f}s); stopping"
                ) from None

    def bounded_run_over(self, last_record: float) -> bool:
        if self.config.max_messages is not None and self.stats.consumed >= self.config.max_messages:
            return True
        idle = self.config.idle_timeout_s
        return idle is not None and time.monotonic() - last_record > idle

    def process(self, records: Sequence[InputRecord]) -> None:
        """One micro-batch, in the order that makes at-least-once hold.

        1. decode and validate every record; refused ones become dead letters (never dropped);
        2. score the valid events with one vectorized call; unscoreable rows become dead letters too;
        3. produce predictions (keyed by ride_id) and dead letters;
        4. hand the batch's offsets to the committer (shared/guarantees.py), which makes outputs and offsets
           durable in its guarantee's order when its commit interval is due: at-least-once flushes, verifies
           every delivery report (any failure raises DeliveryError and nothing is committed, so the records
           are consumed again after a restart) and commits the offsets; exactly-once adds the offsets to the
           open transaction and commits it.
        """
        started = time.monotonic()
        self.committer.begin()
        batch = score_batch(
            records, self.scorer, self.config.service, self.config.max_payload_bytes, datetime.now(UTC)
        )
        if self.reloader is not None:
            self.reloader.offer_sample(batch.plan.events())
        ledger = DeliveryLedger()
        self.record_switches(records, ledger)
        self.produce_outputs(batch, ledger)
        self.committer.complete(
            offset_ranges(records), ledger, len(records), on_commit=lambda: count_outputs(self.metrics, batch)
        )
        record_batch(self.metrics, self.stats, batch, len(records), time.monotonic() - started)

    def produce_outputs(self, batch: ScoredBatch, ledger: DeliveryLedger) -> None:
        output, shadow = (
            self.config.output_topic,
            self.config.shadow_topic or f"{self.config.output_topic}.shadow",
        )
        for prediction in batch.predictions:
            topic = shadow if prediction.shadow else output
            self.produce(topic, prediction.key, prediction.value, prediction.headers, ledger)
        for letter in batch.dead_letters:
            self.produce(self.config.dlq_topic, letter.key, letter.value, letter.headers, ledger)

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None,
        ledger: DeliveryLedger,
    ) -> None:
        ledger.expect()
        produce_with_backoff(self.producer, topic, key, value, ledger.on_delivery, headers)

    def report_lag(self) -> None:
        if time.monotonic() - self._last_lag < self.config.lag_interval_s:
            return
        self._last_lag = time.monotonic()
        assigned = self.consumer.assignment()
        for position in self.consumer.position(assigned) if assigned else []:
            marks = self.consumer.get_watermark_offsets(position, cached=True)
            if marks is not None and position.offset >= 0:
                self.metrics.on_lag(position.topic, position.partition, max(0, marks[1] - position.offset))

    def on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        """Rebalance hook (subscribe's on_revoke): make in-flight work durable before partitions leave."""
        log.info("%s: revoked %s", self.config.service, [p.partition for p in partitions])
        self.committer.on_revoke(partitions)

    def close(self, clean: bool = True) -> None:
        """Leave the group. A clean stop first makes everything processed durable (commits its offsets, or the
        open transaction); a failed run abandons it instead, so nothing half-done is committed on the way
        out."""
        try:
            if clean:
                self.committer.close()
            else:
                self.committer.abandon()
        except BaseException:
            self.committer.abandon()
            raise
        finally:
            if self.reloader is not None:
                self.reloader.stop()
            self.consumer.close()
