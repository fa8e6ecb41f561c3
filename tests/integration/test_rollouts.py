"""A/B and shadow rollouts on the real broker, under exactly-once, while rides flow.

- Every input is scored exactly once on the user topic, each by the version the control log says: the
  instance's switch records give the epoch at each input offset, the rollout record of that epoch gives
  the plan, and the ride's bucket picks the side. A replay of the logs reproduces who scored what.
- A/B: two fits of the same recipe give "no significant difference"; the champion against a model fit on
  shuffled targets gives a winner, the champion.
- Shadow: the user topic holds champion predictions only; the shadow topic holds the challenger's.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bench.faults import Load, publish_at_rate
from consumers.routing import ride_bucket
from consumers.training import train_models
from producer.synthetic import synthesize_trips
from schemas.control import RolloutState, SwitchRecord
from schemas.topics import shadow_topic
from shared.registry import ModelRegistry
from stack.deploy import read_fleet_state
from stack.fleet import ServiceProcess, start_service, stop_service, wait_ready
from tests.integration.topics import drain, ridestream

RIDES = 14000
SHADOW_RIDES = 2000
RATE = 4000.0
WAIT_S = 150.0


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cost v1 the champion, v2 a second fit on the same rides, v3 fit on shuffled targets."""
    models = tmp_path_factory.mktemp("rollouts-registry")
    trips = synthesize_trips(6000, seed=51).trips
    train_models(trips, models)
    train_models(trips, models, only=["cost"])
    shuffled = trips.copy()
    shuffled["total_amount_usd"] = np.random.default_rng(1).permutation(
        shuffled["total_amount_usd"].to_numpy()
    )
    train_models(shuffled, models, only=["cost"])
    return models


