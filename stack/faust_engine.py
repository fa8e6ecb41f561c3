"""The scoring services as Faust agents: the optional second engine (`pip install -e '.[faust]'`).

Same contract, decoding, scorers and dead letters as the default engine (shared/runner.py): a consumed Faust
message becomes the runtime's `InputRecord` at this edge and goes through the same `score_batch`, so what is
scored, what is dead-lettered and why are decided by the very same code. Only the loop,
the clients (aiokafka, via Faust) and the commit discipline are Faust's:

    Faust fetches → agent: decode, score, send predictions + dead letters → ack the event(s)
    → every `broker_commit_interval` (2.8 s) Faust flushes its producer, then commits the acked offsets

Two agent shapes, chosen by `batched`:
    per event   `async for event in stream.noack().events()`: one `score` call per event, the event acked
                once its outputs are handed to the producer (the idiomatic Faust agent)
    batched     `stream.take_events(batch_size, within=batch_timeout_s)`: one vectorized `score` per batch,
                and the batch's deliveries are awaited before Faust may ack it

At-least-once only (see docs/faust.md). Faust acks an event whose processing raised and then restarts the
agent, and it logs but otherwise ignores a failed delivery, so either would later be committed as done.
This module turns both into an immediate process exit *without* a commit (`_exit_uncommitted`): the records
are consumed again after a restart, as after kill -9.

No decorator runs at import time: `make_app` builds the app, its topics, agent and timer inside a call.

    python -m stack.faust_engine tip [--batched]     a service configured by environment only (TIP_*, KAFKA_*)
    python -m shared.faust_engine tip [--batched]    the same (the name scripts know)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, cast

import faust
from faust.types import StreamT, TopicT
from faust.types.auth import CredentialsT
from faust.types.tuples import Message as FaustMessage

from consumers.registry import SERVICE_NAMES, ServiceSpec, service_spec
from shared.errors import ConfigError
from shared.kafka import ensure_topic, wait_for_cluster
from shared.lifecycle import run_guarded
from shared.metrics import ServiceMetrics, serve_metrics
from shared.protocols import Scorer
from shared.records import Headers, InputRecord
from shared.runner import RunnerConfig, RunStats, count_outputs, record_batch, score_batch
from shared.service import ServiceSettings
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)

# Distinct from 1 (a reported error) so a supervisor can tell "stopped on purpose, offsets not committed".
EXIT_UNCOMMITTED = 75
# How often the watch timer updates /healthz, /readyz and checks the bounded-run limits.
WATCH_INTERVAL_S = 0.25


def input_record(message: FaustMessage) -> InputRecord:
    """A consumed Faust message as the runtime's engine-neutral record."""
    headers: Any = message.headers or ()
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    return InputRecord(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value,
        pairs,
        int(message.timestamp * 1000),
    )


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None


class ScoringStep:
    """decode → score → the records to produce, plus the metrics and stats; shared by both agent shapes."""

    def __init__(self, scorer: Scorer, config: RunnerConfig, metrics: ServiceMetrics) -> None:
        self.scorer = scorer
        self.config = config
        self.metrics = metrics
        self.stats = RunStats()
        self.last_record = time.monotonic()
        metrics.on_model_loaded(scorer.model_name, scorer.model_version)

    def process(self, messages: Sequence[FaustMessage]) -> list[Output]:
        started = time.monotonic()
        batch = score_batch(
            [input_record(m) for m in messages],
            self.scorer,
            self.config.service,
            self.config.max_payload_bytes,
            datetime.now(UTC),
        )
        outputs = [Output(self.config.output_topic, p.key, p.value, None) for p in batch.predictions]
        outputs += [Output(self.config.dlq_topic, d.key, d.value, d.headers) for d in batch.dead_letters]
        record_batch(self.metrics, self.stats, batch, len(messages), time.monotonic() - started)
        # Faust commits on its own schedule, with no hook: outputs are counted when handed to its producer.
        count_outputs(self.metrics, batch)
        self.last_record = time.monotonic()
        return outputs

    def bounded_run_over(self) -> bool:
        if self.config.max_messages is not None and self.stats.consumed >= self.config.max_messages:
            return True
        idle = self.config.idle_timeout_s
        return idle is not None and time.monotonic() - self.last_record > idle


def _exit_uncommitted(reason: str) -> NoReturn:
    """End the process now, before Faust can ack or commit anything more (it would commit a lost record)."""
    log.critical(
        "%s: exiting without committing; the uncommitted records are consumed again after a restart", reason
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_UNCOMMITTED)


