"""The backend's HTTP API (FastAPI on uvicorn):

    POST /v1/rides                      a rider's request → the estimate service (HTTP, with a timeout:
                                        503 when it is down) → 201 with ride_id and estimate, after
                                        `ride_started` is on the input topic. An Idempotency-Key makes a retry
                                        return the same ride and publish nothing twice.
    POST /v1/rides/{ride_id}/progress   the driver app's update → `ride_progress` (202 once delivered)
    POST /v1/rides/{ride_id}/complete   the meter stopped → `ride_completed` (202 once delivered)
    GET  /v1/rides/{ride_id}/updates    Server-Sent Events: the consumers' predictions for the ride as they
                                        land (duration corrected as the ride goes, tip, cost)
    GET  /v1/zones                      the zones a rider picks from
    GET  /                              the rider page
    GET  /healthz, /readyz, /metrics

Rides live in this instance's memory (bounded): updates for a ride go to the instance that created it, and
its SSE stream is served by any instance, each reading every prediction (docs/http.md says how that scales).
"""

from __future__ import annotations

import asyncio
import csv
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumers.backend.rides import (
    Bounded,
    completed_event,
    progress_event,
    ride_id_for,
    sse_frame,
    update_event_id,
)
from consumers.backend.streams import PredictionFeed, Publisher
from consumers.estimate.estimates import started_event
from consumers.web import WebMetrics, instrument, problem
from schemas.events import RideStarted
from schemas.http import Accepted, Completion, EstimateResponse, Problem, Progress, RideCreated, RideRequest
from schemas.topics import RIDE_EVENTS_TOPIC, prediction_topic
from shared.errors import DeliveryError, RidestreamError
from shared.serde import encode
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
ZONE_COUNT = 265


