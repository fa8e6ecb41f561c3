"""What a peer framework's contender runs per record: the very decisions of ridestream's runner, one record
at a time.

A peer (Quix Streams, bench/quix_contender.py) hands over a record's value, key and headers plus where it came
from; `score_record` answers with the one record to produce, or None for an event this service does not
score. Deciding goes through `shared.runner.score_batch` (oversize check, `shared.serde.decode_event`,
event-type filter, `shared.dead_letter.dead_letter_for` headers) on a batch of one, and scoring through the
service's own scorer on a list of one, so a contender differs from ridestream only in its loop, its clients
and in calling `predict` once per event instead of once per batch.

No peer framework is imported here: the step runs in any venv that has the project and its scorer deps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from shared.protocols import Scorer
from shared.records import Headers, InputRecord
from shared.runner import score_batch

# A peer's view of a consumed record is the runtime's engine-neutral record.
PeerRecord = InputRecord


@dataclass(frozen=True, slots=True)
class PeerOutput:
    """One record to produce: a prediction (keyed by ride_id) or a dead letter (the input, with reason
    headers)."""

    kind: Literal["prediction", "dead_letter"]
    key: bytes | None
    value: bytes | None
    headers: Headers


def score_record(record: PeerRecord, scorer: Scorer, service: str, max_payload: int) -> PeerOutput | None:
    """Decode, validate and score one record exactly as ridestream's runner would inside a batch."""
    batch = score_batch([record], scorer, service, max_payload, datetime.now(UTC))
    if batch.dead_letters:
        letter = batch.dead_letters[0]
        return PeerOutput("dead_letter", letter.key, letter.value, letter.headers)
    if not batch.predictions:
        return None  # a valid event of a type this service does not score (ride_completed for duration)
    prediction = batch.predictions[0]
    return PeerOutput("prediction", prediction.key, prediction.value, [])
