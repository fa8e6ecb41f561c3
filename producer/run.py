"""Wire settings → source → pacer → Kafka producer → publish, with a progress bar and a summary."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from producer.publisher import PublishSummary, publish_rides
from producer.settings import DEFAULT_SYNTHETIC_RIDES, ProducerSettings
from producer.source import Pacer, count_events, ride_events
from producer.synthetic import synthesize_trips
from producer.trips import TripFrame, read_many
from shared.kafka import ensure_topic, make_producer, wait_for_cluster
from shared.settings import KafkaSettings


@dataclass
class ProduceReport:
    summary: PublishSummary
    skipped: Counter[str]
    imputed: Counter[str]
    source: str


def load_trips(settings: ProducerSettings) -> tuple[TripFrame, str]:
    """The rides to replay: the TLC files given, else synthetic ones; at most `settings.rides`, by pickup."""
    if settings.data:
        frame = read_many(list(settings.data))
        source = ", ".join(path.name for path in settings.data)
    else:
        frame = synthesize_trips(settings.rides or DEFAULT_SYNTHETIC_RIDES, seed=settings.seed)
        source = f"synthetic (seed {settings.seed})"
    if settings.rides is not None and len(frame.trips) > settings.rides:
        frame.trips = frame.trips.nsmallest(settings.rides, "pickup_time").reset_index(drop=True)
    return frame, source


def produce(
    settings: ProducerSettings,
    kafka: KafkaSettings,
    console: Console | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> ProduceReport:
    """Replay rides into Kafka. Raises KafkaUnavailableError / DataSourceError with a clear message."""
    console = console or Console(stderr=True)
    frame, source = load_trips(settings)  # a bad file fails before we touch the cluster
    client_config = kafka.client_config()
    wait_for_cluster(client_config, kafka.connect_timeout_s)
    ensure_topic(client_config, settings.topic, settings.partitions, settings.replication_factor)
    expected = sum(count_events(frame.trips, settings.progress_interval_s).values())
    pacer = Pacer(settings.pacing_mode, rate=settings.rate, speedup=settings.speedup)
    events = ride_events(frame.trips, settings.progress_interval_s, seed=settings.seed)
    producer = make_producer(client_config)
    with Progress(
        TextColumn("[bold]publishing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("events", total=expected)
        summary = publish_rides(
            producer,
            settings.topic,
            events,
            delay_before=None if settings.pacing_mode == "max" else pacer.delay_before,
            on_progress=lambda n: progress.advance(task, n),
            should_stop=should_stop,
        )
    return ProduceReport(summary=summary, skipped=frame.skipped, imputed=frame.imputed, source=source)


def summary_json(report: ProduceReport) -> str:
    return (
        json.dumps(
            {
                "source": report.source,
                "published": dict(report.summary.published),
                "published_total": report.summary.total,
                "skipped": dict(report.skipped),
                "imputed": dict(report.imputed),
                "failed": report.summary.failed,
                "elapsed_s": round(report.summary.elapsed_s, 3),
                "events_per_s": round(report.summary.events_per_s, 1),
            },
            indent=2,
        )
        + "\n"
    )


def summary_table(report: ProduceReport, topic: str) -> Table:
    table = Table(title=f"published to {topic} from {report.source}", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    for kind, count in sorted(report.summary.published.items()):
        table.add_row(f"published {kind}", f"{count:,}")
    table.add_row("published total", f"{report.summary.total:,}")
    for reason, count in sorted(report.skipped.items()):
        table.add_row(f"skipped row: {reason}", f"{count:,}")
    table.add_row("failed deliveries", f"{report.summary.failed:,}")
    table.add_row("events/s", f"{report.summary.events_per_s:,.0f}")
    return table
