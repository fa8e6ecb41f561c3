"""Blue/green on the real broker, under exactly-once, while rides flow: two deployments of the cost service
(consumer groups of their own), users switched to green, back to blue, and to green again.

A read_committed reader of the user topic finds every input scored exactly once, and each by the version of
the deployment the control log says owned its offset: the rollout records' handovers and the switch records'
cut-overs, replayed with the same rule the instances use (shared/handover.py).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.faults import Load, Verifier, publish_at_rate
from schemas.control import RolloutState, SwitchRecord
from schemas.topics import shadow_topic
from shared.handover import HandoverStep, first_at, owner_at
from shared.registry import CHAMPION, ModelRegistry
from stack.deploy import read_fleet_state
from stack.fleet import ServiceProcess, start_service, stop_service, wait_ready
from tests.integration.rollouts import deploy_options, publish_next, rollout, split_load, wait_until_over
from tests.integration.topics import drain, ridestream

RIDES = 4000
RATE = 1500.0
WAIT_S = 90.0
# the deployment each test instance number belongs to
BLUE, GREEN = 1, 2


def wait_for(condition: Callable[[], bool], what: str, instances: list[ServiceProcess]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        for instance in instances:
            assert instance.process.poll() is None, instance.log_tail(30)
        assert time.monotonic() < deadline, f"{what} did not happen in {WAIT_S:.0f}s"
        time.sleep(0.5)  # polls the control topic, where instances report every 2 s


class BlueGreen:
    """Two deployments of cost on this test's topics, and the `ridestream deploy` commands against them."""

    def __init__(
        self,
        bootstrap: str,
        registry: Path,
        topic_factory: Callable[..., str],
        logs: Path,
        names: dict[str, str] | None = None,
    ) -> None:
        self.bootstrap, self.registry, self.logs = bootstrap, registry, logs
        self.rides, self.output = topic_factory("rides"), topic_factory("predictions-cost")
        self.names = names or {
            "control": f"control-{uuid.uuid4().hex[:10]}",
            "evaluations": f"evaluations-{uuid.uuid4().hex[:10]}",
            "evaluator_group": f"test-evaluator-{uuid.uuid4().hex[:6]}",
        }
        ModelRegistry(registry).set_alias("cost", CHAMPION, "1")
        self.group = f"test-cost-{uuid.uuid4().hex[:6]}"
        self.instances: dict[int, ServiceProcess] = {}
        models = ModelRegistry(registry)
        self.version_of = {
            models.describe(models.version_of("cost", None, n)).artifact_version: n for n in "123"
        }

    def start(self, number: int) -> ServiceProcess:
        env = {
            "INPUT_TOPIC": self.rides,
            "OUTPUT_TOPIC": self.output,
            "GROUP_ID": self.group,
            "CONTROL_TOPIC": self.names["control"],
            "PROCESSING_GUARANTEE": "exactly_once",
            "DEPLOYMENT": "blue" if number == BLUE else "green",
            # a killed instance's partitions move on after 10 s, not the default 45
            "SESSION_TIMEOUT_S": "10",
        }
        self.instances[number] = start_service("cost", number, self.bootstrap, self.registry, self.logs, env)
        return self.instances[number]

    def evaluator(self) -> ServiceProcess:
        env = {
            "INPUT_TOPIC": self.rides,
            "PREDICTION_TOPICS": f"{self.output},{shadow_topic(self.output)}",
            "EVALUATIONS_TOPIC": self.names["evaluations"],
            "GROUP_ID": self.names["evaluator_group"],
            "PUBLISH_INTERVAL_S": "1",
        }
        self.instances[0] = start_service("evaluator", 1, self.bootstrap, self.registry, self.logs, env)
        return self.instances[0]

    def deploy(self, *command: str) -> None:
        options = deploy_options(self.registry, self.bootstrap, self.names)
        # (a switch moves no alias: it takes no registry)
        done = ridestream("deploy", *command, *(options[2:] if command[0] == "switch" else options))
        assert done.returncode == 0, done.stderr

    def rollout(self) -> RolloutState | None:
        return rollout(self.bootstrap, self.names)

    def green_serves(self, version: str) -> bool:
        """Every green instance reports serving `version` under the rollout's current epoch."""
        fleet = read_fleet_state(
            {"bootstrap.servers": self.bootstrap},
            self.names["control"],
            self.names["evaluations"],
            self.names["evaluator_group"],
        )
        state = fleet.rollouts.get("cost")
        green = [s for s in fleet.statuses.get("cost", []) if s.get("deployment") == "green"]
        return (
            state is not None
            and bool(green)
            and all(s.get("epoch") == state.epoch and s.get("serving") == f"cost={version}" for s in green)
        )

    def stop(self) -> None:
        for instance in self.instances.values():
            stop_service(instance)


