"""The TaxiApp request path end to end, every part a real process on the real broker: the backend asks the
estimate service for a new ride's estimate, publishes the ride's events, and the duration service's
corrections come back on the ride's Server-Sent Events stream, in order."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack.fleet import ServiceProcess, free_port, start_service, stop_service, wait_ready
from tests.integration.topics import drain
from tests.integration.web import WAIT_S, Http, chromium, generated_requests


class RequestPath:
    def __init__(self, backend: Http, rides: str, duration: ServiceProcess) -> None:
        self.backend, self.rides, self.duration = backend, rides, duration


@pytest.fixture(scope="module")
def request_path(
    kafka_bootstrap: str, trained_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RequestPath]:
    logs = tmp_path_factory.mktemp("request-path")
    suffix = uuid.uuid4().hex[:8]
    rides, predictions, control = f"rides-{suffix}", f"predictions.duration-{suffix}", f"control-{suffix}"
    estimate = Http(
        ["serve", "--models", str(trained_models), "-b", kafka_bootstrap, "--control-topic", control],
        free_port(),
        logs / "estimate.log",
    )
    backend = Http(
        ["backend", "--estimate-url", estimate.url, "-b", kafka_bootstrap],
        free_port(),
        logs / "backend.log",
        {"BACKEND_INPUT_TOPIC": rides, "BACKEND_PREDICTION_TOPICS": json.dumps([predictions])},
    )
    env = {"INPUT_TOPIC": rides, "OUTPUT_TOPIC": predictions, "CONTROL_TOPIC": control}
    duration = start_service("duration", 1, kafka_bootstrap, trained_models, logs, env)
    try:
        estimate.wait_ready()
        backend.wait_ready()
        wait_ready([duration])
        yield RequestPath(backend, rides, duration)
    finally:
        stop_service(duration)
        backend.stop()
        estimate.stop()


def ride_request() -> dict[str, Any]:
    return {
        "pickup_zone": 74,
        "dropoff_zone": 41,
        "pickup_time": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "trip_distance_miles": 2.5,
    }


def read_events(url: str, into: list[tuple[str, dict[str, Any]]], opened: threading.Event) -> None:
    """The SSE stream as a browser's EventSource reads it, until the server closes it."""
    with httpx.stream("GET", url, timeout=httpx.Timeout(5, read=60)) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/event-stream"
        )
        opened.set()
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                into.append((name, json.loads(line.removeprefix("data: "))))


def test_a_ride_gets_its_estimate_and_its_corrected_durations_live_in_order(
    kafka_bootstrap: str, request_path: RequestPath
) -> None:
    api = request_path.backend.url
    key = {"Idempotency-Key": uuid.uuid4().hex}
    created = httpx.post(f"{api}/v1/rides", json=ride_request(), headers=key, timeout=10)
    assert created.status_code == 201, created.text
    ride = created.json()
    assert ride["estimate"]["duration_minutes"]["value"] > 0 and ride["estimate"]["total_usd"]["value"] > 0
    retried = httpx.post(f"{api}/v1/rides", json=ride_request(), headers=key, timeout=10)
    assert retried.status_code == 200 and retried.json()["ride_id"] == ride["ride_id"], "the same ride"

    events: list[tuple[str, dict[str, Any]]] = []
    opened = threading.Event()
    reader = threading.Thread(target=read_events, args=(f"{api}{ride['updates']}", events, opened))
    reader.start()
    assert opened.wait(10)
    sent = []
    for elapsed, covered in ((120.0, 0.5), (240.0, 1.0), (360.0, 1.6)):
        update = {"event_id": f"{ride['ride_id']}:p{int(elapsed)}", "elapsed_seconds": elapsed,
                  "distance_covered_miles": covered}  # fmt: skip
        answer = httpx.post(f"{api}/v1/rides/{ride['ride_id']}/progress", json=update, timeout=10)
        assert answer.status_code == 202, answer.text
        sent.append(update["event_id"])
        # each correction reaches the stream before the next update is sent: order is the stream's
        deadline = time.monotonic() + WAIT_S
        while not any(e[1].get("source_event_id") == update["event_id"] for e in list(events)):
            assert time.monotonic() < deadline, f"no correction for {update['event_id']}: {events}"
            assert request_path.duration.process.poll() is None, request_path.duration.log_tail(20)
            time.sleep(0.1)  # waits for the stream, which the reader thread fills
    again = httpx.post(
        f"{api}/v1/rides/{ride['ride_id']}/progress",
        json={"event_id": sent[0], "elapsed_seconds": 120.0, "distance_covered_miles": 0.5},
        timeout=10,
    )
    assert again.status_code == 202, "a retried update is accepted and not published again"
    done = {
        "dropoff_time": datetime.now(UTC).isoformat(), "trip_distance_miles": 2.6, "payment_type": 1,
        "fare_amount_usd": 12.5, "tip_amount_usd": 2.0, "total_amount_usd": 16.3,
    }  # fmt: skip
    assert httpx.post(f"{api}/v1/rides/{ride['ride_id']}/complete", json=done, timeout=10).status_code == 202
    reader.join(30)
    assert not reader.is_alive(), "the stream closes after ride_completed"

    names = [name for name, _ in events]
    assert names[0] == "estimate" and names[-1] == "ride_completed"
    corrections = [d for n, d in events if n == "duration" and d["source_event_type"] == "ride_progress"]
    assert [c["source_event_id"] for c in corrections] == sent, "every correction, once, in order"
    assert [c["elapsed_seconds"] for c in corrections] == [120.0, 240.0, 360.0]

    published = [
        json.loads(r.value or b"{}")
        for r in drain({"bootstrap.servers": kafka_bootstrap}, [request_path.rides], quiet_s=2.0)
        if (r.key or b"").decode() == ride["ride_id"]
    ]
    kinds = [p["event_type"] for p in published]
    assert kinds == ["ride_started", "ride_progress", "ride_progress", "ride_progress", "ride_completed"]


