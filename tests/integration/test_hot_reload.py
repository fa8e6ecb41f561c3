"""Hot reload on the real broker, under load: moving `champion` changes what a running process serves.

One exactly-once tip instance scores rides published at a steady rate while `ridestream models alias` moves
the champion from v1 to v2, then to a corrupt v3. A read_committed verifier reads the output all along.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.faults import Load, Verifier, publish_at_rate
from consumers.training import train_models
from producer.synthetic import synthesize_trips
from shared.models import artifact_path, read_metadata
from shared.registry import ModelRegistry
from stack.fleet import ServiceProcess, start_service, stop_service, wait_ready
from tests.integration.topics import ridestream

# Run after the parallel part of `make test`, alone on the machine: the swap's output pause is timed.
pytestmark = pytest.mark.serial

RATE = 500.0  # events/s: 1,000 rides (~17k events) take ~35 s, long enough for both alias moves
SWITCH_S = 60.0


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with two fits of every model: v1 champions, v2 not."""
    models = tmp_path_factory.mktemp("hot-reload-registry")
    train_models(synthesize_trips(3000, seed=31).trips, models)
    train_models(synthesize_trips(3000, seed=32).trips, models)
    return models


def register_corrupt_version(models: Path, staging: Path, model: str = "tip", base: str = "2") -> str:
    """A new version of `model`: version `base`'s files, its artifact damaged so it no longer matches the
    passport's sha256."""
    registry = ModelRegistry(models)
    registry.download(registry.version_of(model, None, base).run_id, staging)
    artifact = artifact_path(staging, model)
    artifact.write_bytes(artifact.read_bytes()[:-64] + b"\0" * 64)
    return registry.register(staging, read_metadata(staging, model))


def readiness(instance: ServiceProcess) -> dict[str, object]:
    with urllib.request.urlopen(instance.url("/readyz"), timeout=2) as response:
        return dict(json.load(response))


def metric(instance: ServiceProcess, name: str) -> float:
    with urllib.request.urlopen(instance.url("/metrics"), timeout=2) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))


def wait_for(condition: Callable[[], bool], what: str, instance: ServiceProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert instance.process.poll() is None, f"the service exited:\n{instance.log_tail(40)}"
        assert time.monotonic() < deadline, (
            f"{what} did not happen in {timeout_s:.0f}s:\n{instance.log_tail()}"
        )
        time.sleep(0.2)  # poll interval of the condition, not a stand-in for readiness


def test_moving_champion_under_load_swaps_versions_in_a_running_process_exactly_once(
    kafka_bootstrap: str, topic_factory: Callable[..., str], two_versions: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry(two_versions)
    v1, v2 = (registry.describe(registry.version_of("tip", None, n)).artifact_version for n in ("1", "2"))
    assert v1 != v2
    topics = {
        "INPUT_TOPIC": topic_factory("rides"),
        "OUTPUT_TOPIC": topic_factory("predictions-tip"),
        "DLQ_TOPIC": topic_factory("dlq-tip"),
        "CONTROL_TOPIC": f"control-{uuid.uuid4().hex[:12]}",
        "GROUP_ID": f"test-tip-{uuid.uuid4().hex[:6]}",
        "PROCESSING_GUARANTEE": "exactly_once",
    }
    alias_args = (
        "--models",
        str(two_versions),
        "-b",
        kafka_bootstrap,
        "--control-topic",
        topics["CONTROL_TOPIC"],
    )
    load = Load.synthetic(1000, seed=33)
    started_ids = {json.loads(value)["event_id"] for _key, value in load.events if b'"ride_started"' in value}
    verifier = Verifier(kafka_bootstrap, topics["OUTPUT_TOPIC"])
    verifier.start()
    instance = start_service("tip", 1, kafka_bootstrap, two_versions, tmp_path / "logs", topics)
    pid = instance.process.pid
    done = threading.Event()
    try:
        wait_ready([instance])
        assert readiness(instance)["registry_versions"] == "tip=1"
        publish_at_rate(kafka_bootstrap, topics["INPUT_TOPIC"], load.events, RATE, done)
        wait_for(lambda: sum(verifier.counts.values()) > 200, "first outputs", instance, SWITCH_S)

        moved = ridestream("models", "alias", "tip", "champion", "2", *alias_args)
        assert moved.returncode == 0, moved.stderr
        wait_for(
            lambda: readiness(instance)["registry_versions"] == "tip=2", "the swap to v2", instance, SWITCH_S
        )
        assert readiness(instance)["version"] == v2

        corrupt = register_corrupt_version(two_versions, tmp_path / "corrupt")
        moved = ridestream("models", "alias", "tip", "champion", corrupt, *alias_args)
        assert moved.returncode == 0, moved.stderr
        wait_for(
            lambda: metric(instance, "ridestream_model_refused_total") >= 1, "the refusal", instance, SWITCH_S
        )
        assert readiness(instance)["registry_versions"] == "tip=2"
        listed = json.loads(ridestream("models", "list", "--json", "--models", str(two_versions)).stdout)
        refusal = next(v["refused"] for v in listed if v["model"] == "tip" and v["version"] == corrupt)
        assert "corrupt" in refusal

        assert done.wait(120), "the load did not finish publishing"
        wait_for(lambda: set(verifier.counts) >= started_ids, "every ride scored", instance, 120)
    finally:
        verifier.stop()
        stop_service(instance)
        shutil.rmtree(tmp_path / "corrupt", ignore_errors=True)

    assert instance.process.pid == pid and instance.process.returncode == 0, instance.log_tail(40)
    assert set(verifier.counts) == started_ids, "every input scored"
    assert max(verifier.counts.values()) == 1, "none scored twice"
    seen = [version for versions in verifier.versions.values() for version in versions]
    assert set(seen) == {v1, v2}, "only v1 and v2 ever served"
    for partition, versions in verifier.versions.items():
        switch = versions.index(v2) if v2 in versions else len(versions)
        assert set(versions[:switch]) <= {v1} and set(versions[switch:]) <= {v2}, (
            f"partition {partition} went back to v1 after v2"
        )
    gaps = [later - earlier for earlier, later in zip(verifier.arrivals, verifier.arrivals[1:])]
    assert max(gaps) < 1.0, f"the output paused for {max(gaps):.2f}s"
