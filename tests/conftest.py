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


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of the session's broker."""
    explicit = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if explicit:
        yield explicit
    elif docker_engine_answers():
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
