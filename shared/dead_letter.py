"""Dead letters: a refused input record, republished unchanged with headers saying why.

The value and key are the original bytes and the original headers are kept, so an operator can fix and
replay the record; ridestream's own headers are prefixed `ridestream.`.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.records import Headers, InputRecord

REASON_HEADER = "ridestream.reason"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: Headers


def dead_letter_for(record: InputRecord, reason: str, detail: str, service: str) -> DeadLetter:
    """The dead-letter record for `record`, refused by `service` for `reason`."""
    original: Headers = [(name, value or b"") for name, value in (record.headers or [])]
    ours: Headers = [
        (REASON_HEADER, reason.encode()),
        ("ridestream.error", detail.encode("utf-8", "replace")[:2000]),
        ("ridestream.service", service.encode()),
        ("ridestream.source.topic", record.topic.encode()),
        ("ridestream.source.partition", str(record.partition).encode()),
        ("ridestream.source.offset", str(record.offset).encode()),
    ]
    return DeadLetter(key=record.key, value=record.value, headers=original + ours)
