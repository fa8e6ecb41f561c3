"""The scoring services as real processes against the real broker."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from consumers.registry import SERVICE_NAMES as SERVICES
from shared.kafka import make_producer
from shared.serde import encode
from stack.fleet import ServiceProcess, running_fleet, start_service, stop_service, wait_ready
from tests.factories import ride_started
from tests.integration.topics import drain, ridestream

FleetTopics = dict[str, dict[str, str]]


@pytest.fixture
def fleet_topics(topic_factory: Callable[..., str]) -> FleetTopics:
    """Per service: its own input, output and DLQ topics and group, unique to this test."""
    rides = topic_factory("rides")
    suffix = uuid.uuid4().hex[:6]
    return {
        service: {
            "INPUT_TOPIC": rides,
            "OUTPUT_TOPIC": topic_factory(f"predictions-{service}"),
            "DLQ_TOPIC": topic_factory(f"dlq-{service}"),
            "GROUP_ID": f"test-{service}-{suffix}",
        }
        for service in SERVICES
    }


def produce_rides(bootstrap: str, topic: str, rides: int, tmp_path: Path, *extra: str) -> dict[str, int]:
    report = tmp_path / f"produce-{uuid.uuid4().hex[:6]}.json"
    result = ridestream(
        "produce",
        "--rides",
        str(rides),
        "--topic",
        topic,
        "--progress-interval",
        "180",
        "--bootstrap-servers",
        bootstrap,
        "--report",
        str(report),
        *extra,
    )
    assert result.returncode == 0, result.stderr
    published: dict[str, int] = json.loads(report.read_text())["published"]
    return published


def read_predictions(bootstrap: str, topic: str, expected: int) -> list[dict]:
    return [json.loads(r.value) for r in drain({"bootstrap.servers": bootstrap}, [topic], expected=expected)]


def metric_value(instance: ServiceProcess, name: str, **labels: str) -> float:
    """The value of one Prometheus sample on the instance's /metrics (0 when absent)."""
    with urllib.request.urlopen(instance.url("/metrics"), timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def await_metric(
    instance: ServiceProcess, name: str, expected: float, timeout_s: float = 10.0, **labels: str
) -> float:
    """The metric once it reaches `expected` (outputs are counted when their commit succeeds), else its
    last value."""
    deadline = time.monotonic() + timeout_s
    value = metric_value(instance, name, **labels)
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.1)  # poll interval between scrapes
        value = metric_value(instance, name, **labels)
    return value


def test_every_ride_event_gets_exactly_one_prediction_per_service(
    kafka_bootstrap: str, trained_models: Path, fleet_topics: FleetTopics, tmp_path: Path
) -> None:
    published = produce_rides(kafka_bootstrap, fleet_topics["tip"]["INPUT_TOPIC"], 150, tmp_path)
    started, progress = published["ride_started"], published["ride_progress"]
    with running_fleet(
        {s: 1 for s in SERVICES}, kafka_bootstrap, trained_models, tmp_path / "logs", fleet_topics
    ) as fleet:
        wait_ready(fleet)
        outputs = {
            s: read_predictions(kafka_bootstrap, fleet_topics[s]["OUTPUT_TOPIC"], n)
            for s, n in {"duration": started + progress, "tip": started, "cost": started}.items()
        }
    versions = {
        name: json.loads((trained_models / f"{name}.json").read_text())["version"]
        for name in ("duration", "dynamic_duration", "tip", "cost")
    }
    for service in ("tip", "cost"):
        per_event = Counter(p["source_event_id"] for p in outputs[service])
        assert len(per_event) == started and set(per_event.values()) == {1}
        assert {p["model_version"] for p in outputs[service]} == {versions[service]}
        assert all(p["source_event_id"].startswith(p["ride_id"] + ":") for p in outputs[service])
    by_type = Counter(p["source_event_type"] for p in outputs["duration"])
    assert by_type == {"ride_started": started, "ride_progress": progress}
    assert len({p["source_event_id"] for p in outputs["duration"]}) == started + progress
    assert {p["model_version"] for p in outputs["duration"] if p["source_event_type"] == "ride_progress"} == {
        versions["dynamic_duration"]
    }


POISON = [
    b"\x00\xff garbage bytes",
    b'{"event_type": "ride_started", "ride_id": "tr',
    b'{"event_type": "ride_started", "schema_version": 1, "pickup_zone": "not a number"}',
    encode(ride_started("bad-zone")).replace(b'"pickup_zone":74', b'"pickup_zone":999'),
    encode(ride_started("future-version")).replace(b'"schema_version":1', b'"schema_version":7'),
    b'{"event_type": "ride_teleported", "schema_version": 1}',
    b"",
]
POISON_REASONS = [
    "undecodable",
    "undecodable",
    "schema_violation",
    "schema_violation",
    "unsupported_schema_version",
    "unknown_event_type",
    "undecodable",
]


