"""What every scoring service has in common: its settings shape and how its parts are wired to run.

A service is a spec in the registry (consumers/registry.py): `settings_class(name, env_prefix)` gives its
settings (ServiceSettings with the service's defaults and environment prefix), its spec gives the scorer,
and `run_service` does the rest.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.control import Deployment
from schemas.topics import (
    CONTROL_TOPIC,
    RIDE_EVENTS_TOPIC,
    dead_letter_topic,
    prediction_topic,
    shadow_topic,
)
from shared.guarantees import (
    COMMIT_INTERVAL_S,
    COMMIT_MAX_MESSAGES,
    AtLeastOnce,
    ExactlyOnce,
    IntervalCommitter,
    ProcessingGuarantee,
)
from shared.kafka import ensure_topic, make_producer, make_record_consumer, wait_for_cluster
from shared.lifecycle import stop_event
from shared.metrics import ServiceMetrics, serve_metrics
from shared.protocols import Scorer
from shared.reload import HotReloader
from shared.runner import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BATCH_TIMEOUT_S,
    DEFAULT_BROKER_LOSS_TIMEOUT_S,
    BrokerWatch,
    RunnerConfig,
    RunStats,
    ServiceRunner,
)
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)

DEFAULT_MODELS_DIR = Path("models")


class ServiceSettings(BaseSettings):
    """Settings of one scoring service. Subclasses set `service`, topics, the env prefix and the port."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    service: str
    group_id: str
    input_topic: str = RIDE_EVENTS_TOPIC
    output_topic: str
    dlq_topic: str
    shadow_topic: str = Field(default="", description="a shadow rollout's outputs (default <output>.shadow)")
    models_dir: Path = DEFAULT_MODELS_DIR
    control_topic: str = Field(
        default=CONTROL_TOPIC, min_length=1, description="the fleet's desired state, followed for hot reload"
    )
    # Draining a backlog, each predict call costs ~1 ms on top of its rows, so bigger batches are faster until
    # memory says stop: results/batch-size/README.md (2,000 vs 1,000: +13% events/s; 4,000: +6% more, at a
    # peak RSS close to the 300 MB budget).
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=100_000)
    # How long a consume waits to fill a batch: under load batches fill at once, so this only bounds the
    # latency added at low rates (the p99 target is 50 ms; 20 ms gave 62 ms at 5,000 events/s).
    batch_timeout_s: float = Field(default=DEFAULT_BATCH_TIMEOUT_S, gt=0, le=60)
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="None: no HTTP endpoint; 0: any free port"
    )
    metrics_host: str = "127.0.0.1"
    group_instance_id: str | None = Field(
        default=None, description="static membership: a stable id per instance"
    )
    broker_loss_timeout_s: float = Field(default=DEFAULT_BROKER_LOSS_TIMEOUT_S, gt=0)
    session_timeout_s: float = Field(
        default=45.0,
        ge=6,
        le=300,
        description="a crashed instance's partitions move after this long (the broker allows 6..300 s)",
    )
    output_partitions: int = Field(default=6, ge=1)
    max_messages: int | None = Field(default=None, ge=1)
    idle_timeout_s: float | None = Field(default=None, gt=0)
    processing_guarantee: ProcessingGuarantee = "at_least_once"
    instance_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="stable name of this instance: the transactional.id suffix under exactly_once",
    )
    commit_max_messages: int = Field(
        default=COMMIT_MAX_MESSAGES, ge=1, description="commit after this many inputs"
    )
    commit_interval_s: float = Field(
        default=COMMIT_INTERVAL_S,
        gt=0,
        le=60,
        description="or after this long (at_least_once: what a crash can replay; exactly_once: how long "
        "outputs stay invisible to read_committed readers)",
    )

    deployment: Deployment = Field(
        default="blue",
        description="blue/green: the service's deployment this instance belongs to (green consumes as group "
        "<group_id>.green; the control topic says which one is live)",
    )

    @property
    def consumer_group(self) -> str:
        """Each deployment is a consumer group of its own, so each reads every partition."""
        return self.group_id if self.deployment == "blue" else f"{self.group_id}.{self.deployment}"

    @property
    def member_name(self) -> str:
        """The instance's name on the control topic (status, switch records): unique across deployments."""
        return self.instance_name if self.deployment == "blue" else f"{self.instance_name}.{self.deployment}"

    @property
    def resolved_shadow_topic(self) -> str:
        return self.shadow_topic or shadow_topic(self.output_topic)

    @property
    def transactional_id(self) -> str:
        """Stable per instance, so a restarted instance fences its predecessor's unfinished transaction."""
        return f"{self.consumer_group}.{self.instance_name}"

    def runner_config(self) -> RunnerConfig:
        return RunnerConfig(
            service=self.service,
            output_topic=self.output_topic,
            dlq_topic=self.dlq_topic,
            shadow_topic=self.resolved_shadow_topic,
            control_topic=self.control_topic,
            instance=self.member_name,
            deployment=self.deployment,
            batch_size=self.batch_size,
            batch_timeout_s=self.batch_timeout_s,
            broker_loss_timeout_s=self.broker_loss_timeout_s,
            max_messages=self.max_messages,
            idle_timeout_s=self.idle_timeout_s,
        )