def _exit_on_failed_delivery(future: asyncio.Future[Any]) -> None:
    # Runs as the future's done-callback, i.e. before the coroutine awaiting the producer's flush resumes,
    # so before the commit that the flush precedes.
    if future.cancelled():
        _exit_uncommitted("a produce was cancelled before delivery")
    if future.exception() is not None:
        _exit_uncommitted(f"delivery failed: {future.exception()!r}")


def faust_headers(headers: Headers | None) -> list[tuple[str, bytes]] | None:
    """The runtime's headers as Faust sends them, every value bytes: text UTF-8 encoded, an absent value
    empty (as dead letters already carry one). Records consumed through Faust carry bytes already."""
    if headers is None:
        return None
    return [(name, value.encode() if isinstance(value, str) else value or b"") for name, value in headers]


async def _send_all(outputs: Sequence[Output], topics: Mapping[str, TopicT]) -> list[asyncio.Future[Any]]:
    """Hand every output to Faust's producer (no wait for delivery); watch each delivery."""
    futures: list[asyncio.Future[Any]] = []
    for output in outputs:
        sent = await topics[output.topic].send(
            key=output.key, value=output.value, headers=faust_headers(output.headers)
        )
        future = asyncio.ensure_future(sent)
        future.add_done_callback(_exit_on_failed_delivery)
        futures.append(future)
    return futures


def _concrete(stream: StreamT[bytes]) -> faust.Stream[bytes]:
    # Agents are handed a faust.Stream; the StreamT protocol they are typed with lacks noack/take_events.
    return cast("faust.Stream[bytes]", stream)


def broker_urls(bootstrap_servers: str) -> list[str]:
    return [f"kafka://{server.strip()}" for server in bootstrap_servers.split(",") if server.strip()]


def credentials(kafka: KafkaSettings) -> CredentialsT | None:
    """KafkaSettings' security settings in Faust's terms (None: PLAINTEXT)."""
    protocol = kafka.security_protocol.upper()
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol.endswith("SSL"):
        # The same trust (and client certificate) as the confluent engine's client_config.
        context = ssl.create_default_context(
            cafile=str(kafka.ssl_ca_location) if kafka.ssl_ca_location else None
        )
        if kafka.ssl_certificate_location and kafka.ssl_key_location:
            key_password = kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None
            context.load_cert_chain(
                str(kafka.ssl_certificate_location), str(kafka.ssl_key_location), key_password
            )
    if protocol.startswith("SASL"):
        password = kafka.resolved_sasl_password()
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=password,
            ssl_context=context,
            mechanism=kafka.sasl_mechanism or "PLAIN",
        )
    if protocol == "SSL" and context is not None:
        return faust.SSLCredentials(context)
    raise ConfigError(f"the Faust engine does not support security_protocol={kafka.security_protocol}")


def make_app(
    settings: ServiceSettings,
    kafka: KafkaSettings,
    scorer: Scorer,
    *,
    batched: bool,
    data_dir: Path,
    metrics: ServiceMetrics | None = None,
) -> tuple[faust.App, ScoringStep]:
    """A Faust app with one scoring agent for `settings.service`, and the step that holds its stats."""
    if settings.processing_guarantee != "at_least_once":
        raise ConfigError("the Faust engine runs at-least-once only; use the default engine for exactly_once")
    config = settings.runner_config()
    step = ScoringStep(scorer, config, metrics or ServiceMetrics(settings.service))
    app = faust.App(
        settings.group_id,  # Faust's app id is the consumer group id (version 1 adds no suffix)
        broker=broker_urls(kafka.client_config()["bootstrap.servers"]),
        broker_client_id=kafka.client_id,
        broker_credentials=credentials(kafka),
        consumer_group_instance_id=settings.group_instance_id,
        consumer_auto_offset_reset="earliest",  # like the default engine: a new group misses no ride
        # Bytes in, bytes out: decoding and encoding are shared.serde's, as in the default engine.
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        producer_compression_type="lz4",  # as shared.kafka.make_producer; needs cramjam (the faust extra)
        processing_guarantee="at_least_once",
        # The topics exist (created below with the service's partition count); Faust must not create its
        # own defaults, nor the leader-election topic that only table-using apps need.
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,  # /metrics, /healthz, /readyz come from shared.metrics, as for the default engine
        datadir=str(data_dir),
        store="memory://",
        autodiscover=False,
    )
    source = app.topic(settings.input_topic, key_type=bytes, value_type=bytes)
    sinks: dict[str, TopicT] = {
        topic: app.topic(topic, key_type=bytes, value_type=bytes)
        for topic in (config.output_topic, config.dlq_topic)
    }

    async def score_each(stream: StreamT[bytes]) -> None:
        # noack: the event is acked below, after its outputs are handed to the producer. Faust's own ack
        # (when the next event is pulled, or when the agent is cancelled) could ack a half-sent event.
        manual = _concrete(stream).noack()
        async for event in manual.events():
            try:
                await _send_all(step.process([event.message]), sinks)
            except Exception as error:  # noqa: BLE001 - any failure must end the run before an ack
                _exit_uncommitted(f"processing offset {event.message.offset} failed: {error!r}")
            await manual.ack(event)

    async def score_batches(stream: StreamT[bytes]) -> None:
        # take_events acks the batch when the loop asks for the next one: after these deliveries.
        async for events in _concrete(stream).take_events(config.batch_size, within=config.batch_timeout_s):
            try:
                await asyncio.gather(*await _send_all(step.process([e.message for e in events]), sinks))
            except Exception as error:  # noqa: BLE001 - any failure must end the run before an ack
                _exit_uncommitted(f"processing a batch of {len(events)} failed: {error!r}")

    stopping = False

    async def watch() -> None:
        nonlocal stopping
        step.metrics.on_loop(ready=bool(app.consumer.assignment()))
        if not stopping and step.bounded_run_over():
            stopping = True
            log.info("%s: bounded run over (%d records); stopping", settings.service, step.stats.consumed)
            signal.raise_signal(
                signal.SIGTERM
            )  # the Worker's own graceful stop: wait for acks, commit, leave

    app.agent(source, name=f"{settings.service}-{'batched' if batched else 'per-event'}")(
        score_batches if batched else score_each
    )
    app.timer(WATCH_INTERVAL_S, name=f"{settings.service}-watch")(watch)
    return app, step


