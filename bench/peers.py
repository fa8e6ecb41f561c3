"""What a peer framework's contender runs per record: the very decisions of ridestream's runner, one record at a time.

A peer (Quix Streams, bench/quix_contender.py) hands over a record's value, key and headers plus where it came
from; `score_record` answers with the one record to produce, or None for an event this service does not
score. Deciding goes through `shared.runner.plan_batch` (oversize check, `shared.serde.decode_event`,
event-type filter, `shared.dead_letter.dead_letter_for` headers) on a batch of one, and scoring through the
service's own scorer on a list of one, so a contender differs from ridestream only in its loop, its clients
and in calling `predict` once per event instead of once per batch.

No peer framework is imported here: the step runs in any venv that has the project and its scorer deps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast

from shared.kafka import Message
from shared.runner import Scorer, score_batch


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A peer's view of a consumed record, behind the `confluent_kafka.Message` accessors plan_batch reads."""

    value_: bytes | None
    key_: bytes | None
    headers_: Sequence[tuple[str, bytes]] | None
    topic_: str
    partition_: int
    offset_: int

    def value(self) -> bytes | None:
        return self.value_

    def key(self) -> bytes | None:
        return self.key_

    def headers(self) -> list[tuple[str, bytes]]:
        return list(self.headers_ or ())

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def error(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class PeerOutput:
    """One record to produce: a prediction (keyed by ride_id) or a dead letter (the input, with reason headers)."""

    kind: Literal["prediction", "dead_letter"]
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def score_record(record: PeerRecord, scorer: Scorer, service: str, max_payload: int) -> PeerOutput | None:
    """Decode, validate and score one record exactly as ridestream's runner would inside a batch."""
    message = cast(Message, record)  # score_batch and the dead letters only call PeerRecord's accessors
    plan, predictions = score_batch([message], scorer, service, max_payload, datetime.now(UTC))
    if plan.dead_letters:
        letter = plan.dead_letters[0]
        return PeerOutput("dead_letter", letter.key, letter.value, letter.headers)
    if not predictions:
        return None  # a valid event of a type this service does not score (ride_completed for duration)
    prediction = predictions[0]
    return PeerOutput("prediction", prediction.key, prediction.value, [])
