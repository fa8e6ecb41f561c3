"""The service registry and the scoring process, on the real broker: a scoring process imports only what it
runs, and a service added as one registry entry runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from consumers.features import StartColumns
from consumers.registry import SERVICES, ServiceSpec, service_spec
from consumers.scoring import StartScorer
from consumers.serve import serve
from schemas.predictions import TipPrediction
from shared.kafka import make_producer
from shared.serde import encode
from shared.settings import KafkaSettings
from tests.factories import ride_completed, ride_progress, ride_started
from tests.integration.topics import REPO, drain

# What the operator's stack and the test tools bring in; none of it belongs in a scoring process. rich and
# psutil are not listed: scikit-learn loads them on its own when installed (sklearn.callback's progress bar,
# joblib's loky); that no ridestream runtime module imports them is the import-linter contract's job
# (pyproject.toml).
NOT_IN_A_SCORING_PROCESS = ("typer", "testcontainers", "docker", "faust", "stack")

# Runs the real entry point (`python -m consumers.tip`) and reports the modules it had loaded when it ended.
REPORT_MODULES = (
    "import atexit, json, runpy, sys\n"
    "atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=open(sys.argv[1], 'w')))\n"
    "runpy.run_module('consumers.tip', run_name='__main__', alter_sys=True)\n"
)


def test_a_scoring_process_imports_only_what_it_runs(
    kafka_bootstrap: str, topic_factory: Callable[..., str], trained_models: Path, tmp_path: Path
) -> None:
    source, target = topic_factory("imports-in"), topic_factory("imports-out")
    producer = make_producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(source, encode(ride_started("ride-imports")), b"ride-imports")
    assert producer.flush(30) == 0
    report = tmp_path / "modules.json"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TIP_INPUT_TOPIC": source,
        "TIP_OUTPUT_TOPIC": target,
        "TIP_DLQ_TOPIC": target + ".dlq",
        "TIP_GROUP_ID": f"imports-{uuid.uuid4().hex[:8]}",
        "TIP_MODELS_DIR": str(trained_models),
        "TIP_MAX_MESSAGES": "1",
        "TIP_IDLE_TIMEOUT_S": "30",
    }
    done = subprocess.run(
        [sys.executable, "-c", REPORT_MODULES, str(report)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    loaded = json.loads(report.read_text())
    assert "shared.runner" in loaded and "confluent_kafka" in loaded  # it really ran the runtime
    leaked = [m for m in loaded if m.split(".")[0] in NOT_IN_A_SCORING_PROCESS]
    assert leaked == []
    outputs = drain({"bootstrap.servers": kafka_bootstrap}, [target], expected=1)
    assert [json.loads(r.value or b"{}")["ride_id"] for r in outputs] == ["ride-imports"]


class HalfFare:
    """A toy model: predicts half a dollar per mile of the ride's distance column."""

    def predict(self, features: np.ndarray) -> np.ndarray:
        return 0.5 * np.asarray(features, dtype=float)[:, 2]


def as_is(predicted: np.ndarray, _columns: StartColumns) -> np.ndarray:
    return predicted


def toy_scorer(_models_dir: Path) -> StartScorer:
    return StartScorer(TipPrediction, "toy", "predicted_tip_usd", as_is, HalfFare(), "toy-1")


TOY = ServiceSpec("toy", "TOY_", TipPrediction, "predicted_tip_usd", ("toy",), toy_scorer)


def test_a_service_added_as_one_registry_entry_runs_end_to_end_on_the_broker(
    kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    registry: Sequence[ServiceSpec] = (*SERVICES, TOY)
    spec = service_spec("toy", tuple(registry))
    source, target, dlq = topic_factory("toy-in"), topic_factory("toy-out"), topic_factory("toy-dlq")
    producer = make_producer({"bootstrap.servers": kafka_bootstrap})
    events = [ride_started(f"toy-{i}", trip_distance_miles=float(i + 1)) for i in range(20)]
    for event in [*events, ride_progress("toy-0"), ride_completed("toy-0")]:
        producer.produce(source, encode(event), event.ride_id.encode())
    producer.produce(source, b"not json", b"poison")
    assert producer.flush(30) == 0

    # The spec's own settings: TOY_* defaults and names, overridden here as CLI flags would be.
    settings = spec.settings({"models_dir": tmp_path})
    assert (settings.service, settings.group_id, settings.output_topic) == (
        "toy",
        "ridestream-toy",
        "predictions.toy",
    )
    overrides = {
        "input_topic": source,
        "output_topic": target,
        "dlq_topic": dlq,
        "models_dir": tmp_path,
        "group_id": f"toy-{uuid.uuid4().hex[:8]}",
        "max_messages": len(events) + 3,
        "idle_timeout_s": 20.0,
    }
    stats: dict[str, object] = {}
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    thread = threading.Thread(
        target=lambda: stats.update(run=serve(spec, overrides, kafka, threading.Event()))
    )
    thread.start()
    thread.join(120)
    assert "run" in stats, "the toy service did not finish its bounded run"

    config = {"bootstrap.servers": kafka_bootstrap}
    predictions = {
        json.loads(r.value or b"{}")["ride_id"]: json.loads(r.value or b"{}")
        for r in drain(config, [target], expected=len(events))
    }
    assert set(predictions) == {e.ride_id for e in events}
    assert predictions["toy-3"]["predicted_tip_usd"] == 2.0 and predictions["toy-3"]["model_name"] == "toy"
    dead = drain(config, [dlq], expected=1)
    assert [dict(r.headers)["ridestream.reason"] for r in dead] == [b"undecodable"]