def run_faust_service(
    settings: ServiceSettings, kafka: KafkaSettings, scorer: Scorer, *, batched: bool = False
) -> RunStats:
    """Connect, make sure the topics exist, serve metrics, and run the Faust worker until SIGTERM/SIGINT
    or the end of a bounded run (max_messages / idle_timeout_s)."""
    client_config = kafka.client_config()
    wait_for_cluster(client_config, kafka.connect_timeout_s)
    for topic in (settings.input_topic, settings.output_topic, settings.dlq_topic):
        ensure_topic(client_config, topic, settings.output_partitions)
    metrics = ServiceMetrics(settings.service)
    if settings.metrics_port is not None:
        serve_metrics(metrics, settings.metrics_port, settings.metrics_host)
    # A fresh loop per run: the Worker closes its loop when it ends, and the app binds to the current one.
    asyncio.set_event_loop(asyncio.new_event_loop())
    with tempfile.TemporaryDirectory(prefix=f"ridestream-faust-{settings.service}-") as data_dir:
        app, step = make_app(
            settings, kafka, scorer, batched=batched, data_dir=Path(data_dir), metrics=metrics
        )
        log.info(
            "%s scoring %s → %s on Faust (%s) with %s %s",
            settings.service,
            settings.input_topic,
            settings.output_topic,
            "batched" if batched else "per event",
            scorer.model_name,
            scorer.model_version,
        )
        # Logging stays the caller's (the CLI configures it); the Worker installs SIGTERM/SIGINT handlers.
        worker = faust.Worker(app, quiet=True, override_logging=False, daemon=True)
        try:
            worker.execute_from_commandline()
        except SystemExit as exit_:
            if exit_.code not in (None, 0):
                raise
    return step.stats


def serve_with_faust(
    spec: ServiceSpec, overrides: Mapping[str, Any], kafka: KafkaSettings, batched: bool
) -> RunStats:
    """`ridestream consume <service> --engine faust|faust-batched`: settings → model → Faust worker → run.

    `overrides` are the CLI flags that beat the environment, as for consumers.serve.serve."""
    settings = spec.settings(overrides)
    scorer = spec.load_scorer(settings.models_dir)
    stats = run_faust_service(settings, kafka, scorer, batched=batched)
    log.info("%s (faust) stopped: %s", spec.name, stats)
    return stats


def main(argv: Sequence[str] | None = None, prog: str = "python -m stack.faust_engine") -> None:
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").splitlines()[0])
    parser.add_argument("service", choices=SERVICE_NAMES)
    parser.add_argument(
        "--batched", action="store_true", help="stream.take_events batches instead of per event"
    )
    args = parser.parse_args(argv)
    run_guarded(lambda: serve_with_faust(service_spec(args.service), {}, KafkaSettings(), args.batched))


if __name__ == "__main__":
    main()
