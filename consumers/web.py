"""What the HTTP services (the estimate service, the backend) share: their metrics, the problem body every
refusal carries, and the 422 that names each field and its rule."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.http import Problem

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class WebMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ridestream_http_requests", "HTTP requests answered", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "ridestream_http_request_seconds",
            "Time from request to response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rides = Counter(
            "ridestream_http_rides", "Rides estimated (estimate service) or requested (backend)",
            registry=self.registry,
        )  # fmt: skip
        self.model_info = Gauge(
            "ridestream_model_info", "The model version served (1)", ["service", "model", "version"],
            registry=self.registry,
        )  # fmt: skip


def problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse(Problem(detail=detail).model_dump(), status_code=status)


def validation_detail(exc: RequestValidationError) -> str:
    """`body.0.pickup_zone: Input should be less than or equal to 265; ...`: each field and its rule. Of a
    union body (one ride or a list), only the branch of the JSON sent is reported, under plain positions."""
    branch = "list[" if isinstance(exc.body, list) else "RideRequest"
    parts = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        if len(loc) > 1 and loc[0] == "body" and loc[1].startswith(("list[", "RideRequest")):
            if not loc[1].startswith(branch):
                continue
            loc = [loc[0], *loc[2:]]
        parts.append(f"{'.'.join(loc)}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class Measured:
    """Each request counted and timed by route and status: a plain ASGI middleware, because Starlette's
    `BaseHTTPMiddleware` (`@app.middleware("http")`) runs every response through a memory stream and a task
    group, ~8% of a worker's CPU at 1,000 requests/s."""

    def __init__(self, app: ASGIApp, metrics: WebMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees when the app raises before it starts a response

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
            self.metrics.requests.labels(path, str(status)).inc()


def instrument(app: FastAPI, metrics: WebMetrics) -> None:
    """Requests counted and timed by route, refusals as problem bodies (422s naming the field), /metrics."""

    app.add_middleware(Measured, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def refused(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    @app.get("/metrics", include_in_schema=False)
    async def metrics_page() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
