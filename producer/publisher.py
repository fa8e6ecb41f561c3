"""Publish ride events to Kafka: keyed by ride_id, paced, delivery-checked, with progress.

Ordering: every event of a ride carries the ride_id as key, so the default partitioner puts the whole ride on
one partition, and the idempotent producer keeps it in order there even across retries.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from shared.kafka import KafkaError, Message, MessageProducer, produce_with_backoff
from shared.serde import RideEventModel, encode

FLUSH_TIMEOUT_S = 60.0

DelayBefore = Callable[[datetime, float], float]
ProgressHook = Callable[[int], None]


@dataclass
class PublishSummary:
    """What a publishing run did; `failed` > 0 means some events were not acknowledged by the broker."""

    published: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    first_error: str | None = None
    elapsed_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.published.values())

    @property
    def events_per_s(self) -> float:
        return self.total / self.elapsed_s if self.elapsed_s > 0 else 0.0


class DeliveryTracker:
    """Counts acknowledgements by event type; remembers the first failure for the summary."""

    def __init__(self, summary: PublishSummary) -> None:
        self.summary = summary
        self.in_flight = 0

    def callback_for(self, event_type: str) -> Callable[[KafkaError | None, Message], None]:
        return lambda error, _message: self.delivered(event_type, error)

    def delivered(self, event_type: str, error: KafkaError | None) -> None:
        self.in_flight -= 1
        if error is None:
            self.summary.published[event_type] += 1
            return
        self.summary.failed += 1
        if self.summary.first_error is None:
            self.summary.first_error = str(error)


def publish_rides(
    producer: MessageProducer,
    topic: str,
    events: Iterable[RideEventModel],
    delay_before: DelayBefore | None = None,
    on_progress: ProgressHook | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> PublishSummary:
    """Publish `events` in order; return once every record is acknowledged or has failed.

    `delay_before(event_time, now)` paces the run (None: as fast as possible). `on_progress(n)` is called
    every few thousand events with how many were handed to the producer since the last call.
    """
    summary = PublishSummary()
    tracker = DeliveryTracker(summary)
    callbacks = {
        kind: tracker.callback_for(kind) for kind in ("ride_started", "ride_progress", "ride_completed")
    }
    started = time.monotonic()
    since_report = 0
    for event in events:
        if delay_before is not None:
            wait = delay_before(event.event_time, time.monotonic())
            if wait > 0:
                producer.poll(wait)  # serve delivery reports while we wait instead of sleeping blind
        tracker.in_flight += 1
        produce_with_backoff(
            producer, topic, event.ride_id.encode(), encode(event), callbacks[event.event_type]
        )
        since_report += 1
        if since_report >= 5000:
            producer.poll(0)
            if on_progress is not None:
                on_progress(since_report)
            since_report = 0
            if should_stop():
                break
    if on_progress is not None and since_report:
        on_progress(since_report)
    producer.flush(FLUSH_TIMEOUT_S)
    if tracker.in_flight > 0:
        summary.failed += tracker.in_flight
        summary.first_error = summary.first_error or f"{tracker.in_flight} events unacknowledged after flush"
    summary.elapsed_s = time.monotonic() - started
    return summary
