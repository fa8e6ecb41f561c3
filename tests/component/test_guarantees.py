"""Commit order against in-memory clients: exactly-once outputs and offsets commit together or not at all;
at-least-once offsets are committed per interval, never before every output up to them is delivered.

The real proof is the fault suite against real brokers (tests/integration/test_faults.py); these pin the
order of calls that the proof depends on.
"""

from __future__ import annotations

import threading

import pytest

from shared.errors import DeliveryError
from shared.guarantees import AtLeastOnce, ExactlyOnce
from shared.records import InputRecord
from shared.runner import RunnerConfig, ServiceRunner
from shared.serde import encode
from tests.component.fakes import (
    EchoScorer,
    FakeConsumer,
    FakeProducer,
    FakeTransactionalProducer,
    record,
)
from tests.factories import ride_started

CONFIG = RunnerConfig(service="tip", output_topic="predictions.tip", dlq_topic="dlq.tip", idle_timeout_s=0.01)


def batch(first_offset: int, size: int) -> list[InputRecord]:
    return [
        record(encode(ride_started(f"r{first_offset + i}")), offset=first_offset + i) for i in range(size)
    ]


def eos_runner(
    consumer: FakeConsumer, producer: FakeTransactionalProducer, max_messages: int
) -> ServiceRunner:
    producer.consumer = consumer
    # A long interval: only the message count (or close) ends a transaction, so the test controls it.
    committer = ExactlyOnce(consumer, producer, "tip", 5.0, max_messages=max_messages, max_interval_s=3600)
    return ServiceRunner(consumer, producer, EchoScorer(), CONFIG, committer=committer)


def test_outputs_and_offsets_commit_in_one_transaction_per_max_messages() -> None:
    consumer = FakeConsumer([batch(0, 3), batch(3, 3), batch(6, 2)])
    producer = FakeTransactionalProducer()
    eos_runner(consumer, producer, max_messages=6).run(threading.Event())

    assert producer.transactions == [
        "init",
        "begin",
        "commit",
        "begin",
        "commit",
    ]  # 6 records, then 2 at close
    assert [[(tp.partition, tp.offset) for tp in offsets] for offsets in consumer.commits] == [
        [(0, 6)],
        [(0, 8)],
    ]
    assert sorted(p.key for p in producer.produced) == sorted(f"r{i}".encode() for i in range(8))


def test_an_abortable_commit_error_hides_the_outputs_and_replays_the_aborted_inputs_once() -> None:
    consumer = FakeConsumer([batch(0, 4), batch(4, 4)])
    consumer.group_offsets[("rides.events", 0)] = 0
    producer = FakeTransactionalProducer(abort_on_commit=True)
    eos_runner(consumer, producer, max_messages=4).run(threading.Event())

    assert producer.transactions[:4] == ["init", "begin", "abort", "begin"]
    assert [(tp.partition, tp.offset) for tp in consumer.seeks] == [
        (0, 0)
    ]  # replay from the transaction's start
    # The aborted transaction's predictions never became visible; its inputs were scored again, so every
    # ride's prediction is visible exactly once.
    assert sorted(p.key for p in producer.produced) == sorted(f"r{i}".encode() for i in range(8))
    assert [[(tp.partition, tp.offset) for tp in offsets] for offsets in consumer.commits] == [
        [(0, 4)],
        [(0, 8)],
    ]


def test_an_aborted_first_transaction_of_a_new_group_rewinds_to_its_first_offset() -> None:
    """No committed offset yet: aborting does not move the fetch position, so only a seek to where the
    transaction started keeps its inputs (librdkafka examples/transactions.c rewinds to the beginning)."""
    consumer = FakeConsumer(
        [batch(10, 4), batch(14, 4)]
    )  # a partition whose log starts at 10, never committed
    producer = FakeTransactionalProducer(abort_on_commit=True)
    eos_runner(consumer, producer, max_messages=4).run(threading.Event())

    assert [(tp.partition, tp.offset) for tp in consumer.seeks] == [(0, 10)]
    assert sorted(p.key for p in producer.produced) == sorted(f"r{i}".encode() for i in range(10, 18))
    assert consumer.commits[-1][0].offset == 18


def test_metrics_count_outputs_when_their_transaction_commits_so_a_replay_counts_once() -> None:
    consumer = FakeConsumer([batch(0, 4), batch(4, 4)])
    producer = FakeTransactionalProducer(abort_on_commit=True)
    runner = eos_runner(consumer, producer, max_messages=4)
    runner.run(threading.Event())

    counted = runner.metrics.registry.get_sample_value("ridestream_predictions_out_total", {"service": "tip"})
    assert counted == 8 and runner.stats.predictions == 12  # 4 scored twice (aborted, replayed), counted once


def test_revoked_partitions_get_the_open_transaction_committed_first() -> None:
    consumer = FakeConsumer([])
    producer = FakeTransactionalProducer()
    runner = eos_runner(consumer, producer, max_messages=1000)
    runner.process(batch(0, 5))
    assert producer.produced == [] and producer.in_transaction  # not yet due

    runner.on_revoke(consumer, [])
    assert producer.transactions[-1] == "commit" and len(producer.produced) == 5
    assert consumer.commits[-1][0].offset == 5


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def alo_runner(
    consumer: FakeConsumer, producer: FakeProducer, max_messages: int, clock: Clock | None = None
) -> ServiceRunner:
    committer = AtLeastOnce(
        consumer, producer, "tip", 5.0, max_messages=max_messages, max_interval_s=1.0, clock=clock or Clock()
    )
    return ServiceRunner(consumer, producer, EchoScorer(), CONFIG, committer=committer)


