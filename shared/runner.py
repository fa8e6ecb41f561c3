"""The one run loop every scoring service shares.

    consume a micro-batch → decode and validate → score once per batch → produce predictions and dead
    letters → every commit interval: flush, verify delivery, commit the offsets

No business logic lives here: decoding is `shared.columnar` (msgspec, checked by the column; pydantic's
`shared.serde` for every record it doubts), scoring is the service's pure scorer, dead-letter
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
from itertools import compress
from operator import attrgetter
from typing import Any, NamedTuple

import numpy as np

from schemas.control import Deployment, SwitchRecord, switch_key
from shared.columnar import DecodedRecord, EventView, decode_batch, decoder_kind, event_classes
from shared.dead_letter import DeadLetter, dead_letter_for
from shared.errors import KafkaUnavailableError
from shared.guarantees import AtLeastOnce, DeliveryLedger, IntervalCommitter
from shared.handover import HandoverStep, HandoverView
from shared.kafka import KafkaError, KafkaException, TopicPartition, produce_with_backoff
from shared.metrics import ServiceMetrics
from shared.protocols import EncodedOutput, MessageProducer, RecordConsumer, Scorer
from shared.records import Headers, InputRecord, offset_ranges
from shared.reload import HotReloader
from shared.serde import Rejected, RideEventModel

log = logging.getLogger(__name__)

# The defaults of a service's loop, in one place: ServiceSettings, the CLI help and README show these.
DEFAULT_BATCH_SIZE = 2000
# A consume returns when its batch is full or this long has passed: under load batches fill at once, so it
# only sets how long a record waits at rates below capacity (at 5,000 events/s every consume waits it out).
# 10 ms → 5 ms took the passthrough's median event→output latency from 15 to 9 ms, with no loss of drain
# throughput (docs/performance.md).
DEFAULT_BATCH_TIMEOUT_S = 0.005
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024
DEFAULT_BROKER_LOSS_TIMEOUT_S = 60.0
DEFAULT_FLUSH_TIMEOUT_S = 30.0
# How stale the readiness probe's "holds partitions" may be.
ASSIGNMENT_CHECK_S = 1.0

_VALUE, _TIMESTAMP_MS, _EVENT_TYPE = map(attrgetter, ("value", "timestamp_ms", "event_type"))


@dataclass(frozen=True)
class RunnerConfig:
    service: str
    output_topic: str
    dlq_topic: str
    shadow_topic: str = ""
    # Where switch records go (the control topic) and the instance name they carry; "" writes none.
    control_topic: str = ""
    instance: str = ""
    # blue/green: the deployment this instance belongs to (only the live one publishes for users)
    deployment: Deployment = "blue"
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


class Refused(NamedTuple):
    """A record that is dead-lettered, and why."""

    record: InputRecord
    reason: str
    detail: str


@dataclass
class BatchPlan:
    """One micro-batch sorted into what to score, what to dead-letter and what to pass over."""

    # The records to score and, side by side, their events (contract models, or the decoder's views of them:
    # same attributes).
    to_score: list[InputRecord] = field(default_factory=list)
    scored_events: list[RideEventModel | EventView] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    # Refusals by the decoder (not the model): each counts as an "invalid" input event.
    undecoded: int = 0

    def events(self) -> list[RideEventModel]:
        return self.scored_events

    def event_types(self) -> Counter[str]:
        """Inputs by event type, refused ones as "invalid"."""
        counts: Counter[str] = Counter(map(_EVENT_TYPE, self.scored_events))
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


class Ownership(NamedTuple):
    """A batch sorted by which deployment publishes each record for users (blue/green)."""

    live: list[InputRecord]
    standby: list[InputRecord]
    # (topic, partition) → where to consume again from: the first record whose cut-over is not known yet,
    # or a cut-over handing users to us that we read past before we knew of it (`rewound`)
    held: dict[tuple[str, int], int]
    rewound: set[tuple[str, int]]


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
    """Decode every record (one `decode_batch` for the batch); sort it into scored, refused (with the
    reason) or ignored."""
    plan = BatchPlan()
    values = list(map(_VALUE, records))
    # Views, not models: the scorers read attributes, and building a model nobody keeps cost ~1.8 µs an event.
    if max(map(len, filter(None, values)), default=0) <= max_payload:
        decoded = decode_batch(values, scored_types, views=True)
    else:
        decoded = _decoded_within(values, scored_types, max_payload)
    # The events to score found by their class (a numpy scan), in record order; the few others one by one.
    scored = event_classes(scored_types)
    to_score = np.fromiter(map(scored.__contains__, map(type, decoded)), bool, count=len(decoded))
    rows = np.flatnonzero(to_score).tolist()
    plan.to_score = list(map(records.__getitem__, rows))
    plan.scored_events = list(map(decoded.__getitem__, rows))
    for row in np.flatnonzero(~to_score).tolist():
        outcome = decoded[row]
        if isinstance(outcome, Rejected):
            plan.refused.append(Refused(records[row], outcome.reason, outcome.detail))
            plan.undecoded += 1
        elif isinstance(outcome, str):  # valid, of a type this service passes over: no model was built
            plan.ignored.append(outcome)
        else:
            plan.ignored.append(outcome.event_type)
    return plan


def _decoded_within(
    values: list[bytes | None], scored_types: frozenset[str], max_payload: int
) -> list[DecodedRecord]:
    """`decode_batch` of the values no bigger than `max_payload`; the bigger ones refused as oversized."""
    sized = [value is None or len(value) <= max_payload for value in values]
    decoded = iter(decode_batch(list(compress(values, sized)), scored_types, views=True))
    return [
        next(decoded) if fits else Rejected("oversized", f"{len(value or b'')} bytes > {max_payload}")
        for value, fits in zip(values, sized)
    ]


def score_batch(
    records: Sequence[InputRecord], scorer: Scorer, service: str, max_payload: int, produced_at: datetime
) -> ScoredBatch:
    """Decode a micro-batch, score its valid events with one call, and refuse the rows the model could not
    score. Every engine (this runner, the Faust agents, the benchmark's peers) goes through here, so what is
    scored or refused, and why, is decided in one place."""
    plan = plan_batch(records, scorer.scored_event_types, max_payload)
    result = scorer.score(plan.events(), produced_at)
    for position, reason in result.failures:
        plan.refused.append(Refused(plan.to_score[position], "unscoreable", reason))
    return ScoredBatch(plan, result.predictions, plan.dead_letters(service))


def record_batch(
    metrics: ServiceMetrics, stats: RunStats, batch: ScoredBatch, consumed: int, seconds: float
) -> None:
    """Metrics and run counters of one processed batch (what it produced is counted on commit:
    `count_outputs`)."""
    to_score = batch.plan.to_score
    stamps = np.fromiter(map(_TIMESTAMP_MS, to_score), dtype=np.float64, count=len(to_score))
    stamps = stamps[stamps > 0]
    latencies = np.maximum(0.0, (time.time() * 1000 - stamps) / 1000)
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
        decoder_kind()  # a bad RIDESTREAM_DECODER stops the service here, not at its first batch
        self.epoch = 0
        self.handovers: tuple[HandoverStep, ...] = ()
        self.live: str = config.deployment
        # partitions waiting for a blue/green cut-over, for the status report
        self.waiting: list[int] = []
        # (topic, partition) → the switch records this instance wrote, in order: (epoch, offset, the
        # committer's commits before it), so those an aborted transaction took can be forgotten
        self.switches: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
        self.aborts_seen = 0
        # the epoch whose switch records were written at every assigned partition's position
        self.switches_recorded_for = 0
        serving = ""
        if reloader is not None:
            serving, self.epoch = reloader.serving.label, reloader.serving.epoch
            self.handovers, self.live = reloader.serving.handovers, reloader.serving.live
            reloader.status_source = self.status
        self.metrics.on_model_loaded(scorer.model_name, scorer.model_version, serving)
        self._last_lag = 0.0
        self._assigned = (-float("inf"), False)  # (when asked, whether any partition was assigned)
        self.lag = 0  # records behind, over the assigned partitions (status reports, rolling's health)

    def run(self, stop: threading.Event) -> RunStats:
        """Process batches until `stop` is set (or a bounded run ends); then commit and leave the group."""
        last_record = time.monotonic()
        finished = False
        try:
            while not stop.is_set():
                self.swap_model_if_ready()
                self.record_positions_once()
                records = self.consumer.consume(self.config.batch_size, self.config.batch_timeout_s)
                self.raise_if_fatal()
                self.metrics.on_loop(ready=self.has_partitions() and self.watch.down_since is None)
                if records:
                    self.watch.on_contact()
                    self.process(records)
                    last_record = time.monotonic()
                else:
                    self.rewind_when_idle()
                    self.committer.tick()
                    self.check_brokers()
                self.report_lag()
                if self.bounded_run_over(last_record):
                    break
            finished = True
        finally:
            self.close(clean=finished)
        return self.stats

    def has_partitions(self) -> bool:
        """Whether this member holds any partition (readiness), asked of the client at most once a second:
        `assignment()` is a round trip to librdkafka's main thread, ~3% of a busy loop asked per batch."""
        if time.monotonic() - self._assigned[0] >= ASSIGNMENT_CHECK_S:
            self._assigned = (time.monotonic(), bool(self.consumer.assignment()))
        return self._assigned[1]

    def swap_model_if_ready(self) -> None:
        """Between two batches: take the new model version hot reload has loaded and warmed, if any."""
        swap = self.reloader.take_swap() if self.reloader is not None else None
        if swap is None:
            return
        previous = self.scorer.model_version
        self.scorer, self.epoch = swap.scorer, swap.plan.epoch
        self.handovers, self.live = swap.plan.handovers, swap.plan.live
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
            "lag": self.lag,
            "live": self.live_throughout,
            "waiting_for_cutover": list(self.waiting),
        }

    @property
    def live_throughout(self) -> bool:
        """No handover to look up: this instance's deployment publishes every record for users."""
        return not self.handovers and self.live == self.config.deployment

    def handover_view(self, first: dict[tuple[str, int], int]) -> HandoverView:
        def local(topic: str, partition: int) -> list[tuple[int, int]]:
            return [(epoch, offset) for epoch, offset, _ in self.switches.get((topic, partition), ())]

        index = self.reloader.cutovers if self.reloader is not None else None
        return HandoverView(self.handovers, self.live, self.config.deployment, index, local, first)

    def forget_aborted_switches(self) -> None:
        if self.committer.aborts == self.aborts_seen:
            return
        self.aborts_seen, commits = self.committer.aborts, self.committer.commits
        for written in self.switches.values():
            written[:] = [w for w in written if w[2] < commits]

    def sort_by_owner(self, records: Sequence[InputRecord]) -> Ownership:
        """Which records this instance publishes for users and which on the shadow topic only, by the
        cut-overs of the plan's handovers (shared/handover.py); records behind an unknown cut-over wait,
        and a partition read past a cut-over that hands users to us is consumed again from it."""
        first: dict[tuple[str, int], int] = {}
        for record in records:
            where = (record.topic, record.partition)
            first[where] = min(record.offset, first.get(where, record.offset))
        view = self.handover_view(first)
        again = view.rewinds()
        sorted_out = Ownership([], [], dict(again), set(again))
        for record in records:
            where = (record.topic, record.partition)
            if where in sorted_out.held:
                continue
            owner = view.owner(record.topic, record.partition, record.offset)
            if owner is None:
                sorted_out.held[where] = record.offset
            elif owner == self.config.deployment:
                sorted_out.live.append(record)
            else:
                sorted_out.standby.append(record)
        return sorted_out

    def rewind_when_idle(self) -> None:
        """Nothing consumed: a cut-over handing users to us may have appeared behind our positions (we read
        the whole input on the shadow topic before it), so consume again from there now, not when the next
        record arrives."""
        if self.live_throughout:
            return
        assigned = self.consumer.assignment()
        positions = self.consumer.position(assigned) if assigned else []
        first = {(p.topic, p.partition): p.offset for p in positions if p.offset >= 0}
        again = self.handover_view(first).rewinds() if first else {}
        for (topic, partition), offset in again.items():
            log.info(
                "%s: consuming %s/%d again from its cut-over %d",
                self.config.service,
                topic,
                partition,
                offset,
            )
            self.consumer.seek(TopicPartition(topic, partition, offset))

    def hold_back(self, ownership: Ownership) -> None:
        """Consume these partitions again: from a cut-over read past, or from the first record whose owner
        is not known yet."""
        for (topic, partition), offset in ownership.held.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))
        waiting = sorted(p for t, p in ownership.held if (t, p) not in ownership.rewound)
        if waiting != self.waiting:
            log.info(
                "%s (%s deployment): partitions %s wait for the cut-over the live deployment records",
                self.config.service,
                self.config.deployment,
                waiting,
            )
        self.waiting = waiting

    def record_switches(self, records: Sequence[InputRecord], ledger: DeliveryLedger) -> None:
        """Write down, for each partition in this batch seen first under the current epoch, the offset from
        which it is scored under it: produced with the batch, so under exactly-once in its transaction."""
        if self.epoch == 0 or not self.config.control_topic:
            return
        self.record_switches_from([(s.topic, s.partition, s.first) for s in offset_ranges(records)], ledger)

    def record_switches_from(self, starts: Sequence[tuple[str, int, int]], ledger: DeliveryLedger) -> None:
        if self.epoch == 0 or not self.config.control_topic:
            return
        self.forget_aborted_switches()
        for topic, partition, first in starts:
            written = self.switches.setdefault((topic, partition), [])
            lowest = min((offset for epoch, offset, _ in written if epoch == self.epoch), default=None)
            # Written once per epoch, and again when the partition is consumed again from before that offset
            # (an aborted transaction took the record with it, or a blue/green cut-over is scored again).
            if lowest is not None and first >= lowest:
                continue
            written.append((self.epoch, first, self.committer.commits))
            record = SwitchRecord(
                service=self.config.service,
                topic=topic,
                partition=partition,
                offset=first,
                epoch=self.epoch,
                instance=self.config.instance,
                deployment=self.config.deployment,
            )
            key = switch_key(self.config.service, partition, self.epoch, first, self.config.deployment)
            self.produce(
                self.config.control_topic, key.encode(), record.model_dump_json().encode(), None, ledger
            )

    def record_positions_once(self) -> None:
        """Under a new epoch, before the next consume: write the switch records of every assigned partition
        at its position, so a blue/green cut-over on a quiet partition does not wait for its next record
        (the batches that follow start there: they write none)."""
        if self.switches_recorded_for == self.epoch:
            return
        self.switches_recorded_for = self.epoch
        assigned = self.consumer.assignment()
        positions = self.consumer.position(assigned) if assigned else []
        starts = [(p.topic, p.partition, p.offset) for p in positions if p.offset >= 0]
        if not starts or self.epoch == 0 or not self.config.control_topic:
            return
        self.committer.begin()
        ledger = DeliveryLedger()
        self.record_switches_from(starts, ledger)
        self.committer.complete([], ledger, 0)

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
        seen, live, standby = records, records, []
        if not self.live_throughout:
            ownership = self.sort_by_owner(records)
            self.hold_back(ownership)
            live, standby = ownership.live, ownership.standby
            records = live + standby
            seen = [r for r in seen if (r.topic, r.partition) not in ownership.rewound]
        self.committer.begin()
        ledger = DeliveryLedger()
        # Held-back records count too: we score them under this epoch or a later one, and the other
        # deployment may be waiting for exactly this record to know its own cut-over.
        self.record_switches(seen, ledger)
        if not records:
            self.committer.complete([], ledger, 0)
            self.wait_for_cutover()
            return
        now = datetime.now(UTC)
        batch = score_batch(live, self.scorer, self.config.service, self.config.max_payload_bytes, now)
        sample = batch.plan.events()
        self.produce_outputs(batch, ledger)
        if standby:
            sample = sample or self.produce_standby(standby, now, ledger)
        if self.reloader is not None:
            self.reloader.offer_sample(sample)
        self.committer.complete(
            offset_ranges(records), ledger, len(records), on_commit=lambda: count_outputs(self.metrics, batch)
        )
        record_batch(self.metrics, self.stats, batch, len(records), time.monotonic() - started)

    def wait_for_cutover(self) -> None:
        """Nothing in the batch can be scored yet: wait (briefly) for the switch record the other deployment
        writes; the caller's next consume reads the held records again."""
        if self.reloader is not None:
            self.reloader.cutovers.changed.wait(0.2)
            self.reloader.cutovers.changed.clear()

    def produce_standby(
        self, records: Sequence[InputRecord], now: datetime, ledger: DeliveryLedger
    ) -> list[RideEventModel]:
        """Records the other deployment publishes for users: scored onto the shadow topic only. What cannot be
        scored is the live deployment's to dead-letter, not ours. Returns the events scored."""
        batch = score_batch(records, self.scorer, self.config.service, self.config.max_payload_bytes, now)
        shadow = self.config.shadow_topic or f"{self.config.output_topic}.shadow"
        for prediction in batch.predictions:
            self.produce(shadow, prediction.key, prediction.value, prediction.headers, ledger)
        self.stats.predictions += len(batch.predictions)
        return batch.plan.events()

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
        total = 0
        for position in self.consumer.position(assigned) if assigned else []:
            marks = self.consumer.get_watermark_offsets(position, cached=True)
            if marks is not None and position.offset >= 0:
                lag = max(0, marks[1] - position.offset)
                self.metrics.on_lag(position.topic, position.partition, lag)
                total += lag
        self.lag = total

    def on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        """Rebalance hook (subscribe's on_revoke): make in-flight work durable before partitions leave."""
        log.info("%s: revoked %s", self.config.service, [p.partition for p in partitions])
        self.committer.on_revoke(partitions)
        for partition in partitions:
            # Its next owner writes its own switch records; ours, if it comes back, are read from the log.
            self.switches.pop((partition.topic, partition.partition), None)
            self.metrics.forget_lag(partition.topic, partition.partition)
        self.switches_recorded_for = 0  # the next assignment's partitions get theirs

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
