"""The Faust engine end to end: `python -m stack.faust_engine tip` (and its old name `python -m
shared.faust_engine`, which scripts use) as a real process on the real broker.

Same contract, scorer and dead letters as the default engine, so the assertions are the default engine's:
every
valid ride_started gets exactly one prediction keyed by its ride_id, every poison record is dead-lettered once
with its reason, and the group's committed offsets cover everything consumed. A failed delivery must end the
process without committing (docs/faust.md explains why Faust on its own would commit past it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("faust", reason="the Faust engine is optional: pip install -e '.[faust]'")

from shared.kafka import TopicPartition, ensure_topic, make_consumer, make_producer
from shared.serde import encode
from stack.faust_engine import EXIT_UNCOMMITTED  # after importorskip: needs faust
from tests.factories import ride_progress, ride_started
from tests.integration.topics import REPO, drain

PARTITIONS = 6
# value → the reason header the dead letter must carry; None is a null value (a tombstone) on the wire.
POISON: dict[bytes | None, str] = {
    b"\x00\xff garbage bytes": "undecodable",
    b"": "undecodable",
    None: "undecodable",
    b'{"event_type": "ride_teleported", "schema_version": 1}': "unknown_event_type",
    encode(ride_started("bad-zone")).replace(b'"pickup_zone":74', b'"pickup_zone":999'): "schema_violation",
    encode(ride_started("v7")).replace(
        b'"schema_version":1', b'"schema_version":7'
    ): "unsupported_schema_version",
}

Topics = dict[str, str]


@pytest.fixture
def faust_topics(topic_factory: Callable[..., str]) -> Topics:
    return {
        "TIP_INPUT_TOPIC": topic_factory("faust-rides", PARTITIONS),
        "TIP_OUTPUT_TOPIC": topic_factory("faust-tips", PARTITIONS),
        "TIP_DLQ_TOPIC": topic_factory("faust-dlq", PARTITIONS),
        "TIP_GROUP_ID": f"faust-tip-{uuid.uuid4().hex[:8]}",
    }


def publish(bootstrap: str, topic: str, rides: int) -> tuple[list[str], dict[bytes, bytes | None], int]:
    """ride_started + a few ride_progress (not scored by tip) + poison, lz4-compressed like the publisher."""
    producer = make_producer({"bootstrap.servers": bootstrap})
    ride_ids = [f"faust-{i}" for i in range(rides)]
    total = 0
    for i, ride_id in enumerate(ride_ids):
        producer.produce(topic, value=encode(ride_started(ride_id)), key=ride_id.encode())
        total += 1
        if i % 10 == 0:
            producer.produce(topic, value=encode(ride_progress(ride_id)), key=ride_id.encode())
            total += 1
    poison = {f"poison-{i}".encode(): value for i, value in enumerate(POISON)}
    for key, value in poison.items():
        producer.produce(topic, value=value, key=key, headers=[("trace", b"t-1")])
    assert producer.flush(30) == 0
    return ride_ids, poison, total + len(poison)


def run_faust_tip(
    bootstrap: str,
    topics: Topics,
    models: Path,
    *flags: str,
    max_messages: int | None = None,
    idle_s: float = 30.0,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """The service as an operator runs it, until `max_messages` are consumed or `idle_s` pass without any."""
    bounds = {
        "TIP_IDLE_TIMEOUT_S": str(idle_s),
        **({"TIP_MAX_MESSAGES": str(max_messages)} if max_messages else {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "stack.faust_engine", "tip", *flags],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
        env={
            **os.environ,
            **topics,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "TIP_MODELS_DIR": str(models),
            **bounds,
            **env,
        },
    )


def committed_total(bootstrap: str, topics: Topics) -> int:
    """Sum of the group's committed offsets on the input topic (partitions never committed count 0)."""
    consumer = make_consumer({"bootstrap.servers": bootstrap}, topics["TIP_GROUP_ID"])
    try:
        committed = consumer.committed(
            [TopicPartition(topics["TIP_INPUT_TOPIC"], p) for p in range(PARTITIONS)], 30
        )
    finally:
        consumer.close()
    return sum(max(0, tp.offset) for tp in committed)