def replay_owners(bootstrap: str, control: str) -> tuple[RolloutState, Callable[[int, int], str | None]]:
    """The last rollout record, and (partition, offset) → the deployment the control log says published
    it: the handovers of that record, the cut-overs of the switch records in log order."""
    switches: dict[tuple[str, int], list[tuple[int, int]]] = {}
    last: RolloutState | None = None
    for record in drain({"bootstrap.servers": bootstrap}, [control], quiet_s=3.0, isolation="read_committed"):
        key = (record.key or b"").decode()
        if key.startswith("rollout/"):
            last = RolloutState.model_validate_json(record.value or b"")
        elif key.startswith("switch/"):
            switch = SwitchRecord.model_validate_json(record.value or b"")
            switches.setdefault((switch.deployment, switch.partition), []).append(
                (switch.epoch, switch.offset)
            )
    assert last is not None
    steps = [HandoverStep(h.epoch, h.to) for h in last.handovers]

    def cutover(epoch: int, deployment: str, _topic: str, partition: int) -> int | None:
        return first_at(switches.get((deployment, partition), []), epoch)

    return last, lambda partition, offset: owner_at(steps, last.live, cutover, "", partition, offset)


def assert_scored_once_by_the_owner(
    bg: BlueGreen, load: Load, expected_handovers: int, green_version: str = "2"
) -> Counter[str]:
    """Every ride_started event on the user topic exactly once, each by the version its owner served (blue
    v1, green `green_version`)."""
    client = {"bootstrap.servers": bg.bootstrap}
    started = {json.loads(v)["event_id"] for _k, v in load.events if b'"ride_started"' in v}  # scored
    users = drain(client, [bg.output], expected=len(started), isolation="read_committed")
    inputs = {}
    for record in drain(client, [bg.rides], expected=len(load.events)):
        inputs[json.loads(record.value or b"{}")["event_id"]] = (record.partition, record.offset)
    last, owner = replay_owners(bg.bootstrap, bg.names["control"])
    assert len(last.handovers) == expected_handovers, last.handovers

    predictions = [json.loads(r.value or b"{}") for r in users]
    counts = Counter(p["source_event_id"] for p in predictions)
    assert set(counts) == started, f"{len(started - set(counts))} inputs never scored for users"
    assert max(counts.values()) == 1, f"duplicates: {[e for e, n in counts.items() if n > 1][:5]}"
    by_version, wrong = Counter[str](), []
    for prediction in predictions:
        version = bg.version_of[prediction["model_version"]]
        by_version[version] += 1
        who = owner(*inputs[prediction["source_event_id"]])
        if version != ("1" if who == "blue" else green_version):
            wrong.append((prediction["source_event_id"], inputs[prediction["source_event_id"]], who, version))
    assert not wrong, f"{len(wrong)} predictions not by the owner the control log says: {wrong[:5]}"
    return by_version


def test_blue_green_switch_rollback_and_switch_again_score_each_input_once_by_the_owner(
    kafka_bootstrap: str, topic_factory: Callable[..., str], registry_with_challengers: Path, tmp_path: Path
) -> None:
    bg = BlueGreen(kafka_bootstrap, registry_with_challengers, topic_factory, tmp_path / "logs")
    load = Load.synthetic(RIDES, seed=61)
    started = {json.loads(v)["event_id"] for _k, v in load.events if b'"ride_started"' in v}
    verifier = Verifier(kafka_bootstrap, bg.output)
    verifier.start()
    try:
        blue, green = bg.start(BLUE), bg.start(GREEN)
        instances = [blue, green]
        wait_ready(instances)
        # The rides arrive in three parts, the next one once the test has switched (or rolled back): each
        # phase then has rides to score however long the one before took (a single stream could run dry
        # before the last phase on a fast machine, or stall it on a slow one).
        parts = split_load(load.events, (0.4, 0.3, 0.3))
        sent = threading.Event()
        publish_at_rate(kafka_bootstrap, bg.rides, parts[0], RATE, sent)

        def scored_by(version: str) -> int:
            return sum(
                1 for v in list(verifier.values) if bg.version_of[json.loads(v)["model_version"]] == version
            )

        bg.deploy("start", "cost", "--strategy", "blue-green", "--challenger", "2")
        wait_for(lambda: bg.green_serves("2"), "green serving v2", instances)
        assert scored_by("2") == 0, "green published for users before the switch"
        bg.deploy("switch", "cost")
        sent = publish_next(kafka_bootstrap, bg.rides, parts[1], RATE, sent)
        wait_for(lambda: scored_by("2") >= 150, "green scoring for users", instances)
        bg.deploy("rollback", "cost")
        after_rollback = scored_by("1")
        done = publish_next(kafka_bootstrap, bg.rides, parts[2], RATE, sent)
        wait_for(lambda: scored_by("1") >= after_rollback + 150, "blue scoring for users again", instances)

        bg.deploy("start", "cost", "--strategy", "blue-green", "--challenger", "2")
        wait_for(lambda: bg.green_serves("2"), "green serving v2 again", instances)
        bg.deploy("promote", "cost")
        assert done.wait(120), "the load did not finish"
        wait_for(lambda: len(verifier.values) >= len(started), "every ride scored for users", instances)
    finally:
        verifier.stop()
        bg.stop()
    # (read once the instances are stopped: their status reports keep the control topic busy)
    by_version = assert_scored_once_by_the_owner(bg, load, expected_handovers=3)
    assert by_version["1"] and by_version["2"], by_version
    assert ModelRegistry(registry_with_challengers).alias_version("cost", CHAMPION) == "2"
    shadows = drain({"bootstrap.servers": kafka_bootstrap}, [shadow_topic(bg.output)], quiet_s=3.0)
    assert shadows, "the deployment not live scored onto the shadow topic"