class BackendSettings(BaseSettings):
    """Environment: BACKEND_HOST, BACKEND_PORT, BACKEND_ESTIMATE_URL, ...; the cluster's from KAFKA_*."""

    model_config = SettingsConfigDict(env_prefix="BACKEND_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    estimate_url: str = Field(default="http://127.0.0.1:8000", description="the estimate service")
    estimate_timeout_s: float = Field(default=2.0, gt=0, le=60)
    input_topic: str = RIDE_EVENTS_TOPIC
    prediction_topics: list[str] = Field(
        default_factory=lambda: [prediction_topic(s) for s in ("duration", "tip", "cost")]
    )
    zones_csv: Path | None = Field(default=None, description="TLC taxi_zone_lookup.csv, for zone names")
    max_rides: int = Field(default=100_000, ge=1, description="rides (and keys) remembered per instance")


@dataclass
class Ride:
    started: RideStarted
    created: RideCreated
    done: bool = False


@dataclass
class Parts:
    publisher: Publisher
    feed: PredictionFeed
    client: httpx.AsyncClient


def zones(csv_path: Path | None) -> list[dict[str, Any]]:
    """Zone ids with names from the TLC lookup when given, else just their numbers."""
    if csv_path is not None and csv_path.is_file():
        with csv_path.open(newline="") as handle:
            rows = [
                {"id": int(row["LocationID"]), "name": f"{row['Zone']} ({row['Borough']})"}
                for row in csv.DictReader(handle)
                if row.get("LocationID", "").isdigit() and 1 <= int(row["LocationID"]) <= ZONE_COUNT
            ]
        if rows:
            return rows
    return [{"id": n, "name": f"zone {n}"} for n in range(1, ZONE_COUNT + 1)]


def rider_page() -> str:
    return resources.files("consumers.backend").joinpath("rider.html").read_text(encoding="utf-8")


def create_app(settings: BackendSettings, connect: Callable[[], Parts]) -> FastAPI:
    metrics = WebMetrics()
    state: dict[str, Parts] = {}
    rides: Bounded[str, Ride] = Bounded(settings.max_rides)
    published: Bounded[str, Accepted] = Bounded(settings.max_rides)
    zone_list = zones(settings.zones_csv)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state["parts"] = connect()
        try:
            yield
        finally:
            parts = state.pop("parts")
            await parts.client.aclose()
            parts.feed.close()
            parts.publisher.close()

    app = FastAPI(
        title="ridestream backend",
        version="1",
        description="The TaxiApp's ride API: request a ride, update it, watch its predictions live.",
        lifespan=lifespan,
    )

    instrument(app, metrics)

    def parts() -> Parts:
        found = state.get("parts")
        if found is None:
            raise HTTPException(503, "the backend is starting")
        return found

    def ride_of(ride_id: str) -> Ride:
        ride = rides.get(ride_id)
        if ride is None:
            raise HTTPException(404, f"no ride {ride_id} (unknown, or created on another backend instance)")
        return ride

    async def publish(key: str, value: bytes) -> None:
        try:
            await parts().publisher.publish(key, value)
        except DeliveryError as exc:
            raise HTTPException(503, f"could not publish the ride's event: {exc}") from exc

    async def estimate_of(request: RideRequest) -> EstimateResponse:
        url = f"{settings.estimate_url.rstrip('/')}/v1/estimates"
        body = request.model_dump(mode="json")
        try:
            try:
                answer = await parts().client.post(url, json=body)
            except httpx.TransportError:
                # A kept-alive connection the server closed just then: estimates have no side effects, so
                # one retry on a fresh connection is safe.
                answer = await parts().client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise HTTPException(
                503, f"the estimate service did not answer ({exc.__class__.__name__})"
            ) from exc
        if answer.status_code == 422:
            raise HTTPException(422, answer.json().get("detail", "invalid ride request"))
        if answer.status_code != 200:
            raise HTTPException(503, f"the estimate service answered {answer.status_code}")
        return EstimateResponse.model_validate_json(answer.content)

    @app.post(
        "/v1/rides",
        status_code=201,
        response_model=RideCreated,
        responses={422: {"model": Problem}, 503: {"model": Problem}},
    )
    async def request_ride(
        body: RideRequest,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> RideCreated:
        """Request a ride: its estimate now, its updates on the stream named in the answer."""
        ride_id = ride_id_for(idempotency_key, f"ride-{uuid.uuid4().hex}")
        known = rides.get(ride_id)
        if known is not None:
            response.status_code = 200  # a retry: the same ride, nothing published again
            return known.created
        request = body.model_copy(update={"ride_id": ride_id})
        (figures,) = (await estimate_of(request)).estimates
        started = started_event(request, ride_id).model_copy(update={"event_id": f"{ride_id}:started"})
        created = RideCreated(ride_id=ride_id, estimate=figures, updates=f"/v1/rides/{ride_id}/updates")
        await publish(ride_id, encode(started))
        rides.put(ride_id, Ride(started, created))
        metrics.rides.inc()
        return created

    async def publish_update(ride: Ride, event_id: str, value: bytes) -> Accepted:
        accepted = Accepted(ride_id=ride.started.ride_id, event_id=event_id)
        if event_id in published:
            return accepted  # a retry of an update already on the topic
        await publish(ride.started.ride_id, value)
        published.put(event_id, accepted)
        return accepted

    @app.post(
        "/v1/rides/{ride_id}/progress",
        status_code=202,
        response_model=Accepted,
        responses={404: {"model": Problem}, 422: {"model": Problem}, 503: {"model": Problem}},
    )
    async def progress(ride_id: str, body: Progress) -> Accepted:
        """The driver app's update while the ride runs."""
        ride = ride_of(ride_id)
        event_id = update_event_id(ride_id, "progress", body.event_id, uuid.uuid4().hex)
        try:
            event = progress_event(ride.started, body, event_id, datetime.now(UTC))
        except ValidationError as exc:
            raise HTTPException(422, "body: " + "; ".join(str(e["msg"]) for e in exc.errors())) from exc
        return await publish_update(ride, event_id, encode(event))

    @app.post(
        "/v1/rides/{ride_id}/complete",
        status_code=202,
        response_model=Accepted,
        responses={404: {"model": Problem}, 422: {"model": Problem}, 503: {"model": Problem}},
    )
    async def complete(ride_id: str, body: Completion) -> Accepted:
        """The meter stopped: the ground truth the models are judged by. Ends the ride's update stream."""
        ride = ride_of(ride_id)
        if body.dropoff_time <= ride.started.pickup_time:
            raise HTTPException(
                422, f"body.dropoff_time: must be after the ride's pickup_time {ride.started.pickup_time}"
            )
        event_id = update_event_id(ride_id, "completed", body.event_id, uuid.uuid4().hex)
        try:
            event = completed_event(ride.started, body, event_id)
        except ValidationError as exc:
            raise HTTPException(422, "body: " + "; ".join(str(e["msg"]) for e in exc.errors())) from exc
        accepted = await publish_update(ride, event_id, encode(event))
        ride.done = True
        parts().feed.push(ride_id, ("ride_completed", encode(event)))
        parts().feed.push(ride_id, None)
        return accepted

    @app.get("/v1/rides/{ride_id}/updates", responses={404: {"model": Problem}})
    async def updates(ride_id: str, request: Request) -> StreamingResponse:
        """Server-Sent Events: `estimate` first, then `duration`, `tip`, `cost` predictions as the consumers
        publish them, and `ride_completed` at the end (the stream closes after it)."""
        ride = ride_of(ride_id)
        feed = parts().feed
        queue = feed.subscribe(ride_id)

        async def events() -> AsyncIterator[bytes]:
            try:
                yield sse_frame("estimate", ride.created.estimate.model_dump_json())
                if ride.done:
                    return
                while not await request.is_disconnected():
                    try:
                        update = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                    if update is None:
                        return
                    yield sse_frame(*update)
            finally:
                feed.unsubscribe(ride_id, queue)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.get("/v1/zones")
    async def zone_names() -> list[dict[str, Any]]:
        return zone_list

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(rider_page())

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"detail": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        found = state.get("parts")
        if found is None or not found.feed.assigned.is_set():
            return problem(503, "not connected to the prediction topics yet")
        return JSONResponse({"detail": "ready"})

    return app


def connect(settings: BackendSettings, kafka: KafkaSettings) -> Parts:
    client_config = kafka.client_config()
    feed = PredictionFeed(client_config, settings.prediction_topics, settings.max_rides)
    feed.start()
    return Parts(
        Publisher(client_config, settings.input_topic),
        feed,
        # Idle connections dropped before the server's keep-alive timeout (uvicorn's 5 s) can race a request.
        httpx.AsyncClient(timeout=settings.estimate_timeout_s, limits=httpx.Limits(keepalive_expiry=2.0)),
    )


def serve(settings: BackendSettings, kafka: KafkaSettings) -> None:
    import uvicorn

    from shared.kafka import ensure_topic, wait_for_cluster

    client_config = kafka.client_config()
    wait_for_cluster(client_config, kafka.connect_timeout_s)
    for topic in (settings.input_topic, *settings.prediction_topics):
        ensure_topic(client_config, topic, 6)
    app = create_app(settings, lambda: connect(settings, kafka))
    log.info(
        "backend on http://%s:%d (estimates from %s)", settings.host, settings.port, settings.estimate_url
    )
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
    except OSError as exc:
        raise RidestreamError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
