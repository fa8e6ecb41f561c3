"""The local Apache Kafka broker (stack/broker.py): the detached CLI, a 3-node cluster surviving a killed
node,
and the one-line errors a person gets when Java, Maven or the broker itself is missing or broken."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import psutil
import pytest

from shared.errors import BrokerError
from shared.kafka import KafkaError, Message, cluster_node_count, ensure_topic, make_producer, partition_count
from stack.broker import LocalKafka, free_ports, running_bootstrap_servers
from tests.integration.topics import drain


def cli(*args: str, cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real `ridestream` CLI in a subprocess, run from `cwd` as a person would."""
    return subprocess.run(
        [sys.executable, "-m", "stack.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=dict(env if env is not None else os.environ),
    )


def live_processes_mentioning(text: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line mentions `text` (a data directory)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(
            text in arg for arg in process.info["cmdline"] or ()
        ):
            found.append(process.pid)
    return found


def produce_all(config: Mapping[str, str], topic: str, values: Iterable[int]) -> None:
    """Produce with acks=all (make_producer) and fail on any record the cluster did not acknowledge."""
    errors: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(error)

    producer = make_producer(config)
    for value in values:
        producer.produce(topic, str(value).encode(), key=str(value).encode(), on_delivery=on_delivery)
    assert producer.flush(60) == 0, "records still unacknowledged after 60 s"
    assert errors == []


def test_the_session_broker_serves_the_topics_of_topic_factory(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    topic = topic_factory("fixture-check", partitions=3)
    assert topic.startswith("fixture-check-") and topic != topic_factory("fixture-check")
    assert partition_count(config, topic) == 3
    produce_all(config, topic, range(10))
    assert len(drain(config, [topic], expected=10, timeout_s=60)) == 10


def test_broker_up_status_down_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir = tmp_path / "state"
    env = {**os.environ, "RIDESTREAM_STATE_DIR": str(state_dir)}

    up = cli("broker", "up", cwd=tmp_path, env=env)
    assert up.returncode == 0, up.stderr
    bootstrap = up.stdout.strip()
    assert re.fullmatch(r"127\.0\.0\.1:\d+", bootstrap), up.stdout
    state = json.loads((state_dir / "broker.json").read_text())
    data_dir = state["data_dir"]
    try:
        status = cli("broker", "status", cwd=tmp_path, env=env)
        assert status.returncode == 0 and bootstrap in status.stdout
        monkeypatch.setenv("RIDESTREAM_STATE_DIR", str(state_dir))
        assert running_bootstrap_servers() == bootstrap  # what KafkaSettings falls back to

        config = {"bootstrap.servers": bootstrap}
        ensure_topic(config, "round-trip", 1)
        produce_all(config, "round-trip", [42])
        records = drain(config, ["round-trip"], expected=1, timeout_s=60)
        assert [(r.key, r.value) for r in records] == [(b"42", b"42")]
    finally:
        down = cli("broker", "down", cwd=tmp_path, env=env)
    assert down.returncode == 0, down.stderr
    assert live_processes_mentioning(data_dir) == []
    assert not Path(data_dir).exists()
    assert not (state_dir / "broker.json").exists()
    after = cli("broker", "status", cwd=tmp_path, env=env)
    assert (after.returncode, after.stdout.strip()) == (1, "not running")


@pytest.mark.slow  # three broker JVMs of its own: `make test-all`
def test_a_three_node_cluster_keeps_taking_acks_all_writes_while_one_node_is_killed() -> None:
    with LocalKafka.start(nodes=3) as kafka:
        config = {"bootstrap.servers": kafka.bootstrap_servers}
        assert cluster_node_count(config, 10) == 3
        ensure_topic(config, "replicated", partitions=3, replication_factor=3)
        produce_all(config, "replicated", range(100))

        kafka.kill_node(1)  # SIGKILL: no controlled shutdown, leaders on node 1 just vanish
        assert not kafka.node_alive(1)
        produce_all(config, "replicated", range(100, 200))  # min.insync.replicas=2: two copies suffice

        kafka.start_node(1)
        assert cluster_node_count({"bootstrap.servers": kafka.node_address(1)}, 10) == 3
        records = drain(config, ["replicated"], expected=200, timeout_s=60)
        assert sorted(int(r.value or b"") for r in records) == list(range(200))


def test_a_broker_that_cannot_start_reports_its_log_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy, controller = taken.getsockname()[1], free_ports(1)[0]
        conflict = {  # the broker port is already bound by someone else
            "listeners": f"PLAINTEXT://127.0.0.1:{busy},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{busy}",
            "controller.quorum.voters": f"0@127.0.0.1:{controller}",
        }
        with pytest.raises(BrokerError) as failure:
            LocalKafka.start(nodes=1, data_dir=tmp_path / "data", config_overrides=conflict)
    message = str(failure.value)
    assert "exited during start" in message
    assert "Address already in use" in message
    assert live_processes_mentioning(str(tmp_path / "data")) == []
    assert not (tmp_path / "data").exists()


def _env_without_java(tmp_path: Path, java_home: str | None) -> dict[str, str]:
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(empty)
    if java_home is not None:
        env["JAVA_HOME"] = java_home
    return env


@pytest.mark.parametrize("java_home", [None, "/nonexistent/jdk"], ids=["no-java-on-path", "bad-java-home"])
def test_no_java_is_one_clear_line(tmp_path: Path, java_home: str | None) -> None:
    result = cli("broker", "up", cwd=tmp_path, env=_env_without_java(tmp_path, java_home))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "install a JDK 17+, e.g. apt-get install openjdk-17-jre-headless" in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_a_java_older_than_17_is_refused(tmp_path: Path) -> None:
    java = tmp_path / "jdk11" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    java.chmod(0o755)
    result = cli("broker", "up", cwd=tmp_path, env=_env_without_java(tmp_path, str(tmp_path / "jdk11")))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "is Java 11" in result.stderr and "JDK 17+" in result.stderr


def test_missing_maven_is_one_clear_line(tmp_path: Path) -> None:
    real_java = shutil.which("java")
    assert real_java is not None, "this test needs the JDK the broker tests use"
    env = _env_without_java(tmp_path, None)
    (tmp_path / "empty-bin" / "java").symlink_to(os.path.realpath(real_java))
    env["RIDESTREAM_CACHE"] = str(tmp_path / "cache")  # nothing cached: a fetch is needed
    result = cli("broker", "fetch", cwd=tmp_path, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Maven (`mvn`) is needed" in result.stderr and "apt-get install maven" in result.stderr
