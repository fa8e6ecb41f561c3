"""Dead letters: a refused input record, republished unchanged with headers saying why.

The value and key are the original bytes and the original headers are kept, so an operator can fix and
replay the record; ridestream's own headers are prefixed `ridestream.`.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.kafka import Message

REASON_HEADER = "ridestream.reason"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def dead_letter_for(message: Message, reason: str, detail: str, service: str) -> DeadLetter:
    """The dead-letter record for `message`, refused by `service` for `reason`."""
    original = [(name, value or b"") for name, value in (message.headers() or [])]
    ours = [
        (REASON_HEADER, reason.encode()),
        ("ridestream.error", detail.encode("utf-8", "replace")[:2000]),
        ("ridestream.service", service.encode()),
        ("ridestream.source.topic", (message.topic() or "").encode()),
        ("ridestream.source.partition", str(message.partition()).encode()),
        ("ridestream.source.offset", str(message.offset()).encode()),
    ]
    return DeadLetter(key=message.key(), value=message.value(), headers=original + ours)