@pytest.mark.slow  # ~2 min: run by `make faults` and `make test-all`
def test_the_controller_rolls_a_worse_green_back_before_users_see_it_and_switches_to_a_good_one(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    registry_with_challengers: Path,
    controller: dict[str, str],
    tmp_path: Path,
) -> None:
    names = {k: controller[k] for k in ("control", "evaluations", "evaluator_group")}
    bg = BlueGreen(kafka_bootstrap, registry_with_challengers, topic_factory, tmp_path / "logs", names)
    load = Load.synthetic(9000, seed=62)
    gates = ("--min-rides", "150", "--tolerance", "0.2", "--max-p99-ms", "120000")
    try:
        instances = [bg.start(BLUE), bg.start(GREEN), bg.evaluator()]
        wait_ready(instances)
        publish_at_rate(kafka_bootstrap, bg.rides, load.events, 2500.0, done := threading.Event())

        bg.deploy("start", "cost", "--strategy", "blue-green", "--challenger", "3", *gates)
        worse = wait_until_over(kafka_bootstrap, controller, instances)
        assert worse.status == "rolled_back" and worse.step == 0, worse.decisions[-1]
        assert "exceeds the champion's" in worse.decisions[-1].reason
        assert not worse.handovers, "users never switched to the worse model"

        bg.deploy("start", "cost", "--strategy", "blue-green", "--challenger", "2", *gates)
        good = wait_until_over(kafka_bootstrap, controller, instances)
        assert good.status == "promoted", good.decisions[-1]
        assert [d.action for d in good.decisions] == ["start", "advance", "promote"]
        assert [h.to for h in good.handovers] == ["green"]
        assert done.wait(120), "the load did not finish"
    finally:
        bg.stop()
    by_version = assert_scored_once_by_the_owner(bg, load, expected_handovers=1)
    assert "3" not in by_version, "the worse model never published for users"
    assert ModelRegistry(registry_with_challengers).alias_version("cost", CHAMPION) == "2"


@pytest.mark.slow  # ~2 min: run by `make faults` and `make test-all`
def test_a_kill_9_in_the_middle_of_a_switch_and_of_a_rollback_loses_and_duplicates_nothing(
    kafka_bootstrap: str, topic_factory: Callable[..., str], registry_with_challengers: Path, tmp_path: Path
) -> None:
    import signal

    bg = BlueGreen(kafka_bootstrap, registry_with_challengers, topic_factory, tmp_path / "logs")
    load = Load.synthetic(RIDES, seed=63)
    verifier = Verifier(kafka_bootstrap, bg.output)
    verifier.start()
    try:
        instances = [bg.start(BLUE), bg.start(GREEN)]
        wait_ready(instances)
        publish_at_rate(kafka_bootstrap, bg.rides, load.events, RATE, done := threading.Event())

        bg.deploy("start", "cost", "--strategy", "blue-green", "--challenger", "2")
        wait_for(lambda: bg.green_serves("2"), "green serving v2", instances)
        bg.deploy("switch", "cost")
        stop_service(bg.instances[GREEN], signal.SIGKILL)  # the one taking over, mid-switch
        instances = [instances[0], bg.start(GREEN)]
        wait_ready(instances)
        seen = len(verifier.values)
        wait_for(lambda: len(verifier.values) >= seen + 150, "outputs after the restart", instances)

        bg.deploy("rollback", "cost")
        stop_service(bg.instances[BLUE], signal.SIGKILL)  # the one taking users back, mid-rollback
        instances = [bg.start(BLUE), instances[1]]
        wait_ready(instances)
        assert done.wait(120), "the load did not finish"
    finally:
        verifier.stop()
        bg.stop()
    by_version = assert_scored_once_by_the_owner(bg, load, expected_handovers=2)
    assert by_version["1"] and by_version["2"], by_version
