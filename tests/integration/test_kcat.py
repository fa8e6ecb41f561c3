"""A client nobody here wrote: kcat publishes rides as plain JSON lines and reads the predictions back.

This is the proof that a TaxiApp backend in any language can use the fleet with nothing but the contract in
schemas/json/ (kcat is Debian's package, installed by .ci/run).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.serde import encode
from stack.fleet import running_fleet, wait_ready
from tests.factories import ride_started

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
pytestmark = pytest.mark.skipif(
    KCAT is None, reason="kcat is not installed (apt-get install kcat; .ci/run does)"
)


def kcat(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [KCAT or "kcat", *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_rides_published_by_kcat_are_scored_and_readable_by_kcat(
    kafka_bootstrap: str,
    trained_models: Path,
    topic_factory,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    rides, predictions, dead = (
        topic_factory("kcat-rides"),
        topic_factory("kcat-tips"),
        topic_factory("kcat-dlq"),
    )
    lines = [f"{e.ride_id}|{encode(e).decode()}" for e in (ride_started(f"kcat-{i}") for i in range(25))]
    lines.append('kcat-bad|{"event_type": "ride_started", "pickup_zone": 0}')
    kcat("-b", kafka_bootstrap, "-P", "-t", rides, "-K", "|", stdin="\n".join(lines) + "\n")

    topics = {
        "tip": {
            "INPUT_TOPIC": rides,
            "OUTPUT_TOPIC": predictions,
            "DLQ_TOPIC": dead,
            "GROUP_ID": f"g-{rides}",
        }
    }
    with running_fleet({"tip": 1}, kafka_bootstrap, trained_models, tmp_path / "logs", topics) as fleet:
        wait_ready(fleet)
        out = kcat(
            "-b", kafka_bootstrap, "-C", "-t", predictions, "-o", "beginning", "-c", "25", "-f", "%k\t%s\n"
        )
        letters = kcat(
            "-b", kafka_bootstrap, "-C", "-t", dead, "-o", "beginning", "-c", "1", "-f", "%k\t%h\n"
        )

    scored = {}
    for line in out.splitlines():
        key, value = line.split("\t", 1)
        prediction = json.loads(value)
        assert prediction["ride_id"] == key and prediction["predicted_tip_usd"] >= 0
        scored[key] = prediction
    assert sorted(scored) == sorted(f"kcat-{i}" for i in range(25))
    assert letters.startswith("kcat-bad\t") and "ridestream.reason=schema_violation" in letters