def wait_for(condition: Callable[[], bool], what: str, instances: list[ServiceProcess]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        for instance in instances:
            assert instance.process.poll() is None, instance.log_tail(30)
        assert time.monotonic() < deadline, f"{what} did not happen in {WAIT_S:.0f}s"
        time.sleep(1.0)  # polls the evaluator's figures, which it publishes every second


def expected_version(state: RolloutState, ride_id: str) -> str:
    """Which registry version of cost the plan of `state` has score this ride on the user topic."""
    if not state.running:
        return (state.challenger if state.status == "promoted" else state.champion)["cost"]
    if state.strategy == "shadow":
        return state.champion["cost"]
    return state.challenger["cost"] if ride_bucket(ride_id) < state.share() else state.champion["cost"]


@pytest.mark.slow  # ~2.5 min: run by `make faults` and `make test-all`
def test_ab_and_shadow_rollouts_score_each_ride_once_by_the_version_the_control_log_says(
    kafka_bootstrap: str, topic_factory: Callable[..., str], registry: Path, tmp_path: Path
) -> None:
    models = ModelRegistry(registry)
    version_of_artifact = {
        models.describe(models.version_of("cost", None, n)).artifact_version: n for n in "123"
    }
    rides, output = topic_factory("rides"), topic_factory("predictions-cost")
    control, evaluations = f"control-{uuid.uuid4().hex[:10]}", f"evaluations-{uuid.uuid4().hex[:10]}"
    evaluator_group = f"test-evaluator-{uuid.uuid4().hex[:6]}"
    service_env = {
        "INPUT_TOPIC": rides,
        "OUTPUT_TOPIC": output,
        "GROUP_ID": f"test-cost-{uuid.uuid4().hex[:6]}",
        "CONTROL_TOPIC": control,
        "PROCESSING_GUARANTEE": "exactly_once",
    }
    evaluator_env = {
        "INPUT_TOPIC": rides,
        "PREDICTION_TOPICS": f"{output},{shadow_topic(output)}",
        "EVALUATIONS_TOPIC": evaluations,
        "GROUP_ID": evaluator_group,
        "PUBLISH_INTERVAL_S": "1",
    }
    args = (
        "--models", str(registry), "-b", kafka_bootstrap, "--control-topic", control,
        "--evaluations-topic", evaluations, "--evaluator-group", evaluator_group,
    )  # fmt: skip
    load, shadow_load = Load.synthetic(RIDES, seed=52), Load.synthetic(SHADOW_RIDES, seed=53)
    started = {
        json.loads(v)["event_id"] for _k, v in load.events + shadow_load.events if b'"ride_started"' in v
    }
    client = {"bootstrap.servers": kafka_bootstrap}
    logs = tmp_path / "logs"
    cost = start_service("cost", 1, kafka_bootstrap, registry, logs, service_env)
    evaluator = start_service("evaluator", 1, kafka_bootstrap, registry, logs, evaluator_env)
    instances = [cost, evaluator]

    def judged(version: str) -> int:
        state = read_fleet_state(client, control, evaluations, evaluator_group)
        rollout = state.rollouts["cost"]
        artifact = rollout.artifacts[f"cost/{version}"]
        return sum(s.count for k, s in state.figures.items() if k.version == artifact and k.segment == "all")

    def rollout_report(*extra: str) -> dict[str, object]:
        done = ridestream("deploy", "report", "cost", "--json", *args[2:], *extra)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout)["models"]["cost"])

    def run(*command: str) -> None:
        done = ridestream("deploy", *command, *args)
        assert done.returncode == 0, done.stderr

    done = threading.Event()
    try:
        wait_ready(instances)
        publish_at_rate(kafka_bootstrap, rides, load.events, RATE, done)

        run("start", "cost", "--strategy", "ab", "--challenger", "2", "--share", "50")
        wait_for(lambda: judged("2") >= 400, "400 rides judged for v2", instances)
        same = rollout_report()
        assert same["winner"] is None, same["verdict"]
        run("abort", "cost")

        run("start", "cost", "--strategy", "ab", "--challenger", "3", "--share", "50")
        wait_for(lambda: judged("3") >= 400, "400 rides judged for v3", instances)
        worse = rollout_report()
        assert worse["winner"] == "champion", worse["verdict"]
        run("rollback", "cost")

        assert done.wait(120), "the load did not finish"
        before = judged("3")
        run("start", "cost", "--strategy", "shadow", "--challenger", "3")
        shadow_done = threading.Event()
        publish_at_rate(kafka_bootstrap, rides, shadow_load.events, RATE, shadow_done)
        assert shadow_done.wait(120), "the shadow's load did not finish"
        wait_for(lambda: judged("3") >= before + 300, "the shadow judged", instances)
        run("abort", "cost")
        # every ride scored for users, read back as a downstream client would
        users = drain(client, [output], expected=len(started), isolation="read_committed")
    finally:
        for instance in instances:
            stop_service(instance)

    inputs = {}  # event_id → (partition, offset)
    for record in drain(client, [rides], expected=len(load.events) + len(shadow_load.events)):
        event = json.loads(record.value or b"{}")
        inputs[event["event_id"]] = (record.partition, record.offset)
    log = drain(client, [control], quiet_s=3.0, isolation="read_committed")
    rollouts = {}
    switches: dict[int, list[tuple[int, int]]] = {}  # partition → [(offset, epoch)]
    for record in log:
        key = (record.key or b"").decode()
        if key.startswith("rollout/"):
            state = RolloutState.model_validate_json(record.value or b"")
            rollouts[state.epoch] = state
        elif key.startswith("switch/"):
            switch = SwitchRecord.model_validate_json(record.value or b"")
            switches.setdefault(switch.partition, []).append((switch.offset, switch.epoch))

    predictions = [json.loads(r.value or b"{}") for r in users]
    counts = Counter(p["source_event_id"] for p in predictions)
    assert set(counts) == started and max(counts.values()) == 1, "every ride scored exactly once for users"
    mismatched, by_epoch = [], Counter()
    for prediction in predictions:
        partition, offset = inputs[prediction["source_event_id"]]
        epoch = max((e for o, e in switches.get(partition, []) if o <= offset), default=0)
        by_epoch[epoch] += 1
        version = version_of_artifact[prediction["model_version"]]
        wanted = expected_version(rollouts[epoch], prediction["ride_id"]) if epoch else "1"
        if version != wanted:
            mismatched.append((prediction["source_event_id"], epoch, version, wanted))
    assert not mismatched, f"{len(mismatched)} predictions not by the control log's version: {mismatched[:5]}"
    assert len([e for e in by_epoch if e]) >= 4, f"the run crossed the rollouts' epochs: {by_epoch}"

    shadows = [json.loads(r.value or b"{}") for r in drain(client, [shadow_topic(output)], quiet_s=3.0)]
    assert shadows and {version_of_artifact[s["model_version"]] for s in shadows} == {"3"}
    assert all(s["variant"] == "challenger" for s in shadows)
