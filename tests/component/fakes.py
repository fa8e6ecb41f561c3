"""In-memory stand-ins for the Kafka clients, for component tests of the runner (never for integration)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.kafka import KafkaError, TopicPartition
from shared.records import InputRecord


def record(
    value: bytes | None,
    key: bytes | None = b"k",
    offset: int = 0,
    partition: int = 0,
    topic: str = "rides.events",
    headers: list[tuple[str, bytes]] | None = None,
    timestamp_ms: int = 0,
) -> InputRecord:
    return InputRecord(topic, partition, offset, key, value, headers, timestamp_ms)


@dataclass
class FakeConsumer:
    """Hands out `batches` in order, like a consumer fetching a partitioned log, and moves back when asked:
    after `seek`, every record already handed out from that partition at or past the offset comes again
    (before what follows), as a real consumer's fetch position would. A rewind that forgets a partition
    therefore loses its records here too."""

    batches: list[list[InputRecord]]
    commits: list[list[TopicPartition]] = field(default_factory=list)
    closed: bool = False
    seeks: list[TopicPartition] = field(default_factory=list)
    group_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    handed_out: dict[tuple[str, int, int], InputRecord] = field(default_factory=dict)
    again: list[InputRecord] = field(default_factory=list)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[InputRecord]:
        if self.again:
            out, self.again = self.again[:num_messages], self.again[num_messages:]
        else:
            out = self.batches.pop(0) if self.batches else []
        self.handed_out.update({(r.topic, r.partition, r.offset): r for r in out})
        return out

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        self.commits.append(list(offsets))

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("rides.events", 0)]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return partitions

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        return (0, 0)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> None:
        return None

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        return [
            TopicPartition(p.topic, p.partition, self.group_offsets.get((p.topic, p.partition), -1001))
            for p in partitions
        ]

    def seek(self, partition: TopicPartition) -> None:
        self.seeks.append(partition)
        same = (partition.topic, partition.partition)
        replay = [r for (t, p, o), r in self.handed_out.items() if (t, p) == same and o >= partition.offset]
        others = [r for r in self.again if (r.topic, r.partition) != same]
        self.again = sorted(others + replay, key=lambda r: (r.topic, r.partition, r.offset))

    def consumer_group_metadata(self) -> str:
        return "group-metadata"

    def close(self) -> None:
        self.closed = True


@dataclass
class Produced:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None


@dataclass
class FakeProducer:
    """Delivers on flush; `fail_topic` makes every delivery to that topic fail, like a broker refusal."""

    fail_topic: str | None = None
    produced: list[Produced] = field(default_factory=list)
    _pending: list[tuple[Any, Produced]] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        on_delivery: Any = None,
        headers: Any = None,
    ) -> None:
        record = Produced(topic, key, value, headers)
        self._pending.append((on_delivery, record))

    def poll(self, timeout: float = 0) -> int:
        return self.flush()

    def flush(self, timeout: float = -1) -> int:
        for callback, record in self._pending:
            error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if record.topic == self.fail_topic else None
            if error is None:
                self.produced.append(record)
            if callback is not None:
                callback(error, None)
        self._pending.clear()
        return 0


@dataclass
class ScoreResult:
    predictions: list[Any]
    failures: list[tuple[int, str]]


@dataclass
class EchoScorer:
    """Scores ride_started events with a constant; refuses rides whose id starts with 'nan'."""

    model_name: str = "echo"
    model_version: str = "echo-1"
    scored_event_types: frozenset[str] = frozenset({"ride_started"})
    calls: int = 0

    def score(self, events: Sequence[Any], produced_at: datetime) -> ScoreResult:
        from consumers.scoring import encode_prediction
        from schemas.predictions import TipPrediction

        self.calls += 1
        predictions, failures = [], []
        for position, event in enumerate(events):
            if event.ride_id.startswith("nan"):
                failures.append((position, "model returned NaN"))
                continue
            predictions.append(
                encode_prediction(
                    TipPrediction,
                    event,
                    self.model_name,
                    self.model_version,
                    produced_at,
                    predicted_tip_usd=1.0,
                )
            )
        return ScoreResult(predictions, failures)


@dataclass
class FakeTransactionalProducer(FakeProducer):
    """A transactional producer: records become `produced` (visible) only when their transaction commits.

    `abort_on_commit` makes the next commit fail with an abortable error, as a broker would after a
    coordinator change or a transaction timeout.
    """

    consumer: FakeConsumer | None = None
    abort_on_commit: bool = False
    in_transaction: bool = False
    transactions: list[str] = field(default_factory=list)
    _uncommitted: list[Produced] = field(default_factory=list)
    _offsets: list[TopicPartition] = field(default_factory=list)

    def init_transactions(self, timeout: float = -1) -> None:
        self.transactions.append("init")

    def begin_transaction(self) -> None:
        assert not self.in_transaction, "begin inside an open transaction"
        self.in_transaction = True
        self.transactions.append("begin")

    def flush(self, timeout: float = -1) -> int:
        visible = list(self.produced)
        super().flush(timeout)
        self._uncommitted.extend(self.produced[len(visible) :])
        self.produced = visible
        return 0

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        assert self.in_transaction and group_metadata == "group-metadata"
        self._offsets = list(positions)

    def commit_transaction(self, timeout: float = -1) -> None:
        from shared.kafka import KafkaException

        assert self.in_transaction
        if self.abort_on_commit:
            self.abort_on_commit = False
            raise KafkaException(KafkaError(KafkaError._FENCED, "abortable in test", txn_requires_abort=True))
        self.flush()
        self.produced.extend(self._uncommitted)
        if self.consumer is not None:
            self.consumer.commits.append(list(self._offsets))
            for tp in self._offsets:
                self.consumer.group_offsets[(tp.topic, tp.partition)] = tp.offset
        self._reset("commit")

    def abort_transaction(self, timeout: float = -1) -> None:
        self._reset("abort")

    def _reset(self, outcome: str) -> None:
        self.transactions.append(outcome)
        self.in_transaction = False
        self._uncommitted.clear()
        self._pending.clear()
        self._offsets = []
