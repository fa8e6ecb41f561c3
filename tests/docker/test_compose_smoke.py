"""docker-compose.yml for real: the whole stack on a Docker engine, read back with kcat (`make test-docker`).

The file users run is the one tested; deploy/compose.local.yml only swaps in host networking, the locally
built images and free ports. The smoke test replays rides through the stack's own producer, sends poison
with kcat, reads predictions and dead letters back with kcat, checks /readyz and /metrics of every service,
and tears everything down (containers, network, volume).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.broker import free_ports
from tests.containers import engine_host

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
RIDES = 300
SERVICES = ("duration", "tip", "cost")
PROCESSES = (*SERVICES, "evaluator")
WAIT_S = 600.0
READY_S = 240.0  # images are built already; a service not ready by then is broken (its log says why)


def compose_command() -> list[str]:
    """Debian's docker-compose (1.29), or the v2 plugin when that is what the machine has."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


class Stack:
    def __init__(self, compose_file: Path, host: str) -> None:
        self.compose_file = compose_file
        kafka, controller, mlflow, *metrics = free_ports(3 + len(PROCESSES))
        self.kafka_port = kafka
        self.mlflow_port = mlflow
        self.metrics_ports = dict(zip(PROCESSES, metrics, strict=True))
        self.env = {
            **os.environ,
            "DOCKER_HOST": host,
            "COMPOSE_PROJECT_NAME": f"ridestream-smoke-{uuid.uuid4().hex[:6]}",
            "RIDESTREAM_KAFKA_PORT": str(kafka),
            "RIDESTREAM_CONTROLLER_PORT": str(controller),
            "RIDESTREAM_MLFLOW_PORT": str(mlflow),
            "RIDESTREAM_SMOKE_RIDES": str(RIDES),
            **{f"RIDESTREAM_{s.upper()}_PORT": str(p) for s, p in self.metrics_ports.items()},
        }

    def compose(self, *args: str, timeout_s: float = WAIT_S) -> subprocess.CompletedProcess[str]:
        files = ["-f", str(self.compose_file), "-f", str(REPO / "deploy" / "compose.local.yml")]
        return subprocess.run(
            [*compose_command(), *files, *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"


def kcat(*args: str, stdin: str | None = None, timeout_s: float = 60.0) -> str:
    done = subprocess.run(
        ["kcat", *args], input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert done.returncode == 0, done.stderr[-1500:]
    return done.stdout


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode()
    except OSError as error:  # not listening yet, or 503 (urllib raises HTTPError, an OSError)
        return getattr(error, "code", 0) or 0, ""


def wait_until(condition: object, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.5)  # poll interval of a real condition


def read_all(bootstrap: str, topic: str, expected: int) -> list[dict[str, object]]:
    """Every record of `topic` as kcat sees it (JSON envelope with headers), once `expected` are there."""
    records: list[dict[str, object]] = []

    def enough() -> bool:
        out = kcat("-C", "-b", bootstrap, "-t", topic, "-e", "-q", "-J")
        records[:] = [json.loads(line) for line in out.splitlines() if line.strip()]
        return len(records) >= expected

    wait_until(enough, f"{expected} records in {topic}")
    return records


@pytest.fixture
def stack() -> Iterator[Stack]:
    host = engine_host()
    assert host is not None, (
        "no Docker engine answers: run `python -m stack.docker up` (make test-docker does)"
    )
    assert shutil.which("kcat"), "kcat is needed (apt-get install kcat)"
    running = Stack(Path(os.environ.get("RIDESTREAM_COMPOSE_FILE", REPO / "docker-compose.yml")), host)
    try:
        yield running
    finally:
        down = running.compose("down", "--volumes", "--remove-orphans", timeout_s=180)
        assert down.returncode == 0, down.stderr[-1500:]


def test_the_compose_stack_scores_rides_dead_letters_poison_and_reports_ready(stack: Stack) -> None:
    up = stack.compose("up", "-d", "--no-build", "kafka", "mlflow", "trainer", *PROCESSES)
    assert up.returncode == 0, up.stderr[-3000:]
    for service, port in stack.metrics_ports.items():
        wait_until(
            lambda p=port: get(f"http://127.0.0.1:{p}/readyz")[0] == 200, f"{service} is ready", READY_S
        )

    # The trainer registered every model on the compose stack's MLflow server, and the services serve them.
    from mlflow.tracking import MlflowClient

    registry = MlflowClient(tracking_uri=f"http://127.0.0.1:{stack.mlflow_port}")
    for model in ("duration", "dynamic_duration", "tip", "cost"):
        assert registry.get_model_version_by_alias(model, "champion").version == "1"
    status, ready = get(f"http://127.0.0.1:{stack.metrics_ports['tip']}/readyz")
    assert json.loads(ready)["registry_versions"] == "tip=1"

    produced = stack.compose("run", "--rm", "producer", timeout_s=WAIT_S)
    assert produced.returncode == 0, produced.stderr[-3000:]
    kcat("-P", "-b", stack.bootstrap, "-t", "rides.events", "-k", "poison", stdin="not json at all\n")

    started = read_all(stack.bootstrap, "predictions.tip", RIDES)
    assert len({json.loads(str(r["payload"]))["ride_id"] for r in started}) == RIDES
    for service in ("duration", "cost"):
        assert len(read_all(stack.bootstrap, f"predictions.{service}", RIDES)) >= RIDES
    for service in SERVICES:
        dead = read_all(stack.bootstrap, f"dlq.{service}", 1)
        assert dead[0]["key"] == "poison" and "ridestream.reason" in json.dumps(dead[0]["headers"])
        status, body = get(f"http://127.0.0.1:{stack.metrics_ports[service]}/metrics")
        assert status == 200 and f'ridestream_predictions_out_total{{service="{service}"}}' in body

    def judged() -> int:
        snapshots = kcat("-C", "-b", stack.bootstrap, "-t", "ridestream.evaluations", "-e", "-q")
        latest = {s["partition"]: s for s in map(json.loads, filter(None, snapshots.splitlines()))}
        return sum(f["count"] for s in latest.values() for f in s["figures"] if f["service"] == "cost")

    wait_until(lambda: judged() == RIDES, f"the evaluator judged {RIDES} cost predictions")
    status, body = get(f"http://127.0.0.1:{stack.metrics_ports['evaluator']}/metrics")
    assert status == 200 and "ridestream_live_count{" in body