def test_poison_goes_to_the_dead_letter_topic_once_with_its_reason_and_valid_events_are_still_scored(
    kafka_bootstrap: str, trained_models: Path, fleet_topics: FleetTopics, tmp_path: Path
) -> None:
    topics = fleet_topics["tip"]
    producer = make_producer({"bootstrap.servers": kafka_bootstrap})
    valid = [ride_started(f"ok-{i}") for i in range(40)]
    for i, event in enumerate(valid):
        producer.produce(topics["INPUT_TOPIC"], value=encode(event), key=event.ride_id.encode())
        if i % 6 == 0:
            bad = POISON[(i // 6) % len(POISON)]
            producer.produce(
                topics["INPUT_TOPIC"], value=bad, key=f"poison-{i}".encode(), headers=[("trace", b"t-1")]
            )
    producer.flush(10)
    sent_poison = {f"poison-{i}".encode(): POISON[(i // 6) % len(POISON)] for i in range(0, 40, 6)}
    with running_fleet({"tip": 1}, kafka_bootstrap, trained_models, tmp_path / "logs", fleet_topics) as fleet:
        wait_ready(fleet)
        predictions = read_predictions(kafka_bootstrap, topics["OUTPUT_TOPIC"], len(valid))
        dead = drain({"bootstrap.servers": kafka_bootstrap}, [topics["DLQ_TOPIC"]], expected=len(sent_poison))
        assert fleet[0].process.poll() is None, "the service crashed on poison"
        assert await_metric(fleet[0], "ridestream_dead_lettered_total", len(sent_poison)) == len(sent_poison)
    assert sorted(p["ride_id"] for p in predictions) == sorted(e.ride_id for e in valid)
    assert Counter(r.key for r in dead) == Counter(sent_poison.keys())  # each exactly once
    for record in dead:
        headers = dict(record.headers)
        assert record.value == sent_poison[record.key] or (
            record.value is None and sent_poison[record.key] == b""
        )
        expected_reason = POISON_REASONS[POISON.index(sent_poison[record.key])]
        assert headers["ridestream.reason"].decode() == expected_reason
        assert headers["ridestream.error"] and headers["ridestream.service"] == b"tip"
        assert headers["ridestream.source.topic"].decode() == topics["INPUT_TOPIC"]
        assert headers["trace"] == b"t-1"


def test_two_instances_split_the_partitions_and_a_third_joining_loses_nothing(
    kafka_bootstrap: str, trained_models: Path, fleet_topics: FleetTopics, tmp_path: Path
) -> None:
    topics = fleet_topics["tip"]
    with running_fleet({"tip": 2}, kafka_bootstrap, trained_models, tmp_path / "logs", fleet_topics) as fleet:
        wait_ready(fleet)  # both have partitions: the group has settled before any ride arrives
        first_half = produce_rides(kafka_bootstrap, topics["INPUT_TOPIC"], 1500, tmp_path)["ride_started"]
        predictions = read_predictions(kafka_bootstrap, topics["OUTPUT_TOPIC"], first_half)
        per_instance = [metric_value(i, "ridestream_events_in_total") for i in fleet]
        assert all(n > 0 for n in per_instance), f"an instance got no partitions: {per_instance}"
        counts = Counter(p["source_event_id"] for p in predictions)
        assert len(counts) == first_half and set(counts.values()) == {1}, "duplicates in normal operation"

        second = produce_rides(
            kafka_bootstrap, topics["INPUT_TOPIC"], 1500, tmp_path, "--rate", "3000", "--seed", "9"
        )
        third = start_service("tip", 3, kafka_bootstrap, trained_models, tmp_path / "logs", topics)
        fleet.append(third)
        total = first_half + second["ride_started"]
        predictions = read_predictions(kafka_bootstrap, topics["OUTPUT_TOPIC"], total)
    produced_ids = {p["source_event_id"] for p in predictions}
    assert len(produced_ids) == total, "a ride_started was never scored"


def test_sigterm_mid_stream_then_restart_loses_no_input(
    kafka_bootstrap: str, trained_models: Path, fleet_topics: FleetTopics, tmp_path: Path
) -> None:
    topics = fleet_topics["cost"]
    published = produce_rides(kafka_bootstrap, topics["INPUT_TOPIC"], 3000, tmp_path)
    expected = published["ride_started"]
    first = start_service("cost", 1, kafka_bootstrap, trained_models, tmp_path / "logs", topics)
    try:
        wait_ready([first])
        drain({"bootstrap.servers": kafka_bootstrap}, [topics["OUTPUT_TOPIC"]], expected=200)  # mid-stream
        assert stop_service(first, signal.SIGTERM) == 0, first.log_tail()
        second = start_service("cost", 2, kafka_bootstrap, trained_models, tmp_path / "logs", topics)
        wait_ready([second])
        predictions = read_predictions(kafka_bootstrap, topics["OUTPUT_TOPIC"], expected)
        assert stop_service(second) == 0
    finally:
        stop_service(first)
    assert len({p["source_event_id"] for p in predictions}) == expected


def test_metrics_endpoint_counts_what_was_processed(
    kafka_bootstrap: str, trained_models: Path, fleet_topics: FleetTopics, tmp_path: Path
) -> None:
    topics = fleet_topics["duration"]
    published = produce_rides(kafka_bootstrap, topics["INPUT_TOPIC"], 100, tmp_path)
    scored = published["ride_started"] + published["ride_progress"]
    with running_fleet(
        {"duration": 1}, kafka_bootstrap, trained_models, tmp_path / "logs", fleet_topics
    ) as fleet:
        wait_ready(fleet)
        read_predictions(kafka_bootstrap, topics["OUTPUT_TOPIC"], scored)
        instance = fleet[0]
        # predictions are counted once their batch is produced: the count may trail the topic by one batch
        assert await_metric(instance, "ridestream_predictions_out_total", scored) == scored
        assert (
            metric_value(instance, "ridestream_events_in_total", event_type="ride_started")
            == published["ride_started"]
        )
        assert (
            metric_value(instance, "ridestream_events_ignored_total", event_type="ride_completed")
            == published["ride_completed"]
        )
        assert metric_value(instance, "ridestream_event_to_prediction_seconds_count") == scored
        assert "ridestream_model_info{" in urllib.request.urlopen(instance.url("/metrics")).read().decode()
        assert urllib.request.urlopen(instance.url("/healthz")).status == 200
