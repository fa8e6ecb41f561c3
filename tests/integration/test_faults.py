"""The CI subset of the fault suite (bench/faults.py; the full suite is `make faults`).

Real brokers, real service processes, a read_committed verifier: nothing lost in either guarantee, nothing
duplicated under exactly-once.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from bench.faults import hard_kill, run_adversarial, run_brokers_gone, run_fault


# at_least_once is marked slow (make faults, which also runs every fault in both modes): CI keeps the
# stronger guarantee's run and stays under 20 minutes.
@pytest.mark.parametrize("mode", ["exactly_once", pytest.param("at_least_once", marks=pytest.mark.slow)])
def test_instances_killed_with_sigkill_under_load_lose_nothing(
    mode: str, kafka_bootstrap: str, trained_models: Path, tmp_path: Path
) -> None:
    row = run_fault(
        "hard_kill",
        mode,
        trained_models,
        tmp_path,
        rides=500,
        rate=1500,
        shared_bootstrap=kafka_bootstrap,
        inject=functools.partial(hard_kill, times=2),
    )
    assert row.lost == 0, row
    assert row.outputs >= row.inputs
    if mode == "exactly_once":
        assert row.duplicates == 0, row


@pytest.mark.slow  # a broker of its own, bounced: `make test-all` and `make faults`
def test_a_single_broker_bounce_mid_stream_loses_nothing_and_processing_resumes(
    trained_models: Path, tmp_path: Path
) -> None:
    row = run_fault(
        "broker_bounce", "exactly_once", trained_models, tmp_path, rides=500, rate=1500, instances=1
    )
    assert row.lost == 0 and row.duplicates == 0, row
    assert row.recovery_s < 60, row


def test_hostile_payloads_are_dead_lettered_once_each_and_valid_rides_scored_exactly_once(
    kafka_bootstrap: str, trained_models: Path, tmp_path: Path
) -> None:
    hostile = 1500  # `make faults` sends 10,000
    row, reasons, keys = run_adversarial(
        kafka_bootstrap, trained_models, tmp_path, hostile=hostile, rides=200
    )
    assert row.lost == 0 and row.duplicates == 0, row
    assert len(keys) == hostile and set(keys.values()) == {1}, (
        "a hostile payload was lost or dead-lettered twice"
    )
    assert {"undecodable", "schema_violation", "unsupported_schema_version", "oversized"} <= set(reasons)


@pytest.mark.slow  # ~20 s waiting out the broker-loss timeout: `make faults` and `make test-all` run it
def test_a_service_whose_brokers_are_gone_exits_nonzero_with_a_clear_message(
    trained_models: Path, tmp_path: Path
) -> None:
    code, log, seconds = run_brokers_gone(trained_models, tmp_path, limit_s=5.0)
    assert code != 0, log
    assert "no Kafka broker reachable" in log, log
    assert "Traceback" not in log
    assert seconds < 60
