"""Canary rollouts decided without a person, on the real broker, while rides flow: a cost model trained on
shuffled targets is rolled back before its last step (users saw it only on its share of rides), then another
training run as good as the champion is promoted."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.faults import Load, Verifier, publish_at_rate
from consumers.routing import ride_bucket
from shared.registry import CHAMPION, ModelRegistry
from stack.fleet import start_service, stop_service, wait_ready
from tests.integration.rollouts import deploy_options, publish_next, rollout, split_load, wait_until_over
from tests.integration.test_hot_reload import register_corrupt_version
from tests.integration.topics import ridestream

RIDES = 9000
RATE = 4000.0
SHARE = 0.5


def test_a_bad_canary_is_rolled_back_and_a_good_one_promoted_without_a_person(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    registry_with_challengers: Path,
    controller: dict[str, str],
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(registry_with_challengers)
    registry.set_alias("cost", CHAMPION, "1")
    artifact = {n: registry.describe(registry.version_of("cost", None, n)).artifact_version for n in "123"}
    rides, output = topic_factory("rides"), topic_factory("predictions-cost")
    group = f"test-cost-{uuid.uuid4().hex[:6]}"
    service_env = {
        "INPUT_TOPIC": rides,
        "OUTPUT_TOPIC": output,
        "GROUP_ID": group,
        "CONTROL_TOPIC": controller["control"],
    }
    evaluator_env = {
        "INPUT_TOPIC": rides,
        "PREDICTION_TOPICS": output,
        "EVALUATIONS_TOPIC": controller["evaluations"],
        "GROUP_ID": controller["evaluator_group"],
        "PUBLISH_INTERVAL_S": "1",
    }
    deploy_args = deploy_options(registry_with_challengers, kafka_bootstrap, controller)
    # Accuracy is what this test is about: a loaded 2-core machine's p99 is not held against the model.
    gates = ("--steps", "50,100", "--min-rides", "300", "--tolerance", "0.2", "--max-p99-ms", "120000")
    load = Load.synthetic(RIDES, seed=44)
    verifier = Verifier(kafka_bootstrap, output)
    verifier.start()
    logs = tmp_path / "logs"
    cost = start_service("cost", 1, kafka_bootstrap, registry_with_challengers, logs, service_env)
    evaluator = start_service("evaluator", 1, kafka_bootstrap, registry_with_challengers, logs, evaluator_env)
    instances = [cost, evaluator]
    outputs: list[dict[str, object]] = []
    try:
        wait_ready(instances)
        # Each canary's rides are published once it has started: published before, on a loaded machine
        # the service could score them all before the canary took effect, leaving it nothing to judge.
        first, second = split_load(load.events, (0.4, 0.6))
        bad = ridestream(
            "deploy", "start", "cost", "--strategy", "canary", "--challenger", "3", *gates, *deploy_args
        )
        assert bad.returncode == 0, bad.stderr
        sent = threading.Event()
        publish_at_rate(kafka_bootstrap, rides, first, RATE, sent)
        rejected = wait_until_over(kafka_bootstrap, controller, instances)
        assert rejected.status == "rolled_back", rejected.decisions[-1]
        assert rejected.step < len(rejected.steps) - 1, "rolled back before its last step"
        assert "exceeds the champion's" in rejected.decisions[-1].reason
        assert registry.alias_version("cost", CHAMPION) == "1"

        good = ridestream(
            "deploy", "start", "cost", "--strategy", "canary", "--challenger", "2", *gates, *deploy_args
        )
        assert good.returncode == 0, good.stderr
        publish_next(kafka_bootstrap, rides, second, RATE, sent)
        promoted = wait_until_over(kafka_bootstrap, controller, instances)
        assert promoted.status == "promoted", promoted.decisions[-1]
        assert [d.action for d in promoted.decisions] == ["start", "advance", "promote"]
        assert registry.alias_version("cost", CHAMPION) == "2"

        status = ridestream("deploy", "status", "cost", "--json", *deploy_args[2:])
        assert status.returncode == 0, status.stderr
        (document,) = json.loads(status.stdout)
        assert document["status"] == "promoted" and document["last_decision"]["action"] == "promote"
        outputs = [json.loads(v) for v in verifier.values]
    finally:
        verifier.stop()
        for instance in instances:
            stop_service(instance)

    worthless = [o for o in outputs if o["model_version"] == artifact["3"]]
    assert worthless, "the shuffled model did serve its share during its canary"
    assert all(ride_bucket(str(o["ride_id"])) < SHARE for o in worthless), "only on its share of rides"
    assert all(o.get("variant") == "challenger" for o in worthless)


@pytest.mark.slow  # ~2 min: run by `make faults` and `make test-all`
def test_a_roll_across_three_instances_loses_nothing_and_a_challenger_that_cannot_load_halts_it(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    registry_with_challengers: Path,
    controller: dict[str, str],
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(registry_with_challengers)
    registry.set_alias("cost", CHAMPION, "1")
    corrupt = register_corrupt_version(registry_with_challengers, tmp_path / "corrupt", "cost", "2")
    rides, output = topic_factory("rides"), topic_factory("predictions-cost")
    group = f"test-cost-{uuid.uuid4().hex[:6]}"
    deploy_args = deploy_options(registry_with_challengers, kafka_bootstrap, controller)
    load = Load.synthetic(RIDES, seed=45)
    started = {json.loads(v)["event_id"] for _k, v in load.events if b'"ride_started"' in v}
    verifier = Verifier(kafka_bootstrap, output)
    verifier.start()
    instances = [
        start_service(
            "cost",
            n,
            kafka_bootstrap,
            registry_with_challengers,
            tmp_path / "logs",
            {
                "INPUT_TOPIC": rides,
                "OUTPUT_TOPIC": output,
                "GROUP_ID": group,
                "CONTROL_TOPIC": controller["control"],
                "GROUP_INSTANCE_ID": f"cost-{n}",
                "SESSION_TIMEOUT_S": "10",
            },
        )
        for n in (1, 2, 3)
    ]
    pids = [i.process.pid for i in instances]
    done = threading.Event()
    try:
        wait_ready(instances)
        publish_at_rate(kafka_bootstrap, rides, load.events, RATE / 2, done)
        rolled = ridestream(
            "deploy", "start", "cost", "--strategy", "rolling", "--challenger", "2", *deploy_args
        )
        assert rolled.returncode == 0, rolled.stderr
        finished = wait_until_over(kafka_bootstrap, controller, instances)
        assert finished.status == "promoted", finished.decisions[-1]
        assert finished.switched == ["cost-1", "cost-2", "cost-3"]

        halted = ridestream(
            "deploy", "start", "cost", "--strategy", "rolling", "--challenger", corrupt, *deploy_args
        )
        assert halted.returncode == 0, halted.stderr
        stopped = wait_until_over(kafka_bootstrap, controller, instances)
        assert stopped.status == "rolled_back" and stopped.switched == ["cost-1"], stopped.decisions[-1]
        assert "halted" in stopped.decisions[-1].reason
        assert done.wait(120)
        deadline = time.monotonic() + 120
        while not set(verifier.counts) >= started and time.monotonic() < deadline:
            time.sleep(0.5)  # the verifier drains the output topic on its own thread
    finally:
        verifier.stop()
        for instance in instances:
            stop_service(instance)
    assert set(verifier.counts) >= started, f"{len(started - set(verifier.counts))} rides never scored"
    assert [i.process.pid for i in instances] == pids
    assert "refused cost=" in instances[0].log_path.read_text(), "the first instance refused the corrupt one"
    assert all("refused" not in i.log_path.read_text() for i in instances[1:]), "the others never tried it"


@pytest.mark.slow  # ~1.5 min: run by `make faults` and `make test-all`
def test_a_canary_carries_on_through_a_kill_9_of_its_instance_mid_step(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    registry_with_challengers: Path,
    controller: dict[str, str],
    tmp_path: Path,
) -> None:
    import signal

    registry = ModelRegistry(registry_with_challengers)
    registry.set_alias("cost", CHAMPION, "1")
    rides, output = topic_factory("rides"), topic_factory("predictions-cost")
    env = {
        "INPUT_TOPIC": rides,
        "OUTPUT_TOPIC": output,
        "GROUP_ID": f"test-cost-{uuid.uuid4().hex[:6]}",
        "CONTROL_TOPIC": controller["control"],
        "GROUP_INSTANCE_ID": "cost-1",
        "SESSION_TIMEOUT_S": "10",
    }
    evaluator_env = {
        "INPUT_TOPIC": rides,
        "PREDICTION_TOPICS": output,
        "EVALUATIONS_TOPIC": controller["evaluations"],
        "GROUP_ID": controller["evaluator_group"],
        "PUBLISH_INTERVAL_S": "1",
    }
    load = Load.synthetic(RIDES, seed=46)
    started = {json.loads(v)["event_id"] for _k, v in load.events if b'"ride_started"' in v}
    verifier = Verifier(kafka_bootstrap, output)
    verifier.start()
    logs = tmp_path / "logs"
    cost = start_service("cost", 1, kafka_bootstrap, registry_with_challengers, logs, env)
    evaluator = start_service("evaluator", 1, kafka_bootstrap, registry_with_challengers, logs, evaluator_env)
    instances = [cost, evaluator]
    done = threading.Event()
    try:
        wait_ready(instances)
        publish_at_rate(kafka_bootstrap, rides, load.events, RATE / 2, done)
        gates = ("--steps", "50,100", "--min-rides", "300", "--tolerance", "0.2", "--max-p99-ms", "120000")
        options = deploy_options(registry_with_challengers, kafka_bootstrap, controller)
        began = ridestream(
            "deploy", "start", "cost", "--strategy", "canary", "--challenger", "2", *gates, *options
        )
        assert began.returncode == 0, began.stderr
        deadline = time.monotonic() + 60
        while sum(1 for v in verifier.values if b'"variant":"challenger"' in v) < 100:
            assert time.monotonic() < deadline, "the canary's first step never served"
            time.sleep(0.2)  # the verifier drains the output on its own thread
        current = rollout(kafka_bootstrap, controller)
        assert current is not None and current.step == 0, "killed in the middle of step 1"
        stop_service(cost, signal.SIGKILL)
        cost = start_service("cost", 1, kafka_bootstrap, registry_with_challengers, logs, env)
        instances[0] = cost
        wait_ready([cost])
        finished = wait_until_over(kafka_bootstrap, controller, instances)
        assert finished.status == "promoted", finished.decisions[-1]
        assert [d.action for d in finished.decisions] == ["start", "advance", "promote"]
        assert done.wait(120)
        deadline = time.monotonic() + 120
        while not set(verifier.counts) >= started and time.monotonic() < deadline:
            time.sleep(0.5)  # the verifier drains the output topic on its own thread
    finally:
        verifier.stop()
        for instance in instances:
            stop_service(instance)
    assert set(verifier.counts) >= started, f"{len(started - set(verifier.counts))} rides never scored"
