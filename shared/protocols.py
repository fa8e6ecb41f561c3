"""The one set of seams between the runtime and its clients, its scorers and its fakes.

Each Protocol names only what the runtime calls, with the signatures of confluent-kafka's real clients
(`shared.kafka.RecordConsumer` and `confluent_kafka.Producer` satisfy them; so do the component tests'
in-memory fakes). The input side speaks `InputRecord`, converted once at the edge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from shared.records import Headers, InputRecord

if TYPE_CHECKING:  # shared.kafka (the one confluent_kafka importer) imports this module at run time
    from shared.kafka import KafkaError, Message, TopicPartition

DeliveryCallback = Callable[["KafkaError | None", "Message"], None]


class RecordConsumer(Protocol):
    """A group member that hands out engine-neutral records and commits offsets."""

    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[InputRecord]: ...
    def commit(self, offsets: list[TopicPartition]) -> None:
        """Synchronous: returns once the group coordinator accepted the offsets."""

    def assignment(self) -> list[TopicPartition]: ...
    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...
    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = ..., cached: bool = ...
    ) -> tuple[int, int] | None: ...
    def committed(self, partitions: list[TopicPartition], timeout: float = ...) -> list[TopicPartition]: ...
    def seek(self, partition: TopicPartition) -> None: ...
    def consumer_group_metadata(self) -> Any: ...
    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...
    def close(self) -> None: ...


class MessageProducer(Protocol):
    """The part of a Kafka producer that publishing code needs."""

    def produce(
        self,
        topic: str,
        value: bytes | None = ...,
        key: bytes | None = ...,
        *,
        on_delivery: DeliveryCallback | None = ...,
        headers: Headers | None = ...,
    ) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


class TransactionalProducer(MessageProducer, Protocol):
    def init_transactions(self, timeout: float = ...) -> None: ...
    def begin_transaction(self) -> None: ...
    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = ...
    ) -> None: ...
    def commit_transaction(self, timeout: float = ...) -> None: ...
    def abort_transaction(self, timeout: float = ...) -> None: ...


class EncodedOutput(Protocol):
    """A scorer's prediction, already encoded (consumers.scoring.EncodedPrediction). A shadow output goes to
    the service's shadow topic instead of the one users read."""

    @property
    def key(self) -> bytes: ...
    @property
    def value(self) -> bytes: ...
    @property
    def headers(self) -> Headers | None: ...
    @property
    def shadow(self) -> bool: ...


class ScoreResultLike(Protocol):
    """Predictions, and the positions (in the events handed to `score`) of the events it could not score."""

    @property
    def predictions(self) -> Sequence[EncodedOutput]: ...
    @property
    def failures(self) -> Sequence[tuple[int, str]]: ...


class Scorer(Protocol):
    """A service's pure scoring step (see consumers/<service>/scorer.py): no Kafka, no I/O."""

    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def scored_event_types(self) -> frozenset[str]: ...

    def score(self, events: Sequence[Any], produced_at: datetime) -> ScoreResultLike: ...