# The per-event agent runs in `make test-all` only (CI time); the batched one, the default, in CI.
@pytest.mark.parametrize(
    ("flags", "rides"),
    [pytest.param((), 40, marks=pytest.mark.slow), (("--batched",), 400)],
    ids=["per-event", "batched"],
)
def test_faust_agent_predicts_each_valid_ride_once_and_dead_letters_each_poison_record_with_its_reason(
    kafka_bootstrap: str, trained_models: Path, faust_topics: Topics, flags: tuple[str, ...], rides: int
) -> None:
    # per event scores one event per model call, so it gets fewer rides to stay quick on a 2-core machine
    ride_ids, poison, published = publish(kafka_bootstrap, faust_topics["TIP_INPUT_TOPIC"], rides)

    result = run_faust_tip(kafka_bootstrap, faust_topics, trained_models, *flags, max_messages=published)

    assert result.returncode == 0, result.stderr[-3000:]
    client = {"bootstrap.servers": kafka_bootstrap}
    predictions = drain(client, [faust_topics["TIP_OUTPUT_TOPIC"]], quiet_s=3)
    by_ride = Counter(json.loads(r.value or b"{}")["ride_id"] for r in predictions)
    assert by_ride == Counter(ride_ids), "every valid ride_started exactly once, nothing else"
    assert all(r.key == json.loads(r.value or b"{}")["ride_id"].encode() for r in predictions)
    assert {json.loads(r.value or b"{}")["model_name"] for r in predictions} == {"tip"}

    dead = drain(client, [faust_topics["TIP_DLQ_TOPIC"]], quiet_s=3)
    assert Counter(r.key for r in dead) == Counter(poison.keys()), (
        "each poison record dead-lettered exactly once"
    )
    for record in dead:
        assert record.key is not None
        sent = poison[record.key]
        headers = dict(record.headers)
        assert headers["ridestream.reason"].decode() == POISON[sent]
        assert record.value == sent or (not record.value and not sent), "the original bytes, unchanged"
        assert headers["ridestream.service"] == b"tip" and headers["ridestream.error"]
        assert headers["ridestream.source.topic"].decode() == faust_topics["TIP_INPUT_TOPIC"]
        assert headers["trace"] == b"t-1", "the original headers are kept"

    assert committed_total(kafka_bootstrap, faust_topics) == published, (
        "a clean stop commits everything consumed"
    )


def test_a_failed_delivery_ends_the_faust_process_without_committing(
    kafka_bootstrap: str, trained_models: Path, faust_topics: Topics
) -> None:
    # A prediction (~300 bytes) cannot fit this topic: the broker refuses every one (MessageSizeTooLarge).
    faust_topics["TIP_OUTPUT_TOPIC"] = f"faust-tiny-{uuid.uuid4().hex[:12]}"
    ensure_topic(
        {"bootstrap.servers": kafka_bootstrap},
        faust_topics["TIP_OUTPUT_TOPIC"],
        PARTITIONS,
        replication_factor=-1,
        config={"max.message.bytes": "200"},
    )
    _, _, published = publish(kafka_bootstrap, faust_topics["TIP_INPUT_TOPIC"], 20)

    result = run_faust_tip(kafka_bootstrap, faust_topics, trained_models, "--batched", max_messages=published)

    assert result.returncode == EXIT_UNCOMMITTED, result.stderr[-3000:]
    assert "delivery failed" in result.stderr
    assert committed_total(kafka_bootstrap, faust_topics) == 0, (
        "no offset may be committed past a lost prediction"
    )


@pytest.mark.slow  # ~30 s: `make faults` and `make test-all` run it (CI runs the confluent kill tests)
def test_kill_9_mid_stream_then_restart_loses_no_ride_though_some_may_be_scored_twice(
    kafka_bootstrap: str, trained_models: Path, faust_topics: Topics
) -> None:
    ride_ids, _, _ = publish(kafka_bootstrap, faust_topics["TIP_INPUT_TOPIC"], 3000)
    client = {"bootstrap.servers": kafka_bootstrap}
    # Static membership (KIP-345): the restarted instance takes the killed one's place at once instead of
    # waiting for its session (60 s in Faust) to expire.
    member = {"TIP_GROUP_INSTANCE_ID": "faust-tip-0", "TIP_BATCH_SIZE": "100"}
    env = {
        **os.environ,
        **faust_topics,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TIP_MODELS_DIR": str(trained_models),
        **member,
    }
    command = [sys.executable, "-m", "shared.faust_engine", "tip", "--batched"]
    first = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        drain(client, [faust_topics["TIP_OUTPUT_TOPIC"]], expected=300, timeout_s=120)  # mid-stream
    finally:
        first.kill()  # SIGKILL: no flush, no commit, no leaving the group
        first.wait(30)

    # The restart resumes from the last committed offsets; it stops once the topic stays quiet.
    result = run_faust_tip(kafka_bootstrap, faust_topics, trained_models, "--batched", idle_s=8, **member)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = drain(client, [faust_topics["TIP_OUTPUT_TOPIC"]], quiet_s=3)
    scored = Counter(json.loads(r.value or b"{}")["ride_id"] for r in predictions)
    assert set(scored) == set(ride_ids), "at-least-once: every ride scored despite the kill"
