"""The estimate service as a real process (`ridestream serve` on uvicorn), on the real broker and registry:
its estimates are the stream's start predictions, it follows the control topic without a restart, and bad
input gets a 4xx that names the field, never a 5xx (schemathesis over its own OpenAPI document)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from consumers.estimate.estimates import FIGURES
from schemas.events import RideStarted
from shared.kafka import make_producer
from shared.registry import CHAMPION, ModelRegistry
from shared.serde import encode
from stack.fleet import free_port, start_service, stop_service, wait_ready
from tests.factories import ride_started
from tests.integration.topics import drain, ridestream
from tests.integration.web import WAIT_S, Http, generated_requests


class EstimateService(Http):
    def __init__(self, command: list[str], port: int, log: Path, control: str) -> None:
        super().__init__(command, port, log)
        self.control = control

    def post(self, body: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/estimates", json=body, timeout=10)


@pytest.fixture(scope="module")
def estimate_service(
    kafka_bootstrap: str, registry_with_challengers: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EstimateService]:
    ModelRegistry(registry_with_challengers).set_alias("cost", CHAMPION, "1")
    control = f"control-{uuid.uuid4().hex[:10]}"
    models = str(registry_with_challengers)
    command = ["serve", "--models", models, "-b", kafka_bootstrap, "--control-topic", control]
    log = tmp_path_factory.mktemp("estimate") / "estimate.log"
    service = EstimateService(command, free_port(), log, control)
    try:
        service.wait_ready()
        yield service
    finally:
        assert service.stop() == 0, log.read_text()[-3000:]


RIDE_REQUEST_FIELDS = {
    "ride_id", "pickup_zone", "dropoff_zone", "pickup_time", "trip_distance_miles", "passenger_count",
    "payment_type", "vendor_id", "rate_code", "trip_type",
}  # fmt: skip


def request_of(event: RideStarted) -> dict[str, Any]:
    """What the TaxiApp would have asked for this ride."""
    return event.model_dump(mode="json", include=RIDE_REQUEST_FIELDS)


def test_the_estimate_of_a_ride_is_the_streams_start_prediction_of_it(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    registry_with_challengers: Path,
    estimate_service: EstimateService,
    tmp_path: Path,
) -> None:
    events = [
        ride_started(
            f"r-{n}", pickup_zone=1 + n * 7 % 260, trip_distance_miles=0.5 + n * 0.37, payment_type=1 + n % 2
        )
        for n in range(40)
    ]
    response = estimate_service.post([request_of(e) for e in events])
    assert response.status_code == 200, response.text
    estimates = {e["ride_id"]: e for e in response.json()["estimates"]}
    assert list(estimates) == [e.ride_id for e in events], "in the order asked"

    rides = topic_factory("rides")
    outputs = {name: topic_factory(f"predictions-{name}") for name in ("duration", "tip", "cost")}
    client = {"bootstrap.servers": kafka_bootstrap}
    producer = make_producer(client)
    for event in events:
        producer.produce(rides, encode(event), event.ride_id.encode())
    assert producer.flush(30) == 0
    env = {"INPUT_TOPIC": rides, "CONTROL_TOPIC": estimate_service.control}
    instances = [
        start_service(
            name, 1, kafka_bootstrap, registry_with_challengers, tmp_path, {**env, "OUTPUT_TOPIC": t}
        )
        for name, t in outputs.items()
    ]
    try:
        wait_ready(instances)
        streamed = {name: drain(client, [t], expected=len(events)) for name, t in outputs.items()}
    finally:
        for instance in instances:
            stop_service(instance)

    fields = {service: (figure, field) for figure, (service, field) in FIGURES.items()}
    for name, records in streamed.items():
        figure, field = fields[name]
        assert len(records) == len(events)
        for record in records:
            prediction = json.loads(record.value or b"{}")
            mine = estimates[prediction["ride_id"]][figure]
            assert (mine["value"], mine["model_version"]) == (prediction[field], prediction["model_version"])


def test_a_moved_alias_reaches_the_estimates_without_a_restart(
    kafka_bootstrap: str, registry_with_challengers: Path, estimate_service: EstimateService
) -> None:
    registry = ModelRegistry(registry_with_challengers)
    artifact = {n: registry.describe(registry.version_of("cost", None, n)).artifact_version for n in "12"}
    body = request_of(ride_started("r-reload"))
    assert estimate_service.post(body).json()["estimates"][0]["total_usd"]["model_version"] == artifact["1"]
    moved = ridestream(
        "models", "alias", "cost", "champion", "2", "--models", str(registry_with_challengers),
        "-b", kafka_bootstrap, "--control-topic", estimate_service.control,
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    deadline = time.monotonic() + WAIT_S
    while estimate_service.post(body).json()["estimates"][0]["total_usd"]["model_version"] != artifact["2"]:
        assert time.monotonic() < deadline, "the estimate service never swapped cost v2 in"
        time.sleep(0.2)  # each request is also the warm-up batch of the version being loaded
    versions = httpx.get(f"{estimate_service.url}/readyz").json()["model_versions"]
    assert versions["cost"] == artifact["2"]
    registry.set_alias("cost", CHAMPION, "1")


def test_bad_input_gets_a_422_naming_the_field_and_the_metrics_count_it(
    estimate_service: EstimateService,
) -> None:
    good = request_of(ride_started("r-bad"))
    refused = estimate_service.post([good, {**good, "pickup_zone": 999}])
    assert refused.status_code == 422
    assert "body.1.pickup_zone" in refused.json()["detail"] and "265" in refused.json()["detail"]
    naive = estimate_service.post({**good, "pickup_time": "2026-12-01T08:30:00"})
    assert naive.status_code == 422 and "body.pickup_time" in naive.json()["detail"]
    assert estimate_service.post([]).status_code == 422
    assert httpx.get(f"{estimate_service.url}/nowhere").status_code == 404
    metrics = httpx.get(f"{estimate_service.url}/metrics").text
    assert 'ridestream_http_requests_total{route="/v1/estimates",status="422"}' in metrics
    assert "ridestream_http_request_seconds_bucket" in metrics


def test_no_generated_request_gets_a_5xx(estimate_service: EstimateService) -> None:
    found = generated_requests(estimate_service.url, examples=50)
    assert found.returncode == 0, found.stdout[-4000:]
