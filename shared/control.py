"""The control topic on the wire: make sure it exists, publish desired state, follow it from the beginning.

The topic is compacted with one partition: its records are a small, totally ordered log whose latest record
per key is the fleet's desired state (schemas/control.py says what the keys mean). Every instance reads it
from the beginning with a consumer of its own (no group: each instance needs every record), first to the
end, before it scores anything, then as changes arrive.
"""

from __future__ import annotations

import getpass
import logging
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from schemas.control import ServingState
from schemas.topics import CONTROL_TOPIC
from shared.errors import DeliveryError, KafkaUnavailableError
from shared.guarantees import DeliveryLedger
from shared.kafka import (
    OFFSET_BEGINNING,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
    ensure_topic,
    make_consumer,
    make_producer,
)

log = logging.getLogger(__name__)

CONTROL_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    # Compaction may drop superseded records soon; the latest one per key is never dropped.
    "min.cleanable.dirty.ratio": "0.1",
    "segment.ms": "3600000",
}
PUBLISH_TIMEOUT_S = 15.0
# What a partition's offsets answer before the client's metadata has its new topic.
NOT_YET_KNOWN = (
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.LEADER_NOT_AVAILABLE,
)
METADATA_RETRY_S = 0.1


def ensure_control_topic(client_config: Mapping[str, str], topic: str = CONTROL_TOPIC) -> None:
    ensure_topic(client_config, topic, 1, config=CONTROL_TOPIC_CONFIG)


def serving_records(
    aliases_by_model: Mapping[str, Mapping[str, str]], updated_by: str
) -> list[tuple[str, bytes]]:
    """The control records saying which version each alias of each model points at."""
    now = datetime.now(UTC)
    states = [
        ServingState(model=model, aliases=dict(aliases), updated_at=now, updated_by=updated_by)
        for model, aliases in aliases_by_model.items()
    ]
    return [(state.key, state.model_dump_json().encode()) for state in states]


def operator() -> str:
    """user@host of whoever publishes a change, for the record."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def publish_control(
    client_config: Mapping[str, str],
    records: Sequence[tuple[str, bytes]],
    topic: str = CONTROL_TOPIC,
    timeout_s: float = PUBLISH_TIMEOUT_S,
) -> None:
    """Append (key, value) records to the control log and wait until every one is acknowledged by all
    in-sync replicas; DeliveryError otherwise (the fleet's state did not change)."""
    ensure_control_topic(client_config, topic)
    producer = make_producer(client_config, {"linger.ms": 0})
    ledger = DeliveryLedger()
    for key, value in records:
        ledger.expect()
        producer.produce(topic, value, key.encode(), on_delivery=ledger.on_delivery)
    producer.flush(timeout_s)
    problem = ledger.first_problem()
    if problem is not None:
        raise DeliveryError(f"control topic {topic}: {problem}")


class ControlLog:
    """A reader of the whole control log: `read_to_end()` once, then `poll()` for what was appended."""

    def __init__(self, client_config: Mapping[str, str], topic: str = CONTROL_TOPIC) -> None:
        self.topic = topic
        self.client_config = dict(client_config)
        self._producer: Producer | None = None
        ensure_control_topic(client_config, topic)
        # A group id is required by librdkafka even for manual assignment; nothing is ever committed.
        self.consumer = make_consumer(
            client_config,
            f"ridestream-control-reader-{uuid.uuid4().hex[:12]}",
            {"isolation.level": "read_committed", "enable.partition.eof": False},
        )
        self.partition = TopicPartition(topic, 0, OFFSET_BEGINNING)
        self.consumer.assign([self.partition])
        self.state: dict[str, bytes] = {}
        self.next_offset = 0

    def read_to_end(self, timeout_s: float = 30.0) -> dict[str, bytes]:
        """Every record up to the log's current end; the latest value per key."""
        deadline = time.monotonic() + timeout_s
        end = self.end_offset(deadline)
        while self.position() < end:
            if time.monotonic() > deadline:
                raise KafkaUnavailableError(
                    f"control topic {self.topic}: read to offset {self.position()} of {end} in "
                    f"{timeout_s:.0f}s"
                )
            self.poll(0.5)
        return dict(self.state)

    def end_offset(self, deadline: float) -> int:
        while True:
            try:
                _low, end = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, 0), timeout=max(1.0, deadline - time.monotonic())
                )
                return int(end)
            except KafkaException as exc:
                # A topic created a moment ago (by this process, first in a new cluster) is not in the
                # client's metadata yet: ask again until the deadline.
                code = exc.args[0].code() if exc.args else None
                if code not in NOT_YET_KNOWN or time.monotonic() > deadline:
                    raise
                time.sleep(METADATA_RETRY_S)

    def position(self) -> int:
        """The next offset to read (the log's compacted gaps and transaction markers included)."""
        found = self.consumer.position([TopicPartition(self.topic, 0)])[0].offset
        return max(found, self.next_offset)

    def poll(self, timeout_s: float) -> list[tuple[str, bytes | None]]:
        """The records appended since the last call, in log order (a None value deletes the key)."""
        changes: list[tuple[str, bytes | None]] = []
        for message in self.consumer.consume(100, timeout_s):
            if message.error() is not None:
                log.warning("control topic %s: %s", self.topic, message.error())
                continue
            raw_key = message.key()
            offset = message.offset() or 0
            self.next_offset = offset + 1
            if raw_key is None:
                log.warning("control topic %s: record at offset %d has no key; ignored", self.topic, offset)
                continue
            key, value = raw_key.decode(errors="replace"), message.value()
            if value is None:
                self.state.pop(key, None)
            else:
                self.state[key] = value
            changes.append((key, value))
        return changes

    def publish(self, key: str, value: bytes) -> None:
        """Append one record without waiting for it (status reports: the next one supersedes it)."""
        if self._producer is None:
            self._producer = make_producer(self.client_config, {"linger.ms": 100})
        self._producer.produce(self.topic, value, key.encode())
        self._producer.poll(0)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
        self.consumer.close()
