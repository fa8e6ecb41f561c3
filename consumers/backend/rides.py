"""Rides as the backend sees them, pure: request bodies → the ride events it publishes, the bounded memory of
rides and idempotency keys, and the SSE framing of a prediction."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime
from typing import Generic, TypeVar

from schemas.events import RideCompleted, RideProgress, RideStarted
from schemas.http import Completion, Progress

K = TypeVar("K")
V = TypeVar("V")


class Bounded(Generic[K, V]):
    """A dict that forgets its oldest entries past `limit` (rides and idempotency keys of a long run)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)


def ride_id_for(idempotency_key: str | None, fresh: str) -> str:
    """A retried request (same Idempotency-Key) names the same ride, on any backend instance."""
    if not idempotency_key:
        return fresh
    return "ride-" + hashlib.blake2b(idempotency_key.encode(), digest_size=12).hexdigest()


def update_event_id(ride_id: str, kind: str, given: str | None, fresh: str) -> str:
    return given if given else f"{ride_id}:{kind}:{fresh}"


def progress_event(started: RideStarted, update: Progress, event_id: str, now: datetime) -> RideProgress:
    """Raises pydantic's ValidationError when the update contradicts the ride (before its pickup, beyond its
    distance): the caller answers 422 with it."""
    return RideProgress(
        event_id=event_id,
        ride_id=started.ride_id,
        event_time=update.event_time or now,
        pickup_time=started.pickup_time,
        pickup_zone=started.pickup_zone,
        dropoff_zone=started.dropoff_zone,
        trip_distance_miles=started.trip_distance_miles,
        elapsed_seconds=update.elapsed_seconds,
        distance_covered_miles=update.distance_covered_miles,
    )


def completed_event(started: RideStarted, done: Completion, event_id: str) -> RideCompleted:
    return RideCompleted(
        event_id=event_id,
        ride_id=started.ride_id,
        event_time=done.dropoff_time,
        pickup_time=started.pickup_time,
        pickup_zone=started.pickup_zone,
        dropoff_zone=started.dropoff_zone,
        dropoff_time=done.dropoff_time,
        duration_minutes=max(0.0, (done.dropoff_time - started.pickup_time).total_seconds() / 60),
        trip_distance_miles=done.trip_distance_miles,
        payment_type=done.payment_type,
        fare_amount_usd=done.fare_amount_usd,
        tip_amount_usd=done.tip_amount_usd,
        total_amount_usd=done.total_amount_usd,
    )


def sse_frame(event: str, data: bytes | str, event_id: str | None = None) -> bytes:
    """One Server-Sent Event (the data is one JSON line)."""
    text = data.decode() if isinstance(data, bytes) else data
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(json.loads(text), separators=(',', ':'))}\n\n".encode()
