"""The one run loop every scoring service shares.

    consume a micro-batch → decode and validate → score once per batch → produce predictions and dead
    letters → every commit interval: flush, verify delivery, commit the offsets

No business logic lives here: decoding is `shared.serde`, scoring is the service's pure scorer, dead-letter
records are `shared.dead_letter`. The loop talks to Protocols, so component tests drive it with in-memory
fakes and integration tests with the real broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from shared.dead_letter import DeadLetter, dead_letter_for
from shared.errors import KafkaUnavailableError
from shared.guarantees import AtLeastOnce, DeliveryLedger, IntervalCommitter
from shared.kafka import KafkaError, KafkaException, Message, TopicPartition, produce_with_backoff
from shared.metrics import ServiceMetrics
from shared.serde import Rejected, RideEventModel, decode_event

log = logging.getLogger(__name__)


class BatchConsumer(Protocol):
    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Message]: ...
    def commit(self, message: Message | None = ..., offsets: list[TopicPartition] | None = ..., asynchronous: bool = ...) -> Any: ...
    def assignment(self) -> list[TopicPartition]: ...
    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...
    def get_watermark_offsets(self, partition: TopicPartition, timeout: float | None = ..., cached: bool = ...) -> tuple[int, int] | None: ...
    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...
    def close(self) -> None: ...


class BatchProducer(Protocol):
    def produce(self, topic: str, value: bytes | None = ..., key: bytes | None = ..., on_delivery: Any = ..., headers: Any = ...) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...


class EncodedOutput(Protocol):
    """A scorer's prediction, already encoded (consumers.scoring.EncodedPrediction)."""

    @property
    def key(self) -> bytes: ...
    @property
    def value(self) -> bytes: ...


class ScoreResultLike(Protocol):
    @property
    def predictions(self) -> Sequence[EncodedOutput]: ...
    @property
    def failures(self) -> Sequence[tuple[Any, str]]: ...


class Scorer(Protocol):
    """A service's pure scoring step (see consumers/<service>/scorer.py)."""

    model_name: str
    model_version: str
    scored_event_types: frozenset[str]

    def score(self, events: Sequence[Any], produced_at: datetime) -> ScoreResultLike: ...


@dataclass(frozen=True)
class RunnerConfig:
    service: str
    output_topic: str
    dlq_topic: str
    batch_size: int = 500
    batch_timeout_s: float = 0.01
    max_payload_bytes: int = 64 * 1024
    broker_loss_timeout_s: float = 60.0
    flush_timeout_s: float = 30.0
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


@dataclass
class BatchPlan:
    """One micro-batch sorted into what to score, what to dead-letter and what to pass over."""

    to_score: list[RideEventModel] = field(default_factory=list)
    sources: list[Message] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    dead_reasons: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)


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


def plan_batch(messages: Sequence[Message], scored_types: frozenset[str], service: str, max_payload: int) -> BatchPlan:
    """Decode every record; sort it into scored, dead-lettered (with the reason) or ignored."""
    plan = BatchPlan()
    for message in messages:
        value = message.value()
        decoded: RideEventModel | Rejected = (
            Rejected("oversized", f"{len(value)} bytes > {max_payload}")
            if value is not None and len(value) > max_payload
            else decode_event(value)
        )
        if isinstance(decoded, Rejected):
            plan.dead_letters.append(dead_letter_for(message, decoded.reason, decoded.detail, service))
            plan.dead_reasons.append(decoded.reason)
            plan.event_types.append("invalid")
        elif decoded.event_type in scored_types:
            plan.to_score.append(decoded)
            plan.sources.append(message)
            plan.event_types.append(decoded.event_type)
        else:
            plan.ignored.append(decoded.event_type)
            plan.event_types.append(decoded.event_type)
    return plan


def score_batch(
    messages: Sequence[Message], scorer: Scorer, service: str, max_payload: int, produced_at: datetime
) -> tuple[BatchPlan, Sequence[EncodedOutput]]:
    """Decode a micro-batch, score its valid events with one call, and add the rows the model could not
    score to the plan's dead letters. Returns the plan and the predictions. Every engine (this runner, the
    Faust agents, the benchmark's peers) goes through here, so what is scored or refused, and why, is
    decided in one place."""
    plan = plan_batch(messages, scorer.scored_event_types, service, max_payload)
    result = scorer.score(plan.to_score, produced_at)
    source_of = {id(event): message for event, message in zip(plan.to_score, plan.sources)}
    for event, reason in result.failures:
        plan.dead_letters.append(dead_letter_for(source_of[id(event)], "unscoreable", reason, service))
        plan.dead_reasons.append("unscoreable")
    return plan, result.predictions


