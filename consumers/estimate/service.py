"""The estimate service: FastAPI on uvicorn, serving the registry's champions and following the control
topic like the streaming services (a moved alias is swapped in without a restart).

    POST /v1/estimates   one ride request or a list → per ride: duration, tip and total cost, each with the
                         model and version that made it (one vectorized predict per model and request)
    GET  /healthz        the process answers
    GET  /readyz         models loaded: 200 with the versions served, else 503
    GET  /metrics        requests by route and status, latency histogram, the versions served

Scoring is CPU work, done on a worker thread so the event loop keeps accepting connections, and the rides of
requests that arrive together are scored together: one predict per model for all of them
(consumers/estimate/batching.py).
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumers.estimate.batching import Batcher, Outcome
from consumers.estimate.estimates import SERVICES, Unscoreable, estimate, started_events
from consumers.registry import service_spec
from consumers.serve import follow_control
from consumers.web import WebMetrics, instrument, problem
from schemas.events import RideStarted
from schemas.http import Estimate, EstimateResponse, Problem, RideRequest, RideRequests
from schemas.topics import CONTROL_TOPIC
from shared.control import ControlLog
from shared.errors import RidestreamError
from shared.metrics import ServiceMetrics
from shared.protocols import Scorer
from shared.registry import registry_present
from shared.reload import HotReloader
from shared.service import DEFAULT_MODELS_DIR
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class EstimateSettings(BaseSettings):
    """Environment: ESTIMATE_HOST, ESTIMATE_PORT, ESTIMATE_MODELS_DIR, ESTIMATE_CONTROL_TOPIC,
    ESTIMATE_FOLLOW_CONTROL; the cluster's from KAFKA_*."""

    model_config = SettingsConfigDict(env_prefix="ESTIMATE_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    models_dir: Path = DEFAULT_MODELS_DIR
    control_topic: str = Field(default=CONTROL_TOPIC, min_length=1)
    follow_control: bool = Field(
        default=True, description="follow the control topic (needs Kafka); off: the registry's champions"
    )
    instance_name: str = Field(default_factory=lambda: f"estimate-{socket.gethostname()}", min_length=1)


class Models:
    """The scorer of each service, swapped for the one its hot reloader has warmed, between requests."""

    def __init__(self, scorers: dict[str, Scorer], reloaders: Mapping[str, HotReloader], metrics: WebMetrics):
        self.scorers = scorers
        self.reloaders = dict(reloaders)
        self.metrics = metrics
        self._lock = threading.Lock()
        for service, scorer in scorers.items():
            metrics.model_info.labels(service, scorer.model_name, scorer.model_version).set(1)

    def current(self) -> dict[str, Scorer]:
        for service, reloader in self.reloaders.items():
            swap = reloader.take_swap()
            if swap is not None:
                with self._lock:
                    old = self.scorers[service]
                    self.scorers[service] = swap.scorer
                self.metrics.model_info.remove(service, old.model_name, old.model_version)
                self.metrics.model_info.labels(
                    service, swap.scorer.model_name, swap.scorer.model_version
                ).set(1)
                log.info("%s: now serving %s (%s)", service, swap.plan.label, swap.scorer.model_version)
        return dict(self.scorers)

    def offer(self, events: list[Any]) -> None:
        """A warm-up sample for versions being loaded (the same rides the request just scored)."""
        for reloader in self.reloaders.values():
            reloader.offer_sample(events)

    def versions(self) -> dict[str, str]:
        return {service: scorer.model_version for service, scorer in self.scorers.items()}

    def close(self) -> None:
        for reloader in self.reloaders.values():
            reloader.stop()


def load_models(settings: EstimateSettings, kafka: KafkaSettings | None, metrics: WebMetrics) -> Models:
    """Each service's scorer: following the control topic when a registry and Kafka are there, else the
    registry's champions (or the plain artifact files)."""
    specs = {name: service_spec(name) for name in SERVICES}
    if kafka is None or not settings.follow_control or not registry_present(settings.models_dir):
        log.info("estimates from %s without following the control topic", settings.models_dir)
        return Models({n: s.load_scorer(settings.models_dir) for n, s in specs.items()}, {}, metrics)
    client_config = kafka.client_config()
    scorers, reloaders = {}, {}
    try:
        for name, spec in specs.items():
            service_settings = spec.settings(
                {
                    "models_dir": settings.models_dir,
                    "control_topic": settings.control_topic,
                    "instance_name": settings.instance_name,
                }
            )
            control = ControlLog(client_config, settings.control_topic)
            scorers[name], reloaders[name] = follow_control(
                spec, service_settings, control, ServiceMetrics(name), report_status=False
            )
    except BaseException:
        for reloader in reloaders.values():
            reloader.stop()
        raise
    return Models(scorers, reloaders, metrics)


def create_app(load: Callable[[WebMetrics], Models]) -> FastAPI:
    """The app; `load` makes its models at startup (the lifespan) and the shutdown stops their followers."""
    metrics = WebMetrics()
    state: dict[str, Models] = {}
    batchers: list[Batcher] = []

    def score(events: Sequence[RideStarted]) -> list[Outcome]:
        """On the batcher's worker thread: the versions current now, then the rides' warm-up offer."""
        models = state["models"]
        outcomes = estimate(events, models.current(), datetime.now(UTC))
        models.offer(list(events))
        return outcomes

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # (loading is CPU and I/O at startup, before any request: done here, once)
        state["models"] = load(metrics)
        # Everything loaded so far (libraries, models) lives as long as the process: out of the collector's
        # sight, a full collection no longer walks it on the request path (~tens of ms each time).
        gc.freeze()
        batcher = Batcher(score)
        batcher.start()
        batchers.append(batcher)
        try:
            yield
        finally:
            await batcher.stop()
            batchers.clear()
            state.pop("models").close()

    app = FastAPI(
        title="ridestream estimate service",
        version="1",
        description="The initial estimate of a ride (duration, tip, total cost), from the streaming "
        "services' models and registry versions.",
        lifespan=lifespan,
    )

    instrument(app, metrics)

    @app.post(
        "/v1/estimates",
        response_model=EstimateResponse,
        responses={422: {"model": Problem}, 503: {"model": Problem}},
    )
    async def estimates(body: RideRequest | RideRequests) -> Response:
        """The initial estimate of each ride, in the order asked."""
        if not batchers:
            raise HTTPException(503, "models are not loaded yet")
        requests = body if isinstance(body, list) else [body]
        outcomes = await batchers[0].estimate(started_events(requests))
        for position, outcome in enumerate(outcomes):
            if isinstance(outcome, Unscoreable):
                where = f"body.{position}" if isinstance(body, list) else "body"
                raise HTTPException(
                    422, f"{where}: the {outcome.service} model cannot score it ({outcome.reason})"
                )
        metrics.rides.inc(len(outcomes))
        answer = EstimateResponse(estimates=[o for o in outcomes if isinstance(o, Estimate)])
        # Serialised here, once: returned as a model, FastAPI would validate it against itself again first.
        return Response(answer.model_dump_json(), media_type="application/json")

    @app.get("/healthz", responses={200: {"model": Problem}})
    async def healthz() -> JSONResponse:
        return JSONResponse({"detail": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        models = state.get("models")
        if models is None:
            return problem(503, "models are not loaded yet")
        return JSONResponse(jsonable_encoder({"detail": "ready", "model_versions": models.versions()}))

    return app


def serve(settings: EstimateSettings, kafka: KafkaSettings | None) -> None:
    """Run the service on uvicorn until SIGTERM/SIGINT."""
    import uvicorn

    app = create_app(lambda metrics: load_models(settings, kafka, metrics))
    log.info(
        "estimate service on http://%s:%d (models %s)", settings.host, settings.port, settings.models_dir
    )
    try:
        uvicorn.run(
            app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
            proxy_headers=False,  # no proxy in front of it to trust
        )  # fmt: skip
    except OSError as exc:
        raise RidestreamError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
