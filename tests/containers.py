"""A containerized broker for the integration tests, through testcontainers (a test dependency, imported
here and nowhere in the shipped packages).

The engine is the one on DOCKER_HOST, or the project's own (`python -m stack.docker up`). Every container
runs on host networking (the engine has no bridge), so the broker listens on free loopback ports chosen
here and advertises exactly those. The image is the project's locally built `ridestream/kafka` when the
engine has it, else the official `apache/kafka`; both turn KAFKA_* variables into server.properties.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from shared.kafka import wait_for_cluster
from stack.broker import KAFKA_VERSION, LOOPBACK, START_TIMEOUT_S, free_ports, new_cluster_id, node_config
from stack.docker import KAFKA_IMAGE, answering_host, image_exists

OFFICIAL_IMAGE = f"apache/kafka:{KAFKA_VERSION}"


def engine_host() -> str | None:
    return answering_host()


def docker_engine_answers() -> bool:
    return engine_host() is not None


@contextlib.contextmanager
def docker_kafka(image: str | None = None, timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """A one-node KRaft broker in a container; yields its bootstrap address."""
    host = engine_host()
    if host is None:
        raise RuntimeError("no Docker engine answers (DOCKER_HOST, or `python -m stack.docker up`)")
    # testcontainers reads the engine from DOCKER_HOST; its reaper (Ryuk) is an image from a registry that
    # cannot be pulled here, and the container is stopped by the context manager anyway.
    os.environ["DOCKER_HOST"] = host
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.core.container import DockerContainer

    chosen = image or (KAFKA_IMAGE if image_exists(host, KAFKA_IMAGE) else OFFICIAL_IMAGE)
    broker_port, controller_port = free_ports(2)
    config = node_config(0, [(broker_port, controller_port)], "/tmp/kraft-combined-logs")
    container = (
        DockerContainer(chosen).with_kwargs(network_mode="host").with_env("CLUSTER_ID", new_cluster_id())
    )
    for key, value in config.items():
        container = container.with_env("KAFKA_" + key.upper().replace(".", "_"), value)
    with container:
        bootstrap = f"{LOOPBACK}:{broker_port}"
        wait_for_cluster({"bootstrap.servers": bootstrap}, timeout_s)
        yield bootstrap
