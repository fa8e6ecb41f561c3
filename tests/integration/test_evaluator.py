"""The evaluator against a known answer: replay rides of a real TLC month through the three scoring services
and the evaluator (killed with SIGKILL half-way and restarted), then compute the same errors offline from the
file and the models, and require the evaluator's figures to be exactly those."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.faults import publish_at_rate
from consumers.evaluator.join import FigureKey, Sums
from consumers.evaluator.service import read_fleet_figures
from consumers.registry import SERVICES
from producer.source import ride_events
from producer.trips import read_trips
from schemas.events import RideCompleted
from shared.serde import encode
from stack.fleet import ServiceProcess, running_fleet, start_service, stop_service, wait_ready
from tests.integration.topics import DATA_DIR, ridestream

MONTH = DATA_DIR / "green_tripdata_2021-02.parquet"
RIDES = 1500
RATE = 2500.0  # events/s: the replay lasts ~10 s, so the evaluator can be killed while it runs
SEGMENTS = ("0-25%", "25-50%", "50-75%", "75-100%")


def offline_figures(events: list[object], models: Path) -> pd.DataFrame:
    """Each service's predictions computed here, joined with the rides' outcomes in pandas."""
    rows = []
    for spec in SERVICES:
        scorer = spec.load_scorer(models)
        scored = [e for e in events if e.event_type in scorer.scored_event_types]  # type: ignore[attr-defined]
        result = scorer.score(scored, datetime.now(UTC))
        rows.extend(json.loads(p.value) for p in result.predictions)
    predictions = pd.DataFrame(rows)
    outcomes = pd.DataFrame(
        [
            {
                "ride_id": e.ride_id,
                "minutes": e.duration_minutes,
                "tip": e.tip_amount_usd,
                "total": e.total_amount_usd,
                "card": e.payment_type == 1,
            }
            for e in events
            if isinstance(e, RideCompleted)
        ]
    )
    joined = predictions.merge(outcomes, on="ride_id")
    duration = joined[joined.prediction_type == "duration"].copy()
    done = duration.elapsed_seconds / (duration.minutes * 60)
    bucket = np.clip(np.floor(done * 4), 0, 3).astype(int)
    duration["segment"] = np.where(duration.elapsed_seconds == 0, "start", np.array(SEGMENTS)[bucket])
    duration["error"] = duration.predicted_duration_minutes - duration.minutes
    tip = joined[(joined.prediction_type == "tip") & joined.card].copy()
    tip["segment"], tip["error"] = "card", tip.predicted_tip_usd - tip.tip
    cost = joined[joined.prediction_type == "cost"].copy()
    cost["segment"], cost["error"] = "all", cost.predicted_total_usd - cost.total
    judged = pd.concat([duration, tip, cost])
    return (
        judged.groupby(["prediction_type", "model_name", "model_version", "segment"])["error"]
        .agg(
            count="count",
            rmse=lambda e: float(np.sqrt((e**2).mean())),
            mae=lambda e: float(e.abs().mean()),
            bias="mean",
        )
        .reset_index()
    )


def total_count(figures: dict[FigureKey, Sums]) -> int:
    return sum(s.count for s in figures.values())


@pytest.mark.skipif(
    not MONTH.is_file(),
    reason=f"needs the TLC month {MONTH}: real data is never committed (CI has ../shared/data)",
)
def test_live_figures_equal_the_offline_errors_of_a_tlc_month_through_a_kill_and_restart(
    kafka_bootstrap: str, topic_factory: Callable[..., str], trained_models: Path, tmp_path: Path
) -> None:
    trips = read_trips(MONTH).trips.sample(RIDES, random_state=11).reset_index(drop=True)
    events = list(ride_events(trips, 60.0, seed=11))
    expected = offline_figures(events, trained_models)
    expected_total = int(expected["count"].sum())
    rides = topic_factory("rides")
    outputs = {spec.name: topic_factory(f"predictions-{spec.name}") for spec in SERVICES}
    evaluations = f"evaluations-{uuid.uuid4().hex[:12]}"
    group = f"test-evaluator-{uuid.uuid4().hex[:6]}"
    evaluator_env = {
        "INPUT_TOPIC": rides,
        "PREDICTION_TOPICS": ",".join(outputs.values()),
        "EVALUATIONS_TOPIC": evaluations,
        "GROUP_ID": group,
        "PUBLISH_INTERVAL_S": "1",
        # the killed instance's partitions move to its restart after 10 s, not the default 45
        "SESSION_TIMEOUT_S": "10",
    }
    client = {"bootstrap.servers": kafka_bootstrap}

    def figures() -> dict[FigureKey, Sums]:
        return read_fleet_figures(client, evaluations, group)

    def wait_for(condition: Callable[[], bool], what: str, evaluator: ServiceProcess) -> None:
        deadline = time.monotonic() + 120
        while not condition():
            assert evaluator.process.poll() is None, evaluator.log_tail(30)
            assert time.monotonic() < deadline, f"{what}: {total_count(figures())} of {expected_total}"
            time.sleep(0.5)  # poll interval of the evaluations topic

    service_env = {
        spec.name: {
            "INPUT_TOPIC": rides,
            "OUTPUT_TOPIC": outputs[spec.name],
            "GROUP_ID": f"{group}-{spec.name}",
        }
        for spec in SERVICES
    }
    logs = tmp_path / "logs"
    with running_fleet(
        {s.name: 1 for s in SERVICES}, kafka_bootstrap, trained_models, logs, service_env
    ) as fleet:
        evaluator = start_service("evaluator", 1, kafka_bootstrap, trained_models, logs, evaluator_env)
        try:
            wait_ready([*fleet, evaluator])
            done = threading.Event()
            publish_at_rate(
                kafka_bootstrap, rides, [(e.ride_id.encode(), encode(e)) for e in events], RATE, done
            )
            wait_for(lambda: total_count(figures()) > expected_total // 4, "a quarter judged", evaluator)
            stop_service(evaluator, signal.SIGKILL)
            evaluator = start_service("evaluator", 1, kafka_bootstrap, trained_models, logs, evaluator_env)
            assert done.wait(120)
            wait_for(lambda: total_count(figures()) >= expected_total, "all judged", evaluator)
        finally:
            stop_service(evaluator)

    found = figures()
    assert total_count(found) == expected_total, "nothing counted twice across the kill"
    for row in expected.itertuples():
        sums = found[FigureKey(row.prediction_type, row.model_name, row.model_version, row.segment)]
        assert sums.count == row.count, row
        assert sums.rmse == pytest.approx(row.rmse, rel=1e-9)
        assert sums.mae == pytest.approx(row.mae, rel=1e-9)
        assert sums.bias == pytest.approx(row.bias, rel=1e-9, abs=1e-9)
    assert len(found) == len(expected)

    listed = ridestream(
        "models",
        "list",
        "--json",
        "--models",
        str(trained_models),
        "-b",
        kafka_bootstrap,
        "--evaluations-topic",
        evaluations,
        "--evaluator-group",
        group,
    )
    assert listed.returncode == 0, listed.stderr
    tip = next(v for v in json.loads(listed.stdout) if v["model"] == "tip" and "champion" in v["aliases"])
    card = expected[(expected.prediction_type == "tip") & (expected.segment == "card")].iloc[0]
    assert tip["live"]["card"]["count"] == card["count"]
    assert tip["live"]["card"]["rmse"] == pytest.approx(card["rmse"], rel=1e-9)
