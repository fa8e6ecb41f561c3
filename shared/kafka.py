"""The one module that imports confluent_kafka: client factories, the consumer's edge (records out) and
admin helpers.

Everything else talks to the Protocols of `shared.protocols` and to `shared.records.InputRecord`, so the
runner can be exercised against in-memory fakes and against the real broker with the same code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # stub lacks __all__

from shared.errors import KafkaUnavailableError
from shared.protocols import DeliveryCallback, MessageProducer
from shared.records import Headers, InputRecord

log = logging.getLogger(__name__)

__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "Consumer",
    "DeliveryCallback",
    "KafkaError",
    "KafkaException",
    "KafkaRecordConsumer",
    "Message",
    "MessageProducer",
    "Producer",
    "TopicPartition",
    "cluster_node_count",
    "ensure_topic",
    "make_consumer",
    "make_producer",
    "make_record_consumer",
    "partition_count",
    "produce_with_backoff",
    "records_of",
    "wait_for_cluster",
]

# When librdkafka's local queue is full, serve delivery reports for this long before retrying the produce.
QUEUE_FULL_BACKOFF_S = 0.05


def produce_with_backoff(
    producer: MessageProducer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    on_delivery: DeliveryCallback | None = None,
    headers: Headers | None = None,
) -> None:
    """Produce one record; a full local queue is drained (delivery reports served), never raised."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery, headers=headers)
            return
        except BufferError:
            producer.poll(QUEUE_FULL_BACKOFF_S)


def _admin(client_config: Mapping[str, str]) -> AdminClient:
    # Short-lived admin clients log an info line ("Purging unserved events") when dropped; warnings show.
    return AdminClient({"log_level": 4, **client_config})


def cluster_node_count(client_config: Mapping[str, str], timeout_s: float) -> int:
    """Number of brokers the cluster reports, via a metadata (admin) request."""
    metadata = _admin(client_config).list_topics(timeout=timeout_s)
    return len(metadata.brokers)


def partition_count(client_config: Mapping[str, str], topic: str, timeout_s: float = 10.0) -> int:
    """Partitions of `topic` (0 when it does not exist)."""
    metadata = _admin(client_config).list_topics(topic, timeout=timeout_s).topics.get(topic)
    return 0 if metadata is None or metadata.error is not None else len(metadata.partitions)


def wait_for_cluster(client_config: Mapping[str, str], timeout_s: float, expected_nodes: int = 1) -> None:
    """Block until an admin request sees `expected_nodes` brokers, or raise KafkaUnavailableError.

    Readiness is an answered request, never a fixed sleep: a broker's port accepts connections before it
    can serve metadata.
    """
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        remaining = max(0.5, min(5.0, deadline - time.monotonic()))
        try:
            seen = cluster_node_count(client_config, remaining)
            if seen >= expected_nodes:
                return
            last_error = f"{seen} of {expected_nodes} brokers registered"
        except KafkaException as exc:
            last_error = str(exc.args[0]) if exc.args else str(exc)
        time.sleep(0.2)  # back-off between retries of a failed request, not a readiness guess
    raise KafkaUnavailableError(
        f"Kafka at {client_config.get('bootstrap.servers')} did not answer within {timeout_s:.0f}s "
        f"({last_error})"
    )


