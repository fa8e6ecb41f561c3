"""The backend's two Kafka clients: a publisher whose delivery reports an async request can await, and the
feed that reads the prediction topics and hands each prediction to the riders watching its ride."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Mapping, Sequence

from consumers.backend.rides import Bounded
from shared.errors import ConfigError, DeliveryError
from shared.kafka import OFFSET_END, KafkaError, Message, TopicPartition, make_consumer, make_producer

log = logging.getLogger(__name__)

# An update as the rider's stream sends it: the SSE event name and its JSON.
Update = tuple[str, bytes]
HISTORY_PER_RIDE = 64


class Publisher:
    """Ride events to the input topic, keyed by ride; `publish` returns once the broker has the record."""

    def __init__(self, client_config: Mapping[str, str], topic: str, timeout_s: float = 10.0) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        self.producer = make_producer(
            client_config,
            {"enable.idempotence": True, "linger.ms": 1, "message.timeout.ms": int(timeout_s * 1000)},
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="backend-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)

    async def publish(self, key: str, value: bytes) -> None:
        loop = asyncio.get_running_loop()
        delivered: asyncio.Future[None] = loop.create_future()

        def settle(error: KafkaError | None, _message: Message) -> None:
            def resolve() -> None:
                if delivered.done():
                    return
                if error is None:
                    delivered.set_result(None)
                else:
                    delivered.set_exception(DeliveryError(f"{self.topic}: {error}"))

            loop.call_soon_threadsafe(resolve)

        try:
            self.producer.produce(self.topic, value, key.encode(), on_delivery=settle)
        except BufferError as exc:
            raise DeliveryError(f"{self.topic}: the producer's queue is full ({exc})") from exc
        try:
            await asyncio.wait_for(delivered, self.timeout_s + 1)
        except TimeoutError as exc:
            raise DeliveryError(f"{self.topic}: not acknowledged in {self.timeout_s:.0f}s") from exc

    def close(self) -> None:
        self._stop.set()
        self._poller.join(5)
        self.producer.flush(10)


class PredictionFeed:
    """Reads the prediction topics from their end (assigned, not a group member: every backend instance sees
    every prediction) and fans each out to the subscribers of its ride, after a short replay of what the ride
    had already (a rider's page connects after its first predictions may have landed)."""

    def __init__(self, client_config: Mapping[str, str], topics: Sequence[str], max_rides: int) -> None:
        self.topics = list(topics)
        self.consumer = make_consumer(client_config, f"ridestream-backend-feed-{uuid.uuid4().hex[:12]}")
        self.history: Bounded[str, list[Update]] = Bounded(max_rides)
        self.subscribers: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Update | None]]]] = {}
        self.lock = threading.Lock()
        self.assigned = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backend-feed", daemon=True)

    def start(self, timeout_s: float = 10.0) -> None:
        """Every partition of the prediction topics, from its end: no group membership to wait for."""
        metadata = self.consumer.list_topics(timeout=timeout_s)
        partitions = [
            TopicPartition(topic, number, OFFSET_END)
            for topic in self.topics
            for number in sorted(metadata.topics[topic].partitions if topic in metadata.topics else ())
        ]
        missing = [t for t in self.topics if t not in metadata.topics]
        if missing:
            raise ConfigError(f"prediction topics not found: {', '.join(missing)}")
        self.consumer.assign(partitions)
        self.assigned.set()
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for message in self.consumer.consume(500, 0.2):
                    if message.error() is None:
                        self.dispatch(message.value() or b"")
        except Exception:
            log.exception("the prediction feed stopped")
            self.assigned.clear()  # /readyz says so
        finally:
            self.consumer.close()

    def dispatch(self, value: bytes) -> None:
        """A prediction to its ride's subscribers, as an SSE event named by its type (duration, tip, cost)."""
        try:
            body = json.loads(value)
            ride_id, kind = str(body["ride_id"]), str(body.get("prediction_type", "prediction"))
        except (ValueError, KeyError, TypeError):
            return  # not a prediction: nothing a rider waits for
        self.push(ride_id, (kind, value))

    def push(self, ride_id: str, update: Update | None) -> None:
        with self.lock:
            if update is not None:
                past = self.history.get(ride_id) or []
                self.history.put(ride_id, [*past[-(HISTORY_PER_RIDE - 1) :], update])
            for loop, queue in self.subscribers.get(ride_id, ()):
                loop.call_soon_threadsafe(queue.put_nowait, update)

    def subscribe(self, ride_id: str) -> asyncio.Queue[Update | None]:
        queue: asyncio.Queue[Update | None] = asyncio.Queue()
        with self.lock:
            for update in self.history.get(ride_id) or []:
                queue.put_nowait(update)
            self.subscribers.setdefault(ride_id, []).append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, ride_id: str, queue: asyncio.Queue[Update | None]) -> None:
        with self.lock:
            left = [s for s in self.subscribers.get(ride_id, []) if s[1] is not queue]
            if left:
                self.subscribers[ride_id] = left
            else:
                self.subscribers.pop(ride_id, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