def settings_class(name: str, env_prefix: str) -> type[ServiceSettings]:
    """The settings of service `name`: its topics and group named after it, read from `env_prefix`*."""

    class Settings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix=env_prefix, frozen=True, extra="ignore")

        service: str = name
        group_id: str = f"ridestream-{name}"
        output_topic: str = prediction_topic(name)
        dlq_topic: str = dead_letter_topic(name)

    Settings.__name__ = Settings.__qualname__ = f"{name.title().replace('_', '')}Settings"
    return Settings


def run_service(
    settings: ServiceSettings,
    kafka: KafkaSettings,
    scorer: Scorer,
    stop: threading.Event | None = None,
    metrics: ServiceMetrics | None = None,
    reloader: HotReloader | None = None,
) -> RunStats:
    """Connect, make sure the output topics exist, serve metrics, and run until stopped (swapping in the
    model versions `reloader` prepares, when there is one)."""
    client_config = kafka.client_config()
    wait_for_cluster(client_config, kafka.connect_timeout_s)
    for topic in (
        settings.input_topic,
        settings.output_topic,
        settings.dlq_topic,
        settings.resolved_shadow_topic,
    ):
        ensure_topic(client_config, topic, settings.output_partitions)
    watch = BrokerWatch()
    consumer_overrides: dict[str, object] = {
        "error_cb": watch.on_error,
        "session.timeout.ms": int(settings.session_timeout_s * 1000),
    }
    if settings.group_instance_id:
        consumer_overrides["group.instance.id"] = settings.group_instance_id
    consumer = make_record_consumer(client_config, settings.consumer_group, consumer_overrides)
    # A short linger: outputs are on the event→prediction latency path, and a micro-batch of outputs already
    # fills librdkafka's produce batches under load.
    producer_overrides: dict[str, Any] = {"linger.ms": 1, "error_cb": watch.on_error}
    exactly_once = settings.processing_guarantee == "exactly_once"
    if exactly_once:
        producer_overrides["transactional.id"] = settings.transactional_id
    producer = make_producer(client_config, producer_overrides)
    config = settings.runner_config()
    guarantee: type[IntervalCommitter] = ExactlyOnce if exactly_once else AtLeastOnce
    committer = guarantee(
        consumer,
        producer,
        settings.service,
        config.flush_timeout_s,
        settings.commit_max_messages,
        settings.commit_interval_s,
    )
    metrics = metrics or ServiceMetrics(settings.service)
    if settings.metrics_port is not None:
        serve_metrics(metrics, settings.metrics_port, settings.metrics_host)
    stop = stop_event(stop)
    runner = ServiceRunner(consumer, producer, scorer, config, metrics, watch, committer, reloader)
    # Everything loaded so far (the models, scikit-learn, MLflow, pydantic) lives as long as the process:
    # freezing it keeps the cyclic GC from re-scanning it on every full collection while the loop's
    # short-lived records churn the young generations.
    gc.collect()
    gc.freeze()
    consumer.subscribe(
        [settings.input_topic],
        on_assign=lambda _c, parts: log.info("assigned %s", [p.partition for p in parts]),
        on_revoke=runner.on_revoke,
    )
    log.info(
        "%s (%s) scoring %s → %s with %s %s (%s)",
        settings.service,
        f"{settings.deployment} deployment, group {settings.consumer_group}",
        settings.input_topic,
        settings.output_topic,
        scorer.model_name,
        scorer.model_version,
        settings.processing_guarantee,
    )
    return runner.run(stop)
