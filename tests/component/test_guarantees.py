"""Exactly-once commit order against in-memory clients: outputs and offsets commit together or not at all.

The real proof is the fault suite against real brokers (tests/integration/test_faults.py); these pin the
order of calls that the proof depends on.
"""

from __future__ import annotations

import threading

from shared.guarantees import ExactlyOnce
from shared.runner import RunnerConfig, ServiceRunner
from shared.serde import encode
from tests.component.fakes import EchoScorer, FakeConsumer, FakeMessage, FakeTransactionalProducer
from tests.factories import ride_started

CONFIG = RunnerConfig(service="tip", output_topic="predictions.tip", dlq_topic="dlq.tip", idle_timeout_s=0.01)


def batch(first_offset: int, size: int) -> list[FakeMessage]:
    return [FakeMessage(encode(ride_started(f"r{first_offset + i}")), b"k", _offset=first_offset + i) for i in range(size)]


def eos_runner(consumer: FakeConsumer, producer: FakeTransactionalProducer, max_messages: int) -> ServiceRunner:
    producer.consumer = consumer
    # A long interval: only the message count (or close) ends a transaction, so the test controls it.
    committer = ExactlyOnce(consumer, producer, 5.0, max_messages=max_messages, max_interval_s=3600)
    return ServiceRunner(consumer, producer, EchoScorer(), CONFIG, committer=committer)


def test_outputs_and_offsets_commit_in_one_transaction_per_max_messages() -> None:
    consumer = FakeConsumer([batch(0, 3), batch(3, 3), batch(6, 2)])
    producer = FakeTransactionalProducer()
    eos_runner(consumer, producer, max_messages=6).run(threading.Event())

    assert producer.transactions == ["init", "begin", "commit", "begin", "commit"]  # 6 records, then 2 at close
    assert [[(tp.partition, tp.offset) for tp in offsets] for offsets in consumer.commits] == [[(0, 6)], [(0, 8)]]
    assert sorted(p.key for p in producer.produced) == sorted(f"r{i}".encode() for i in range(8))


def test_an_abortable_commit_error_hides_the_outputs_and_rewinds_to_the_committed_offsets() -> None:
    consumer = FakeConsumer([batch(0, 4), batch(4, 4)])
    consumer.group_offsets[("rides.events", 0)] = 0
    producer = FakeTransactionalProducer(abort_on_commit=True)
    eos_runner(consumer, producer, max_messages=4).run(threading.Event())

    assert producer.transactions[:4] == ["init", "begin", "abort", "begin"]
    assert [(tp.partition, tp.offset) for tp in consumer.seeks] == [(0, 0)]  # replay from the last commit
    # The aborted batch's predictions never became visible; the next transaction's did.
    assert sorted(p.key for p in producer.produced) == sorted(f"r{i}".encode() for i in range(4, 8))
    assert consumer.commits == [[consumer.commits[0][0]]] and consumer.commits[0][0].offset == 8


def test_revoked_partitions_get_the_open_transaction_committed_first() -> None:
    consumer = FakeConsumer([])
    producer = FakeTransactionalProducer()
    runner = eos_runner(consumer, producer, max_messages=1000)
    runner.process(batch(0, 5))
    assert producer.produced == [] and producer.in_transaction  # not yet due

    runner.on_revoke(consumer, [])
    assert producer.transactions[-1] == "commit" and len(producer.produced) == 5
    assert consumer.commits[-1][0].offset == 5
