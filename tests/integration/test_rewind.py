"""Exactly-once after a genuine abortable error in the first transaction of a new group, on the real broker.

A commit that races a rebalance carries the group generation it read before the rebalance completed; the
broker refuses it (ILLEGAL_GENERATION, an abortable error in librdkafka) and the transaction aborts, while
the instance keeps a partition it had read without any committed offset (cooperative-sticky keeps what it
can). Aborting does not move the fetch position, so unless every partition of the aborted transaction is
rewound to where that transaction started, its inputs are skipped. The race is made certain by handing the
first commit the group metadata read before the second instance joined; the refusal is the broker's.
The proof is the Kafka one: a read_committed reader sees every input ride exactly once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consumers.tip.scorer import load_scorer
from shared.guarantees import ExactlyOnce
from shared.kafka import (
    KafkaException,
    KafkaRecordConsumer,
    TopicPartition,
    make_producer,
    make_record_consumer,
)
from shared.records import InputRecord
from shared.runner import RunnerConfig, RunStats, ServiceRunner
from shared.serde import encode
from tests.factories import ride_started
from tests.integration.topics import drain

RIDES = 400
WAIT_S = 90.0


class StaleGenerationOnce(KafkaRecordConsumer):
    """A real consumer whose group metadata, once frozen, is handed to the next commit only: that commit then
    carries the generation from before the rebalance, as a commit racing the rebalance would. The metadata
    is read on the runner's own thread (the client serialises calls), when the test asks for it."""

    def __init__(self, consumer: KafkaRecordConsumer) -> None:
        super().__init__(consumer.client)
        self.freeze_asked = threading.Event()
        self.frozen_ready = threading.Event()
        self.frozen: Any = None

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[InputRecord]:
        if self.freeze_asked.is_set() and not self.frozen_ready.is_set():
            self.frozen = self.client.consumer_group_metadata()
            self.frozen_ready.set()
        return super().consume(num_messages, timeout)

    def consumer_group_metadata(self) -> Any:
        metadata, self.frozen = self.frozen, None
        return metadata if metadata is not None else self.client.consumer_group_metadata()


class RecordingProducer:
    """A real transactional producer that remembers the errors of its offset commits."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.errors: list[KafkaException] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.producer, name)

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], metadata: Any, timeout: float = -1
    ) -> None:
        try:
            self.producer.send_offsets_to_transaction(positions, metadata, timeout)
        except KafkaException as exc:
            self.errors.append(exc)
            raise


def instance(
    bootstrap: str,
    source: str,
    target: str,
    group: str,
    name: str,
    models: Path,
) -> tuple[ServiceRunner, StaleGenerationOnce, RecordingProducer]:
    config = {"bootstrap.servers": bootstrap}
    consumer = StaleGenerationOnce(make_record_consumer(config, group, {"session.timeout.ms": 6000}))
    producer = RecordingProducer(
        make_producer(config, {"transactional.id": f"{group}.{name}", "linger.ms": 1})
    )
    runner_config = RunnerConfig(
        service="tip", output_topic=target, dlq_topic=target + ".dlq", batch_size=100, idle_timeout_s=8.0
    )
    # No interval commit: the first transaction stays open until the rebalance's revoke commits it.
    committer = ExactlyOnce(consumer, producer, "tip", 10.0, max_messages=1_000_000, max_interval_s=3600)
    runner = ServiceRunner(consumer, producer, load_scorer(models), runner_config, committer=committer)
    consumer.client.subscribe([source], on_assign=lambda _c, _parts: None, on_revoke=runner.on_revoke)
    return runner, consumer, producer


def run_in_thread(runner: ServiceRunner, results: dict[str, RunStats], name: str) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: results.__setitem__(name, runner.run(threading.Event())), name=name
    )
    thread.start()
    return thread


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)  # poll interval of a real condition


def test_an_aborted_first_transaction_of_a_new_group_loses_no_input_and_duplicates_none(
    kafka_bootstrap: str, topic_factory: Callable[..., str], trained_models: Path
) -> None:
    source, target = topic_factory("rewind-in", partitions=2), topic_factory("rewind-out", partitions=2)
    config = {"bootstrap.servers": kafka_bootstrap}
    producer = make_producer(config)

    def publish(first: int, count: int) -> None:
        for index in range(first, first + count):
            ride = f"ride-{index}"
            producer.produce(source, encode(ride_started(ride)), ride.encode(), partition=index % 2)
        assert producer.flush(30) == 0

    publish(0, RIDES)
    group = f"rewind-{uuid.uuid4().hex[:8]}"  # a new group: no committed offset anywhere
    results: dict[str, RunStats] = {}

    first, first_consumer, first_producer = instance(
        kafka_bootstrap, source, target, group, "a", trained_models
    )
    threads = [run_in_thread(first, results, "a")]
    wait_until(lambda: first.stats.consumed >= RIDES, "the first instance has read every ride")
    first_consumer.freeze_asked.set()  # the generation of the group before the second instance joins
    assert first_consumer.frozen_ready.wait(WAIT_S)

    second, _, _ = instance(kafka_bootstrap, source, target, group, "b", trained_models)
    threads.append(run_in_thread(second, results, "b"))
    wait_until(lambda: bool(first_producer.errors), "the stale commit was refused")
    # More rides after the abort: the partition the first instance kept is committed past them, so an
    # aborted input that was not replayed would never be scored by anyone.
    publish(RIDES, RIDES)
    for thread in threads:
        thread.join(180)
    assert set(results) == {"a", "b"}, "an instance did not finish"

    refused = [exc.args[0] for exc in first_producer.errors]
    assert refused and refused[0].txn_requires_abort(), "the stale commit was not refused as abortable"
    assert refused[0].code() == refused[0].ILLEGAL_GENERATION or "generation" in str(refused[0]).lower()
    outputs = drain(config, [target], expected=2 * RIDES, quiet_s=5.0, isolation="read_committed")
    rides = Counter(json.loads(r.value or b"{}")["ride_id"] for r in outputs)
    missing = sorted({f"ride-{i}" for i in range(2 * RIDES)} - set(rides))
    assert missing == [], f"{len(missing)} inputs lost, e.g. {missing[:3]}"
    assert max(rides.values()) == 1, "duplicates in the read_committed view"
