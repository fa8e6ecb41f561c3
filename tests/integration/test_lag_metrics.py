"""A service reports lag only for the partitions it owns: when a rebalance moves a partition to another
instance, the first instance's `ridestream_consumer_lag` series for it goes away, on the real broker.

Left behind, the series would hold its last value for good: the fleet's summed lag would count the partition
twice, and a lag alert would fire on an instance that no longer reads it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry

from consumers.tip.scorer import load_scorer
from shared.kafka import make_producer, make_record_consumer
from shared.metrics import ServiceMetrics
from shared.runner import RunnerConfig, ServiceRunner
from shared.serde import encode
from tests.factories import ride_started

WAIT_S = 60.0


def reported_partitions(registry: CollectorRegistry) -> set[int]:
    return {
        int(sample.labels["partition"])
        for family in registry.collect()
        if family.name == "ridestream_consumer_lag"
        for sample in family.samples
    }


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)  # poll interval of a real condition


@contextmanager
def running_instance(
    bootstrap: str, source: str, target: str, group: str, models: Path
) -> Iterator[CollectorRegistry]:
    """One tip-service instance of `group` in a thread, its metrics in a registry of its own."""
    config = {"bootstrap.servers": bootstrap}
    consumer = make_record_consumer(config, group, {"session.timeout.ms": 6000})
    producer = make_producer(config, {"linger.ms": 1})
    registry = CollectorRegistry()
    runner = ServiceRunner(
        consumer,
        producer,
        load_scorer(models),
        RunnerConfig(service="tip", output_topic=target, dlq_topic=target + ".dlq", lag_interval_s=0.1),
        ServiceMetrics("tip", registry),
    )
    consumer.client.subscribe([source], on_assign=lambda _c, _parts: None, on_revoke=runner.on_revoke)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield registry
    finally:
        stop.set()  # (the run then commits and leaves the group itself)
        thread.join(30)


def test_a_partition_moved_to_another_instance_leaves_no_lag_series_behind(
    kafka_bootstrap: str, topic_factory: Callable[..., str], trained_models: Path
) -> None:
    source, target = topic_factory("lag-in", partitions=2), topic_factory("lag-out", partitions=2)
    producer = make_producer({"bootstrap.servers": kafka_bootstrap})

    published = 0

    def publish(count: int) -> None:
        # (lag is reported from a partition's consumed position, so each owner needs records to consume)
        nonlocal published
        for index in range(published, published + count):
            ride = f"ride-{index}"
            producer.produce(source, encode(ride_started(ride)), ride.encode(), partition=index % 2)
        assert producer.flush(30) == 0
        published += count

    publish(200)
    group = f"lag-{uuid.uuid4().hex[:8]}"

    with running_instance(kafka_bootstrap, source, target, group, trained_models) as first_metrics:
        wait_until(lambda: reported_partitions(first_metrics) == {0, 1}, "the only instance reports both")
        with running_instance(kafka_bootstrap, source, target, group, trained_models) as second_metrics:
            # cooperative-sticky hands the newcomer one partition and revokes only that one from the first;
            # rides keep coming so that whichever it gets has records to consume (the client is the runner
            # thread's alone: asked from here, assignment() blocked behind the rebalance)
            def newcomer_reports_one() -> bool:
                publish(10)
                return len(reported_partitions(second_metrics)) == 1

            wait_until(newcomer_reports_one, "the newcomer reports its one")
            moved = reported_partitions(second_metrics)
            wait_until(
                lambda: reported_partitions(first_metrics) == {0, 1} - moved,
                f"the first instance stops reporting partition {moved}",
            )
            assert len(moved) == 1 and reported_partitions(first_metrics) == {0, 1} - moved