def ensure_topic(
    client_config: Mapping[str, str],
    topic: str,
    partitions: int,
    replication_factor: int = -1,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> bool:
    """Create `topic` when missing. Returns True when this call created it.

    replication_factor -1 takes the cluster's default.replication.factor, so the same code creates RF 1 topics
    on a laptop broker and RF 3 (with its min.insync.replicas) on a production cluster.
    """
    admin = _admin(client_config)
    if topic in admin.list_topics(timeout=timeout_s).topics:
        return False
    futures = admin.create_topics(
        [
            NewTopic(
                topic,
                num_partitions=partitions,
                replication_factor=replication_factor,
                config=dict(config or {}),
            )
        ],
        operation_timeout=timeout_s,
    )
    try:
        futures[topic].result(timeout=timeout_s)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False  # another process won the race; the topic is there, which is all we need
        raise
    return True


def make_producer(client_config: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Producer:
    """A producer with ridestream's delivery guarantees on top of the connection config."""
    config: dict[str, Any] = {
        **client_config,
        # Idempotence gives acks=all and per-partition ordering without duplicates on retry.
        "enable.idempotence": True,
        "acks": "all",
        # A few ms of linger lets librdkafka build real batches: the main lever for throughput.
        "linger.ms": 5,
        "compression.type": "lz4",
        "socket.nagle.disable": True,
    }
    config.update(overrides or {})
    return Producer(config)


def make_consumer(
    client_config: Mapping[str, str], group_id: str, overrides: Mapping[str, Any] | None = None
) -> Consumer:
    """A consumer that never auto-commits: the runner commits only what it has delivered."""
    config: dict[str, Any] = {
        **client_config,
        "group.id": group_id,
        "enable.auto.commit": False,
        # A new group starts at the beginning so no ride is skipped because a service started late.
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        # librdkafka prefetches up to 100k messages / 64 MB per consumer by default, which was a third of a
        # service's RSS (312 MB peak draining a backlog); 2 MB (~6k ride events, six batches ahead) gave
        # 266 MB at the same throughput.
        "queued.max.messages.kbytes": 2048,
        # ...but a full prefetch queue then parks the partition's fetcher for fetch.queue.backoff.ms, 1 s by
        # default: the consumer drained its 2 MB and waited. 10 ms re-checks the queue as fast as it drains
        # (the benchmark's passthrough drained 43k events/s with the default:
        # `git show 940d8e6:results/bench.json`).
        "fetch.queue.backoff.ms": 10,
        "socket.nagle.disable": True,
    }
    config.update(overrides or {})
    return Consumer(config)


def records_of(messages: Sequence[Message]) -> list[InputRecord]:
    """The engine-neutral records of a consume() call. A fatal client error ends the run (KafkaException);
    any other error record (a partition EOF, a transient broker error) is logged and retried by librdkafka."""
    records: list[InputRecord] = []
    for message in messages:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            log.warning("consumer error (will retry): %s", error)
            continue
        headers = message.headers()
        records.append(
            InputRecord(
                message.topic() or "",
                message.partition() or 0,
                message.offset() or 0,
                message.key(),
                message.value(),
                list(headers.items()) if isinstance(headers, dict) else headers,
                message.timestamp()[1],
            )
        )
    return records


class KafkaRecordConsumer:
    """A confluent_kafka.Consumer whose `consume` hands out InputRecords (shared.protocols.RecordConsumer)."""

    def __init__(self, client: Consumer) -> None:
        self.client = client

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[InputRecord]:
        return records_of(self.client.consume(num_messages, timeout))

    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable[..., None],
        on_revoke: Callable[..., None],
        on_lost: Callable[..., None] | None = None,
    ) -> None:
        if on_lost is None:
            self.client.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke)
        else:
            self.client.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)

    def commit(self, offsets: list[TopicPartition]) -> None:
        self.client.commit(offsets=offsets, asynchronous=False)

    def assignment(self) -> list[TopicPartition]:
        return list(self.client.assignment())

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return list(self.client.position(partitions))

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int] | None:
        marks: tuple[int, int] | None = self.client.get_watermark_offsets(partition, timeout, cached)
        return marks

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        return list(self.client.committed(partitions, timeout))

    def seek(self, partition: TopicPartition) -> None:
        self.client.seek(partition)

    def consumer_group_metadata(self) -> Any:
        return self.client.consumer_group_metadata()

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return self.client.list_topics(topic, timeout)

    def close(self) -> None:
        self.client.close()


def make_record_consumer(
    client_config: Mapping[str, str], group_id: str, overrides: Mapping[str, Any] | None = None
) -> KafkaRecordConsumer:
    """make_consumer's client behind the runtime's RecordConsumer seam."""
    return KafkaRecordConsumer(make_consumer(client_config, group_id, overrides))
