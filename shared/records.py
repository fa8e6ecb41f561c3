"""The engine-neutral input record: what the runtime knows of one consumed Kafka record.

Every engine converts its own message type once, at its edge (confluent-kafka in `shared.kafka`, Faust in
`stack.faust_engine`, the benchmark's peers, the tests), so decoding, scoring, dead letters and offsets are
written once against plain attributes instead of each engine imitating confluent_kafka.Message.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from operator import attrgetter
from typing import NamedTuple

# As confluent-kafka types them (a header value may be text or absent), so that our records can be produced.
Headers = list[tuple[str, str | bytes | None]]


class InputRecord(NamedTuple):
    # A NamedTuple, not a frozen dataclass: one is built per consumed record, and a tuple builds in a
    # third of the time (0.35 against 1.2 µs here), which is several per cent of a scoring service's CPU.
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None
    # Producer (create) or broker (log-append) time in ms since the epoch; 0 or less when unknown.
    timestamp_ms: int = 0


class OffsetRange(NamedTuple):
    """The records of one partition seen in a batch: the first offset, and the next one to consume."""

    topic: str
    partition: int
    first: int
    next: int


def offset_ranges(records: Sequence[InputRecord]) -> list[OffsetRange]:
    """Per partition, the first offset in `records` and one past the highest (what a commit covers)."""
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    # A fetch hands out each partition's records as one run: one min/max per run, not a dict per record.
    for key, run in groupby(records, key=_partition_of):
        offsets = [record.offset for record in run]
        low, high = min(offsets), max(offsets)
        first, last = spans.get(key, (low, high))
        spans[key] = (min(first, low), max(last, high))
    return [
        OffsetRange(topic, partition, first, last + 1) for (topic, partition), (first, last) in spans.items()
    ]


_partition_of = attrgetter("topic", "partition")