def record_batch(
    metrics: ServiceMetrics, stats: RunStats, plan: BatchPlan, consumed: int, predictions: int, seconds: float
) -> None:
    """Metrics and run counters of one processed batch."""
    now_ms = time.time() * 1000
    stamps = [m.timestamp()[1] for m in plan.sources]
    latencies = [max(0.0, (now_ms - stamp) / 1000) for stamp in stamps if stamp > 0]
    # One counter update per kind and batch: a labelled counter costs microseconds per call.
    for event_type, count in Counter(plan.event_types).items():
        metrics.on_event(event_type, count)
    for event_type, count in Counter(plan.ignored).items():
        metrics.on_ignored(event_type, count)
    for reason, count in Counter(plan.dead_reasons).items():
        metrics.on_dead_letter(reason, count)
    metrics.on_batch(consumed, seconds, predictions, latencies)
    stats.consumed += consumed
    stats.predictions += predictions
    stats.dead_lettered += len(plan.dead_letters)
    stats.ignored += len(plan.ignored)
    stats.batches += 1


def next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """The offsets to commit after `messages`: per partition, one past the highest offset seen."""
    highest: dict[tuple[str, int], int] = {}
    for message in messages:
        key = (message.topic(), message.partition())
        highest[key] = max(highest.get(key, -1), message.offset())
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in highest.items()]


class ServiceRunner:
    def __init__(
        self,
        consumer: BatchConsumer,
        producer: BatchProducer,
        scorer: Scorer,
        config: RunnerConfig,
        metrics: ServiceMetrics | None = None,
        watch: BrokerWatch | None = None,
        committer: IntervalCommitter | None = None,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.committer = committer or AtLeastOnce(consumer, producer, config.flush_timeout_s)
        self.scorer = scorer
        self.config = config
        self.metrics = metrics or ServiceMetrics(config.service)
        self.watch = watch or BrokerWatch()
        self.stats = RunStats()
        self.metrics.on_model_loaded(scorer.model_name, scorer.model_version)
        self._last_lag = 0.0

    def run(self, stop: threading.Event) -> RunStats:
        """Process batches until `stop` is set (or a bounded run ends); then commit and leave the group."""
        last_record = time.monotonic()
        finished = False
        try:
            while not stop.is_set():
                messages = self.consumer.consume(self.config.batch_size, self.config.batch_timeout_s)
                self.raise_if_fatal()
                records = [m for m in messages if self.usable(m)]
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

    def usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer error (will retry): %s", error)
        return False

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

    def process(self, messages: Sequence[Message]) -> None:
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
        plan, predictions = score_batch(messages, self.scorer, self.config.service, self.config.max_payload_bytes,
                                        datetime.now(UTC))
        ledger = DeliveryLedger()
        self.produce_outputs(predictions, plan.dead_letters, ledger)
        self.committer.complete(next_offsets(messages), ledger, self.config.service, len(messages))
        record_batch(self.metrics, self.stats, plan, len(messages), len(predictions), time.monotonic() - started)

    def produce_outputs(self, predictions: Sequence[EncodedOutput], dead_letters: Sequence[DeadLetter], ledger: DeliveryLedger) -> None:
        for prediction in predictions:
            ledger.expect()
            self.produce(self.config.output_topic, prediction.key, prediction.value, None, ledger)
        for letter in dead_letters:
            ledger.expect()
            self.produce(self.config.dlq_topic, letter.key, letter.value, letter.headers, ledger)

    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Any, ledger: DeliveryLedger) -> None:
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
        open transaction); a failed run abandons it instead, so nothing half-done is committed on the way out."""
        try:
            if clean:
                self.committer.close()
            else:
                self.committer.abandon()
        except BaseException:
            self.committer.abandon()
            raise
        finally:
            self.consumer.close()