def test_the_backend_refuses_what_it_cannot_do_with_a_clear_status(
    kafka_bootstrap: str, request_path: RequestPath, tmp_path: Path
) -> None:
    api = request_path.backend.url
    assert httpx.post(f"{api}/v1/rides/nope/progress", json={"elapsed_seconds": 1,
                      "distance_covered_miles": 0.1}).status_code == 404  # fmt: skip
    assert httpx.get(f"{api}/v1/rides/nope/updates").status_code == 404
    bad = httpx.post(f"{api}/v1/rides", json={**ride_request(), "dropoff_zone": 0})
    assert bad.status_code == 422 and "body.dropoff_zone" in bad.json()["detail"]
    ride = httpx.post(f"{api}/v1/rides", json=ride_request(), timeout=10).json()
    beyond = httpx.post(
        f"{api}/v1/rides/{ride['ride_id']}/progress",
        json={"elapsed_seconds": 60, "distance_covered_miles": 9},
    )
    assert beyond.status_code == 422 and "distance_covered_miles" in beyond.json()["detail"]
    lonely = Http(
        ["backend", "--estimate-url", f"http://127.0.0.1:{free_port()}", "-b", kafka_bootstrap],
        free_port(),
        tmp_path / "lonely.log",
        {"BACKEND_INPUT_TOPIC": request_path.rides},
    )
    try:
        lonely.wait_ready()
        down = httpx.post(f"{lonely.url}/v1/rides", json=ride_request(), timeout=10)
        assert down.status_code == 503 and "estimate service" in down.json()["detail"]
    finally:
        lonely.stop()


def test_no_generated_request_to_the_backend_gets_a_5xx(request_path: RequestPath) -> None:
    # (the update stream of a ride schemathesis created never ends by itself: the e2e test reads it)
    found = generated_requests(request_path.backend.url, 30, "--exclude-path-regex", "/updates$")
    assert found.returncode == 0, found.stdout[-4000:]


def test_a_rider_requests_a_ride_on_the_page_and_watches_its_arrival_time_change(
    request_path: RequestPath,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    api = request_path.backend.url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(api)
            expect(page.locator("#pickup option")).not_to_have_count(0)
            page.select_option("#dropoff", "132")
            page.fill("#distance", "3.2")
            page.click("#request")
            expect(page.locator("#estimate")).to_be_visible(timeout=10_000)
            ride_id = page.locator("#ride-id").inner_text()
            initial = float(page.locator("#estimate-duration").inner_text())
            assert initial > 0 and page.locator("#duration").inner_text() == f"{initial:.1f}"

            update = {"elapsed_seconds": 300.0, "distance_covered_miles": 1.0}
            assert (
                httpx.post(f"{api}/v1/rides/{ride_id}/progress", json=update, timeout=10).status_code == 202
            )
            expect(page.locator("#updates")).to_have_text("1", timeout=WAIT_S * 1000)
            expect(page.locator("#status")).to_have_text("on the way")
            remaining = float(page.locator("#duration").inner_text())
            assert remaining != initial, "the arrival time follows the correction"
        finally:
            browser.close()
