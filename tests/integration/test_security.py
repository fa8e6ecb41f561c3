"""A secured cluster for real: `ridestream broker up --secure` (SASL_SSL, SCRAM-SHA-512, a local CA, the
StandardAuthorizer denying whatever no ACL allows) and the fleet on it, each service as its own principal.

One secured broker serves the module; every test uses the default topic and group names, since those are
what the principals' ACLs name (stack/security.py). No test mocks Kafka or waits on a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from consumers.registry import SERVICE_NAMES
from schemas.topics import RIDE_EVENTS_TOPIC, prediction_topic
from shared.errors import KafkaAuthenticationError
from shared.kafka import TopicPartition, make_consumer, make_producer, wait_for_cluster
from stack.broker import LocalKafka, load_state
from stack.cli import app
from stack.fleet import ServiceProcess, free_port, start_service, stop_service, wait_ready
from stack.security import ADMIN
from tests.integration.topics import REPO, drain
from tests.integration.web import Http

# Run after the parallel part of `make test`, alone on the machine: a fleet of principals, timed exits.
pytestmark = pytest.mark.serial

# What each scoring service scores: the expected outputs are the input topic's events of these types.
SCORED = {
    "duration": {"ride_started", "ride_progress"},
    "tip": {"ride_started"},
    "cost": {"ride_started"},
}
# A refused principal must end well within this: no hang, no retry loop.
REFUSAL_DEADLINE_S = 45.0


def cli(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stack.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=dict(env),
        check=False,
    )


class Transcript:
    """Everything the module's processes printed or logged, for the secret scan."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.files: list[Path] = []

    def add(self, result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        self.texts.extend([result.stdout, result.stderr])
        return result


@pytest.fixture(scope="module")
def transcript() -> Transcript:
    return Transcript()


@pytest.fixture(scope="module")
def secure_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the module's `broker up --secure` records its cluster (RIDESTREAM_STATE_DIR)."""
    return tmp_path_factory.mktemp("secure-state")


@pytest.fixture(scope="module")
def secure_kafka(secure_state_dir: Path, transcript: Transcript) -> Iterator[LocalKafka]:
    """A 1-node secured cluster started and stopped through the CLI, adopted from its state file."""
    env = {**os.environ, "RIDESTREAM_STATE_DIR": str(secure_state_dir)}
    up = transcript.add(cli("broker", "up", "--secure", env=env))
    assert up.returncode == 0, up.stderr[-3000:]
    with environment({"RIDESTREAM_STATE_DIR": str(secure_state_dir)}):
        kafka = load_state()
    assert kafka is not None and kafka.secure is not None
    assert up.stdout.strip() == kafka.bootstrap_servers
    transcript.files.extend(p for p in kafka.data_dir.rglob("*") if p.name in ("server.log", "jvm.out"))
    try:
        yield kafka
    finally:
        # In-process: `broker down` is the same code for a secured cluster (tests/integration/test_broker.py).
        kafka.stop()
        (secure_state_dir / "broker.json").unlink()


def principal_env(kafka: LocalKafka, user: str) -> dict[str, str]:
    """The KAFKA_* settings of a process running as `user`: its password only as a file."""
    assert kafka.secure is not None
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": user,
        "KAFKA_SASL_PASSWORD_FILE": str(kafka.secure.password_file(user)),
        "KAFKA_SSL_CA_LOCATION": str(kafka.secure.tls.ca_location),
    }


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `values` while a process is started (stack.fleet passes the environment on)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_as(
    kafka: LocalKafka, user: str, service: str, models: Path, logs: Path, **settings: str
) -> ServiceProcess:
    with environment(principal_env(kafka, user)):
        return start_service(service, 1, kafka.bootstrap_servers, models, logs, settings)


def produce_as_producer(kafka: LocalKafka, rides: int, seed: int, transcript: Transcript) -> None:
    env = {**os.environ, **principal_env(kafka, "producer")}
    result = transcript.add(
        cli("produce", "--rides", str(rides), "--seed", str(seed), "--progress-interval", "600", env=env)
    )
    assert result.returncode == 0, result.stderr[-2000:]


