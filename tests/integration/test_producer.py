"""The producer against the real broker: what it publishes is exactly what it reports, in ride order."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from schemas.json_schema import JSON_SCHEMA_DIR
from tests.integration.topics import DATA_DIR, Record, drain, ridestream

SCHEMAS = {
    kind: jsonschema_rs.validator_for(json.loads((JSON_SCHEMA_DIR / f"{kind}.json").read_text()))
    for kind in ("ride_started", "ride_progress", "ride_completed")
}


def assert_ride_stream_is_well_formed(records: list[Record], published: dict[str, int]) -> None:
    """Counts per type equal the summary; every value valid; key == ride_id; a ride on one partition, in
    order."""
    counts: Counter[str] = Counter()
    partitions: dict[str, set[int]] = defaultdict(set)
    last_time: dict[str, str] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = json.loads(record.value)
        SCHEMAS[event["event_type"]].validate(event)
        counts[event["event_type"]] += 1
        assert record.key == event["ride_id"].encode()
        partitions[event["ride_id"]].add(record.partition)
        assert event["event_time"] >= last_time.get(event["ride_id"], ""), (
            "a ride's events out of event-time order"
        )
        last_time[event["ride_id"]] = event["event_time"]
    assert dict(counts) == published
    assert all(len(p) == 1 for p in partitions.values()), "a ride's events spread over partitions"


def replay_real_rides(kafka_bootstrap: str, topic: str, tmp_path: Path, *limit: str) -> dict[str, Any]:
    """`ridestream produce` of a real TLC month (its first rides with `--rides N`): the summary, after
    checking that the topic holds exactly what it reports, as a well-formed stream."""
    report = tmp_path / "report.json"
    result = ridestream(
        "produce",
        "--data",
        str(DATA_DIR / "green_tripdata_2021-02.parquet"),
        *limit,
        "--topic",
        topic,
        "--progress-interval",
        "300",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(report.read_text())
    assert summary["failed"] == 0 and summary["skipped"]["absurd_duration"] > 0
    assert summary["published"]["ride_started"] == summary["published"]["ride_completed"]
    records = drain({"bootstrap.servers": kafka_bootstrap}, [topic], expected=summary["published_total"])
    assert_ride_stream_is_well_formed(records, summary["published"])
    return summary


@pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason="real TLC data (../shared/data) is not beside this checkout"
)
def test_replaying_real_tlc_rides_publishes_exactly_what_the_summary_reports(
    kafka_bootstrap: str, topic_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The first 12,000 rides of a month (the whole month, ~65,000 rides, is the slow test below)."""
    summary = replay_real_rides(kafka_bootstrap, topic_factory("rides"), tmp_path, "--rides", "12000")
    assert 10_000 < summary["published"]["ride_started"] <= 12_000


@pytest.mark.slow
@pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason="real TLC data (../shared/data) is not beside this checkout"
)
def test_replaying_a_real_tlc_month_publishes_exactly_what_the_summary_reports(
    kafka_bootstrap: str, topic_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    summary = replay_real_rides(kafka_bootstrap, topic_factory("rides"), tmp_path)
    assert summary["published"]["ride_started"] > 60_000


def test_synthetic_rides_need_no_data_files(kafka_bootstrap: str, topic_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topic = topic_factory("rides")
    report = tmp_path / "report.json"
    result = ridestream(
        "produce",
        "--rides",
        "300",
        "--topic",
        topic,
        "--bootstrap-servers",
        kafka_bootstrap,
        "--report",
        str(report),
        env={"HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(report.read_text())
    assert summary["published"]["ride_started"] == 300 and summary["source"].startswith("synthetic")
    records = drain({"bootstrap.servers": kafka_bootstrap}, [topic], expected=summary["published_total"])
    assert_ride_stream_is_well_formed(records, summary["published"])


def test_the_producer_creates_a_missing_topic_with_the_requested_partitions(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    import uuid

    from shared.kafka import partition_count

    topic = f"fresh-{uuid.uuid4().hex[:8]}"
    result = ridestream(
        "produce",
        "--rides",
        "20",
        "--topic",
        topic,
        "--partitions",
        "3",
        "--bootstrap-servers",
        kafka_bootstrap,
    )
    assert result.returncode == 0, result.stderr
    assert partition_count({"bootstrap.servers": kafka_bootstrap}, topic) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent/rides.parquet"], "trip file not found"),
        (["--rate", "-5"], "rate"),
        (["--rate", "10", "--speedup", "2"], "one pacing mode"),
    ],
)
def test_bad_input_gives_one_clear_line_and_a_nonzero_exit(
    kafka_bootstrap: str, args: list[str], message: str
) -> None:
    result = ridestream("produce", *args, "--bootstrap-servers", kafka_bootstrap)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unknown_file_layout_is_refused_clearly(kafka_bootstrap: str, tmp_path: Path) -> None:
    odd = tmp_path / "odd.csv"
    odd.write_text("a,b,c\n1,2,3\n")
    result = ridestream("produce", "--data", str(odd), "--bootstrap-servers", kafka_bootstrap)
    assert (
        result.returncode == 1
        and "unknown trip file layout" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_an_unreachable_broker_is_reported_not_hung_on(tmp_path: Path) -> None:
    result = ridestream(
        "produce",
        "--rides",
        "5",
        "--bootstrap-servers",
        "127.0.0.1:1",
        env={"KAFKA_CONNECT_TIMEOUT_S": "3"},
        timeout=60,
    )
    assert result.returncode == 1
    assert "did not answer" in result.stderr and "Traceback" not in result.stderr
