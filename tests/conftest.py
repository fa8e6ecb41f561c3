"""The Kafka every integration test talks to: a real broker, chosen once per session.

KAFKA_BOOTSTRAP_SERVERS (an existing cluster) → a testcontainers apache/kafka broker when a Docker engine
answers → a local broker JVM started from the Maven Central jars (stack/broker.py). Never a mock or a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from shared.kafka import ensure_topic
from stack.broker import LocalKafka
from tests.containers import docker_engine_answers, docker_kafka

BROKER_CHOICES = ("explicit", "container", "local")


def broker_choice() -> str:
    """Which broker this session uses, by the preference order (see the module docstring)."""
    wanted = os.environ.get("RIDESTREAM_TEST_BROKER", "").strip().lower()
    if wanted and wanted not in BROKER_CHOICES[1:]:
        raise pytest.UsageError(f"RIDESTREAM_TEST_BROKER={wanted!r}: use 'container' or 'local'")
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and not wanted:
        return "explicit"
    if wanted:
        return wanted
    return "container" if docker_engine_answers() else "local"


def pytest_report_header(config: pytest.Config) -> str:
    choice = broker_choice()
    detail = {
        "explicit": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", ""),
        "container": "testcontainers",
        "local": "a local JVM from the Maven Central jars",
    }[choice]
    return f"kafka broker: {choice} ({detail})"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of the session's broker."""
    choice = broker_choice()
    if choice == "explicit":
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    elif choice == "container":
        with docker_kafka() as bootstrap:
            yield bootstrap
    else:
        with LocalKafka.start(nodes=1) as kafka:
            yield kafka.bootstrap_servers


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Callable[..., str]:
    """`topic_factory(prefix, partitions=6)` creates a topic no other test uses and returns its name."""

    def create(prefix: str, partitions: int = 6) -> str:
        topic = f"{prefix}-{uuid.uuid4().hex[:12]}"
        # replication_factor=-1: the broker's default, so the same test fits a 1-node or a 3-node cluster.
        ensure_topic({"bootstrap.servers": kafka_bootstrap}, topic, partitions, replication_factor=-1)
        return topic

    return create