def events_on_the_input_topic(admin: Mapping[str, str]) -> list[dict[str, str]]:
    """Every ride event on rides.events, read to the end offsets of now."""
    probe = make_consumer(admin, "test-security-probe")
    try:
        ends = [
            probe.get_watermark_offsets(TopicPartition(RIDE_EVENTS_TOPIC, p), timeout=10)[1] for p in range(6)
        ]
    finally:
        probe.close()
    records = drain(admin, [RIDE_EVENTS_TOPIC], expected=sum(ends), timeout_s=60)
    return [json.loads(r.value or b"{}") for r in records]


# CI runs one fleet with both guarantees in it (duration at-least-once, tip and cost exactly-once: each
# guarantee's ACLs, the transactional ids included, on the real authorizer); the full matrix is slow.
MIXED = {"duration": "at_least_once", "tip": "exactly_once", "cost": "exactly_once"}
GUARANTEES = [
    pytest.param(MIXED, id="mixed"),
    pytest.param(dict.fromkeys(SERVICE_NAMES, "at_least_once"), id="at_least_once", marks=pytest.mark.slow),
    pytest.param(dict.fromkeys(SERVICE_NAMES, "exactly_once"), id="exactly_once", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("guarantees", GUARANTEES)
def test_every_scoring_service_scores_the_rides_as_its_own_principal(
    secure_kafka: LocalKafka,
    trained_models: Path,
    tmp_path: Path,
    transcript: Transcript,
    guarantees: dict[str, str],
) -> None:
    admin = secure_kafka.admin_config()
    logs = tmp_path / "logs"
    fleet = [
        start_as(
            secure_kafka,
            service,
            service,
            trained_models,
            logs,
            PROCESSING_GUARANTEE=guarantee,
            COMMIT_INTERVAL_S="0.05",
        )
        for service, guarantee in guarantees.items()
    ]
    transcript.files.extend(i.log_path for i in fleet)
    try:
        # While the services start: the rides, published as the producer principal.
        produce_as_producer(secure_kafka, 40, seed=len(transcript.texts), transcript=transcript)
        # Everything on the topic: the groups resume from what an earlier test committed and score the rest.
        events = events_on_the_input_topic(admin)
        wait_ready(fleet)
        for service in SERVICE_NAMES:
            expected = {e["event_id"] for e in events if e["event_type"] in SCORED[service]}
            outputs = drain(
                admin,
                [prediction_topic(service)],
                expected=len(expected),
                timeout_s=60,
                isolation="read_committed",
            )
            per_event = Counter(json.loads(r.value or b"{}")["source_event_id"] for r in outputs)
            assert set(per_event) == expected, f"{service}: not every event was scored"
            assert set(per_event.values()) == {1}, f"{service}: duplicates"
        for instance in fleet:  # for the secret scan: what Prometheus would see
            with urllib.request.urlopen(instance.url("/metrics"), timeout=5) as response:
                transcript.texts.append(response.read().decode())
    finally:
        for instance in fleet:  # all at once: each then finishes its shutdown in parallel
            instance.process.send_signal(signal.SIGTERM)
        codes = {i.name: stop_service(i, signal.SIGTERM) for i in fleet}
    assert codes == {i.name: 0 for i in fleet}, "\n".join(i.log_tail() for i in fleet)
    if "exactly_once" in guarantees.values():
        txn = [i for i in fleet if guarantees[i.service] == "exactly_once"][0]
        assert "exactly_once" in txn.log_path.read_text()  # it really ran transactional


# what tip's principal is refused when it sets these settings → what its one error line must name
READ_AND_WRITE = {
    "read": ({"INPUT_TOPIC": prediction_topic("duration")}, repr(prediction_topic("duration"))),
    "write": ({"OUTPUT_TOPIC": prediction_topic("cost")}, repr(prediction_topic("cost"))),
}
GROUP_AND_TRANSACTIONAL_ID = {
    # cost's group: refused when it joins (at-least-once)...
    "group": ({"GROUP_ID": "ridestream-cost"}, "consumer group access denied"),
    # ...and, under exactly-once, its transactional id (ridestream-cost.tip-1) even before that
    "transactional id": (
        {"GROUP_ID": "ridestream-cost", "PROCESSING_GUARANTEE": "exactly_once"},
        "transactional id access denied",
    ),
}


@pytest.mark.parametrize(
    "refused",
    [
        pytest.param(READ_AND_WRITE, id="read predictions.duration, write predictions.cost"),
        pytest.param(GROUP_AND_TRANSACTIONAL_ID, id="group, transactional id", marks=pytest.mark.slow),
    ],
)
def test_the_tip_principal_cannot_use_another_services_topics_or_ids_and_exits_saying_so(
    secure_kafka: LocalKafka,
    trained_models: Path,
    tmp_path: Path,
    transcript: Transcript,
    refused: dict[str, tuple[dict[str, str], str]],
) -> None:
    started = time.monotonic()
    # All at once (each its own process): the refusals are independent, CI time is not.
    attempts = {
        case: start_as(
            secure_kafka, "tip", "tip", trained_models, tmp_path / case.replace(" ", "-"), **settings
        )
        for case, (settings, _) in refused.items()
    }
    transcript.files.extend(tip.log_path for tip in attempts.values())
    try:
        codes = {setting: tip.process.wait(REFUSAL_DEADLINE_S) for setting, tip in attempts.items()}
    except subprocess.TimeoutExpired:
        pytest.fail(f"tip still running {REFUSAL_DEADLINE_S:.0f}s after being refused")
    finally:
        for tip in attempts.values():
            stop_service(tip)
    assert time.monotonic() - started < REFUSAL_DEADLINE_S
    for setting, tip in attempts.items():
        log = tip.log_path.read_text()
        assert codes[setting] == 1, log[-2000:]
        said = [line for line in log.splitlines() if line.startswith("ridestream: error:")]
        assert len(said) == 1 and said[0].startswith("ridestream: error: not authorized"), log[-2000:]
        assert refused[setting][1] in said[0] and "Traceback" not in log


def test_a_wrong_password_fails_fast_with_a_clear_message(
    secure_kafka: LocalKafka, tmp_path: Path, transcript: Transcript
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    env = {**os.environ, **principal_env(secure_kafka, "producer"), "KAFKA_SASL_PASSWORD_FILE": str(wrong)}
    started = time.monotonic()
    result = transcript.add(cli("produce", "--rides", "1", env=env))
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "ridestream: error:" in result.stderr and "authentication failed" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    assert elapsed < 10.0, f"took {elapsed:.1f}s (the connect timeout is 15 s: it must not wait for it)"


def test_a_plaintext_client_on_the_tls_port_fails_fast_with_a_clear_message(
    secure_kafka: LocalKafka,
) -> None:
    started = time.monotonic()
    with pytest.raises(KafkaAuthenticationError, match="security.protocol") as refused:
        wait_for_cluster({"bootstrap.servers": secure_kafka.bootstrap_servers}, timeout_s=30)
    assert time.monotonic() - started < 10.0, str(refused.value)


def metric_total(instance: ServiceProcess, name: str) -> float:
    with urllib.request.urlopen(instance.url("/metrics"), timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))


@pytest.mark.slow
def test_the_evaluator_and_the_web_services_work_as_their_own_principals(
    secure_kafka: LocalKafka, trained_models: Path, tmp_path: Path, transcript: Transcript
) -> None:
    admin = secure_kafka.admin_config()
    logs = tmp_path / "logs"
    logs.mkdir()
    duration = start_as(secure_kafka, "duration", "duration", trained_models, logs)
    evaluator = start_as(secure_kafka, "evaluator", "evaluator", trained_models, logs, PUBLISH_INTERVAL_S="1")
    estimate = Http(
        ["serve", "--models", str(trained_models), "-b", secure_kafka.bootstrap_servers],
        free_port(),
        logs / "estimate.log",
        principal_env(secure_kafka, "estimate"),
    )
    backend = Http(
        ["backend", "--estimate-url", estimate.url, "-b", secure_kafka.bootstrap_servers],
        free_port(),
        logs / "backend.log",
        principal_env(secure_kafka, "backend"),
    )
    transcript.files.extend([duration.log_path, evaluator.log_path, estimate.log, backend.log])
    try:
        produce_as_producer(secure_kafka, 30, seed=77, transcript=transcript)
        estimate.wait_ready()  # it follows the control topic as `estimate`
        backend.wait_ready()  # its feed is assigned the prediction topics as `backend`
        wait_ready([duration, evaluator])
        ride = {
            "pickup_zone": 74,
            "dropoff_zone": 41,
            "pickup_time": datetime.now(UTC).isoformat(),
            "trip_distance_miles": 2.5,
        }
        created = httpx.post(f"{backend.url}/v1/rides", json=ride, timeout=10)
        assert created.status_code == 201, created.text  # estimated, and published as `backend`
        ride_id = created.json()["ride_id"]
        deadline = time.monotonic() + 60
        scored: list[str] = []
        while ride_id not in scored:
            assert time.monotonic() < deadline, f"{ride_id} was never scored"
            records = drain(admin, [prediction_topic("duration")], quiet_s=1.0, timeout_s=30)
            scored = [json.loads(r.value or b"{}")["ride_id"] for r in records]
        # The evaluator joined predictions with outcomes (the producer's completed rides) as `evaluator`.
        while metric_total(evaluator, "ridestream_live_count") == 0:
            assert time.monotonic() < deadline, evaluator.log_tail()
            time.sleep(0.5)  # between scrapes of its /metrics
    finally:
        codes = [stop_service(duration), stop_service(evaluator), backend.stop(), estimate.stop()]
    assert codes == [0, 0, 0, 0]


@pytest.mark.slow
def test_a_three_node_secured_cluster_lets_every_principal_in_on_every_node(tmp_path: Path) -> None:
    with LocalKafka.start(nodes=3, data_dir=tmp_path / "cluster", secure=True) as kafka:
        assert kafka.secure is not None
        for node in range(3):
            for user in kafka.secure.principals:
                config = {**kafka.client_config(user), "bootstrap.servers": kafka.node_address(node)}
                wait_for_cluster(config, timeout_s=30, expected_nodes=3)
        # Inter-broker replication runs as `broker` over SASL_SSL: a record acknowledged by all replicas.
        producer = make_producer(kafka.client_config("producer"))
        producer.produce(RIDE_EVENTS_TOPIC, b"{}", b"k")
        assert producer.flush(30) == 0


# Last in the module: it scans what every test before it printed and logged.
def test_broker_status_lists_the_principals_and_no_output_or_log_holds_a_secret(
    secure_kafka: LocalKafka, secure_state_dir: Path, transcript: Transcript
) -> None:
    assert secure_kafka.secure is not None
    # In-process (the CLI's own app): a second Python start-up would cost CI seconds and prove nothing more.
    status = CliRunner().invoke(
        app, ["broker", "status"], env={"RIDESTREAM_STATE_DIR": str(secure_state_dir)}
    )
    assert status.exit_code == 0, status.output
    transcript.texts.append(status.output)
    for user in (ADMIN, "producer", *SERVICE_NAMES, "evaluator", "estimate", "backend"):
        assert f" {user} " in status.stdout
    assert str(secure_kafka.secure.tls.ca_location) in status.stdout
    # The operator's commands, as the admin with its password in the environment this time.
    admin_env = {
        **os.environ,
        **principal_env(secure_kafka, ADMIN),
        "KAFKA_SASL_PASSWORD": secure_kafka.secure.admin_password,
    }
    del admin_env["KAFKA_SASL_PASSWORD_FILE"]
    deploy = CliRunner().invoke(app, ["deploy", "status", "--json"], env=admin_env)
    assert deploy.exit_code == 0, deploy.output
    transcript.texts.append(deploy.output)
    help_text = CliRunner().invoke(app, ["consume", "--help"], env=admin_env)
    assert help_text.exit_code == 0 and "--bootstrap-servers" in help_text.output
    transcript.texts.append(help_text.output)

    secrets = [
        secure_kafka.secure.admin_password,
        secure_kafka.secure.broker_password,
        secure_kafka.secure.tls.key_password,
        *secure_kafka.secure.passwords.values(),
    ]
    texts = transcript.texts + [p.read_text(errors="replace") for p in transcript.files if p.is_file()]
    assert len(texts) > 5 and any("SASL" in t for t in texts)  # the scan has real material to look at
    leaks = [i for i, text in enumerate(texts) for secret in secrets if secret in text]
    assert leaks == []
