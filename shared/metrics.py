"""Prometheus metrics of one scoring service, on an injected registry, plus /healthz and /readyz.

Processing code calls the hook methods only (`on_batch`, `on_dead_letter`, ...), never a metric object, so
the metric names live here alone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

# Event-time → prediction latency buckets, seconds: the 50 ms target sits in the middle.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# How many of the latest latencies the p99 an instance reports is taken over.
RECENT_LATENCIES = 5000
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class BatchHistogram(Collector):
    """A histogram of one labelled series, observed a batch of values at a time: one `searchsorted` and
    `bincount` per batch, where prometheus_client's `observe` takes a lock and scans the buckets once per
    value (~1 µs an event, an eighth of what a process has at its target rate). Exported as prometheus_client
    exports a Histogram: `_bucket` (cumulative, `le` bounds as it spells them), `_count` and `_sum`."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: tuple[str, str],
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = np.array([*buckets, float("inf")], dtype=np.float64)
        self.counts = np.zeros(len(self.bounds), dtype=np.int64)
        self.sum = 0.0
        self.lock = threading.Lock()  # (the HTTP thread collects while the loop observes)
        registry.register(self)

    def observe(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        # bucket i holds the values v with bounds[i-1] < v <= bounds[i], Prometheus' `le`
        counts = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.bounds))
        with self.lock:
            self.counts += counts
            # added one by one, in order, as `observe` would (cumsum is sequential, sum() is pairwise)
            self.sum = float(np.cumsum(np.concatenate(([self.sum], values)))[-1])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self.lock:
            cumulative, total = np.cumsum(self.counts).tolist(), self.sum
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label[0]])
        # (`le` spelled as prometheus_client's own Histogram spells it)
        spelled: list[str] = [floatToGoString(bound) for bound in self.bounds.tolist()]  # type: ignore[no-untyped-call]
        buckets = list(zip(spelled, cumulative))
        family.add_metric([self.label[1]], buckets, sum_value=total)
        yield family


class ServiceMetrics:
    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter(
            "ridestream_events_in", "Input records consumed", ["service", "event_type"], registry=r
        )
        self.predictions_out = Counter(
            "ridestream_predictions_out",
            "Predictions produced and made durable (counted when the commit covering them succeeds, so an "
            "aborted and replayed exactly-once transaction counts once)",
            ["service"],
            registry=r,
        )
        self.ignored = Counter(
            "ridestream_events_ignored",
            "Valid events this service does not score",
            ["service", "event_type"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "ridestream_dead_lettered",
            "Records sent to the dead-letter topic (counted on commit, like predictions)",
            ["service", "reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "ridestream_batch_size",
            "Records per micro-batch",
            ["service"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "ridestream_batch_processing_seconds",
            "Decode→score→produce time per batch (plus the flush and commit when one falls due)",
            ["service"],
            registry=r,
        )
        self.latency = BatchHistogram(
            "ridestream_event_to_prediction_seconds",
            "Input record timestamp to prediction produced",
            ("service", service),
            LATENCY_BUCKETS,
            r,
        )
        self.lag = Gauge(
            "ridestream_consumer_lag",
            "Records behind the partition end",
            ["service", "topic", "partition"],
            registry=r,
        )
        self.model = Info(
            "ridestream_model",
            "Model this service scores with: name, artifact version, registry versions",
            ["service"],
            registry=r,
        )
        self.swaps = Counter(
            "ridestream_model_swaps", "Model versions swapped in without a restart", ["service"], registry=r
        )
        self.refused = Counter(
            "ridestream_model_refused",
            "Model versions refused by hot reload (failed to load or warm up; the old one kept serving)",
            ["service", "model", "version"],
            registry=r,
        )
        self.service = service
        self.serving: dict[str, str] = {}
        # the latest latencies, for the p99 an instance reports to the rollout controller
        self.recent_latencies_s: deque[float] = deque(maxlen=RECENT_LATENCIES)
        self.last_loop = time.monotonic()
        self.ready = False

    def on_model_loaded(self, name: str, version: str, registry_versions: str = "") -> None:
        self.serving = {"name": name, "version": version, "registry_versions": registry_versions}
        self.model.labels(self.service).info(self.serving)

    def on_model_swapped(self, name: str, version: str, registry_versions: str) -> None:
        self.swaps.labels(self.service).inc()
        self.on_model_loaded(name, version, registry_versions)

    def on_model_refused(self, model: str, version: str) -> None:
        self.refused.labels(self.service, model, version).inc()

    def on_event(self, event_type: str, count: int = 1) -> None:
        self.events_in.labels(self.service, event_type).inc(count)

    def on_ignored(self, event_type: str, count: int = 1) -> None:
        self.ignored.labels(self.service, event_type).inc(count)

    def on_dead_letter(self, reason: str, count: int = 1) -> None:
        self.dead_lettered.labels(self.service, reason).inc(count)

    def on_batch(self, size: int, seconds: float, latencies_s: np.ndarray) -> None:
        self.batch_size.labels(self.service).observe(size)
        self.batch_seconds.labels(self.service).observe(seconds)
        self.latency.observe(latencies_s)
        self.recent_latencies_s.extend(latencies_s[-RECENT_LATENCIES:].tolist())

    def recent_p99_ms(self) -> float | None:
        if not self.recent_latencies_s:
            return None
        ordered = sorted(self.recent_latencies_s)
        return 1000.0 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def on_predictions(self, count: int) -> None:
        self.predictions_out.labels(self.service).inc(count)

    def on_lag(self, topic: str, partition: int, lag: int) -> None:
        self.lag.labels(self.service, topic, str(partition)).set(lag)

    def forget_lag(self, topic: str, partition: int) -> None:
        """A partition that left this instance: its lag is its next owner's to report. (A series left
        behind would hold its last value for good: summed lag counted twice, an alert on the wrong pod.)"""
        self.lag.remove(self.service, topic, str(partition))  # (a series never set: nothing to remove)

    def on_loop(self, ready: bool) -> None:
        self.last_loop = time.monotonic()
        self.ready = ready

    def healthy(self, stall_after_s: float = 60.0) -> bool:
        return time.monotonic() - self.last_loop < stall_after_s


def readiness(metrics: ServiceMetrics) -> bytes:
    body = {"ready": metrics.ready, "service": metrics.service, **metrics.serving}
    return (json.dumps(body) + "\n").encode()


def serve_metrics(metrics: ServiceMetrics, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve /metrics, /healthz (the loop is turning) and /readyz (partitions assigned, broker reachable;
    its body names the model version serving)."""
    routes: dict[str, Callable[[], tuple[int, bytes, str]]] = {
        "/metrics": lambda: (200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST),
        "/healthz": lambda: (
            (200, b"ok\n", "text/plain") if metrics.healthy() else (503, b"stalled\n", "text/plain")
        ),
        "/readyz": lambda: (200 if metrics.ready else 503, readiness(metrics), "application/json"),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?")[0])
            status, body, content_type = route() if route else (404, b"not found\n", "text/plain")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(
            self, format: str, *args: object
        ) -> None:  # scrapes every few seconds: keep logs clean
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server
