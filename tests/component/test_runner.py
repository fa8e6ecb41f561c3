"""The shared run loop against in-memory clients: ordering of produce/deliver/commit, and dead letters."""

from __future__ import annotations

import threading

import pytest

from shared.errors import DeliveryError
from shared.guarantees import AtLeastOnce
from shared.records import InputRecord
from shared.runner import RunnerConfig, ServiceRunner
from shared.serde import encode
from tests.component.fakes import EchoScorer, FakeConsumer, FakeProducer, record
from tests.factories import ride_completed, ride_started

CONFIG = RunnerConfig(
    service="tip", output_topic="predictions.tip", dlq_topic="dlq.tip", max_messages=None, idle_timeout_s=0.01
)


def message(payload: bytes | None, offset: int, partition: int = 0) -> InputRecord:
    return record(payload, offset=offset, partition=partition)


def run(consumer: FakeConsumer, producer: FakeProducer, scorer: EchoScorer | None = None) -> ServiceRunner:
    runner = ServiceRunner(consumer, producer, scorer or EchoScorer(), CONFIG)
    runner.run(threading.Event())
    return runner


def test_valid_events_are_scored_in_one_call_and_bad_ones_dead_lettered_in_the_same_batch() -> None:
    batch = [
        message(encode(ride_started("a")), 0),
        message(b"\x00garbage", 1),
        message(encode(ride_started("b")), 2),
        message(encode(ride_completed("a")), 3),
        message(encode(ride_started("nan-1")), 4),
    ]
    consumer, producer, scorer = FakeConsumer([batch]), FakeProducer(), EchoScorer()
    runner = run(consumer, producer, scorer)

    outputs = [p for p in producer.produced if p.topic == "predictions.tip"]
    dead = [p for p in producer.produced if p.topic == "dlq.tip"]
    assert scorer.calls == 1
    assert sorted(p.key for p in outputs) == [b"a", b"b"]
    assert {dict(d.headers)["ridestream.reason"] for d in dead} == {b"undecodable", b"unscoreable"}
    assert dead[0].value == b"\x00garbage" and dict(dead[0].headers)["ridestream.source.offset"] == b"1"
    assert runner.stats.ignored == 1  # ride_completed is not scored by tip, and not dead-lettered
    assert [(tp.partition, tp.offset) for tp in consumer.commits[0]] == [(0, 5)]
    assert consumer.closed


def test_commits_one_past_the_highest_offset_of_each_partition() -> None:
    batch = [
        message(encode(ride_started("a")), 7, 0),
        message(encode(ride_started("b")), 3, 1),
        message(encode(ride_started("c")), 8, 0),
    ]
    consumer = FakeConsumer([batch])
    run(consumer, FakeProducer())
    assert sorted((tp.partition, tp.offset) for tp in consumer.commits[0]) == [(0, 9), (1, 4)]


def test_a_failed_delivery_stops_the_commit() -> None:
    consumer = FakeConsumer([[message(encode(ride_started("a")), 0)]])
    with pytest.raises(DeliveryError, match="not committed"):
        run(consumer, FakeProducer(fail_topic="predictions.tip"))
    assert consumer.commits == []
    assert consumer.closed


def test_a_failed_dead_letter_delivery_also_stops_the_commit() -> None:
    consumer = FakeConsumer([[message(b"not json", 0)]])
    with pytest.raises(DeliveryError):
        run(consumer, FakeProducer(fail_topic="dlq.tip"))
    assert consumer.commits == []


def test_oversized_records_are_dead_lettered_without_decoding() -> None:
    consumer, producer = FakeConsumer([[message(b"{" + b" " * 70_000 + b"}", 0)]]), FakeProducer()
    run(consumer, producer)
    assert dict(producer.produced[0].headers)["ridestream.reason"] == b"oversized"


def test_a_commit_refused_after_a_rebalance_is_not_a_crash_the_new_owner_replays_the_batch() -> None:
    from shared.kafka import KafkaError, KafkaException

    class RebalancedConsumer(FakeConsumer):
        def commit(self, offsets, asynchronous=True):  # type: ignore[no-untyped-def]
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION, "generation moved on"))

    consumer = RebalancedConsumer(
        [[message(encode(ride_started("a")), 0)], [message(encode(ride_started("b")), 1)]]
    )
    producer = FakeProducer()
    run(consumer, producer)
    assert sorted(p.key for p in producer.produced) == [b"a", b"b"]  # both batches scored and delivered
    assert consumer.closed


def test_a_commit_refused_while_the_coordinator_loads_is_retried_at_the_next_commit_not_a_crash() -> None:
    """After a broker restart the group coordinator answers COORDINATOR_LOAD_IN_PROGRESS for a while (it
    ended a service in the fault suite's broker bounce): the offsets are committed by the next commit."""
    from shared.kafka import KafkaError, KafkaException

    class LoadingCoordinator(FakeConsumer):
        refusals = 0

        def commit(self, offsets, asynchronous=True):  # type: ignore[no-untyped-def]
            if self.refusals == 0:
                self.refusals += 1
                raise KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, "loading"))
            super().commit(offsets, asynchronous)

    consumer = LoadingCoordinator(
        [
            [message(encode(ride_started("a")), 0, partition=0)],
            [message(encode(ride_started("b")), 0, partition=1)],
        ]
    )
    producer = FakeProducer()
    # A commit after every batch: the first is refused, the second must carry the first's offset too.
    committer = AtLeastOnce(consumer, producer, "tip", 5.0, max_messages=1, max_interval_s=3600)
    ServiceRunner(consumer, producer, EchoScorer(), CONFIG, committer=committer).run(threading.Event())
    assert consumer.refusals == 1 and consumer.closed
    assert sorted(p.key for p in producer.produced) == [b"a", b"b"]
    assert sorted((tp.partition, tp.offset) for tp in consumer.commits[0]) == [(0, 1), (1, 1)]


def test_a_commit_error_that_no_retry_can_fix_still_ends_the_run() -> None:
    from shared.kafka import KafkaError, KafkaException

    class Unauthorized(FakeConsumer):
        def commit(self, offsets, asynchronous=True):  # type: ignore[no-untyped-def]
            raise KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "no ACL"))

    with pytest.raises(Exception, match="(?i)authori"):
        run(Unauthorized([[message(encode(ride_started("a")), 0)]]), FakeProducer())
