"""A containerized broker for the integration tests: testcontainers is a test dependency, so it is imported
here and nowhere in the shipped packages."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from shared.kafka import wait_for_cluster
from stack.broker import KAFKA_VERSION, LOOPBACK, START_TIMEOUT_S, free_ports, new_cluster_id, node_config


def docker_engine_answers(timeout_s: float = 2.0) -> bool:
    """True when a Docker engine answers a ping quickly (docker SDK from the test extras)."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=max(1, math.ceil(timeout_s)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - no SDK, no socket, no permission, no answer: all mean "use the local JVM broker"
        return False


@contextlib.contextmanager
def docker_kafka(
    image: str = f"apache/kafka:{KAFKA_VERSION}", timeout_s: float = START_TIMEOUT_S
) -> Iterator[str]:
    """A one-node KRaft broker in the official apache/kafka image via testcontainers; yields its address.

    testcontainers' KafkaContainer scripts Confluent's image, so this drives the official one directly: the
    image turns KAFKA_* variables into server.properties. The advertised port must be known before start,
    hence the same fixed free port inside and outside the container (a local Docker engine is assumed).
    """
    from testcontainers.core.container import DockerContainer

    port = free_ports(1)[0]
    config = node_config(0, [(port, 9093)], "/tmp/kraft-combined-logs", bind_host="0.0.0.0")
    container = DockerContainer(image).with_bind_ports(port, port).with_env("CLUSTER_ID", new_cluster_id())
    for key, value in config.items():
        container = container.with_env("KAFKA_" + key.upper().replace(".", "_"), value)
    with container:
        bootstrap = f"{LOOPBACK}:{port}"
        wait_for_cluster({"bootstrap.servers": bootstrap}, timeout_s)
        yield bootstrap