def test_at_least_once_commits_per_interval_only_after_flushing_every_output_before_the_offsets() -> None:
    consumer, producer = FakeConsumer([batch(0, 3), batch(3, 3), batch(6, 2)]), FakeProducer()
    runner = alo_runner(consumer, producer, max_messages=6)
    runner.process(batch(0, 3))
    assert consumer.commits == [] and producer.produced == []  # outputs in flight, nothing committed yet

    runner.process(batch(3, 3))  # 6 inputs: due
    assert [[(tp.partition, tp.offset) for tp in offsets] for offsets in consumer.commits] == [[(0, 6)]]
    assert sorted(p.key for p in producer.produced) == sorted(f"r{i}".encode() for i in range(6))

    runner.on_revoke(consumer, [])  # nothing new processed: nothing to commit
    assert len(consumer.commits) == 1


def test_at_least_once_commits_a_quiet_inputs_offsets_when_the_interval_runs_out() -> None:
    clock = Clock()
    consumer, producer = FakeConsumer([]), FakeProducer()
    runner = alo_runner(consumer, producer, max_messages=1000, clock=clock)
    runner.process(batch(0, 2))
    runner.committer.tick()
    assert consumer.commits == []
    clock.now = 1.0
    runner.committer.tick()
    assert [(tp.partition, tp.offset) for tp in consumer.commits[0]] == [(0, 2)] and len(
        producer.produced
    ) == 2


def test_at_least_once_commits_what_it_processed_before_partitions_are_revoked() -> None:
    consumer, producer = FakeConsumer([]), FakeProducer()
    runner = alo_runner(consumer, producer, max_messages=1000)
    runner.process(batch(0, 4))
    runner.on_revoke(consumer, [])
    assert [(tp.partition, tp.offset) for tp in consumer.commits[0]] == [(0, 4)] and len(
        producer.produced
    ) == 4


def test_an_undelivered_output_from_an_earlier_batch_blocks_the_whole_interval_commit() -> None:
    consumer, producer = FakeConsumer([]), FakeProducer(fail_topic="dlq.tip")
    runner = alo_runner(consumer, producer, max_messages=4)
    runner.process([record(b"not json", offset=0)])  # a dead letter that will not be delivered
    with pytest.raises(DeliveryError, match="offsets not committed"):
        runner.process(batch(1, 3))
    assert consumer.commits == []


class FailingScorer(EchoScorer):
    """Scores the first batch, then fails: a bug or a broken model in the middle of a run."""

    def score(self, events, produced_at):  # type: ignore[no-untyped-def]
        if self.calls >= 1:
            raise RuntimeError("model exploded")
        return super().score(events, produced_at)


def test_a_failed_run_aborts_the_open_transaction_instead_of_committing_part_of_it() -> None:
    consumer, producer = FakeConsumer([batch(0, 3), batch(3, 3)]), FakeTransactionalProducer()
    producer.consumer = consumer
    committer = ExactlyOnce(consumer, producer, "tip", 5.0, max_messages=1000, max_interval_s=3600)
    runner = ServiceRunner(consumer, producer, FailingScorer(), CONFIG, committer=committer)
    with pytest.raises(RuntimeError, match="model exploded"):
        runner.run(threading.Event())
    assert producer.transactions == ["init", "begin", "abort"]
    assert producer.produced == [] and consumer.commits == [] and consumer.closed


class CountingProducer(FakeProducer):
    flushes = 0

    def flush(self, timeout: float = -1) -> int:
        self.flushes += 1
        return super().flush(timeout)


def test_after_an_undelivered_output_shutdown_neither_flushes_again_nor_commits() -> None:
    consumer, producer = FakeConsumer([batch(0, 2)]), CountingProducer(fail_topic="predictions.tip")
    runner = alo_runner(consumer, producer, max_messages=2)
    with pytest.raises(DeliveryError):
        runner.run(threading.Event())
    runner.on_revoke(consumer, [])  # what leaving the group triggers
    assert producer.flushes == 1 and consumer.commits == [] and consumer.closed


def test_a_commit_refused_by_a_rebalance_keeps_the_positions_of_partitions_still_owned() -> None:
    from shared.kafka import KafkaError, KafkaException

    class OnceRebalancedConsumer(FakeConsumer):
        refused = False

        def commit(self, offsets, asynchronous=True):  # type: ignore[no-untyped-def]
            if not self.refused:
                self.refused = True
                raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS, "rebalancing"))
            super().commit(offsets, asynchronous)

    consumer, producer = OnceRebalancedConsumer([]), FakeProducer()
    runner = alo_runner(consumer, producer, max_messages=3)
    runner.process(batch(0, 3))  # due, refused: partition 0 is still assigned to this instance
    assert consumer.commits == []
    runner.process(batch(3, 1))
    runner.close()
    assert [[(tp.partition, tp.offset) for tp in offsets] for offsets in consumer.commits] == [[(0, 4)]]
