"""The client's ceiling: consume a batch → produce the same bytes → commit, no decoding, no model.

    python -m bench.passthrough --bootstrap-servers B --input T --output O --group G [--max-messages N]
                                [--batch-size N] [--batch-timeout S] [--commit-interval S]

Same client settings, batch shape and commit policy as a ridestream at-least-once service (the shared/kafka.py
factories, the runner's batch size and consume timeout, and shared.guarantees.AtLeastOnce, which flushes,
verifies delivery and commits every commit interval), so the ratio of a service to this process isolates what
ridestream adds: decoding, validation, scoring, encoding.
"""

from __future__ import annotations

import argparse
import time

from shared.guarantees import COMMIT_INTERVAL_S, COMMIT_MAX_MESSAGES, AtLeastOnce, DeliveryLedger
from shared.kafka import Message, make_producer, make_record_consumer, produce_with_backoff
from shared.records import OffsetRange
from shared.runner import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TIMEOUT_S, DEFAULT_FLUSH_TIMEOUT_S


def raw_offset_ranges(messages: list[Message]) -> list[OffsetRange]:
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for message in messages:
        key, offset = (message.topic() or "", message.partition() or 0), message.offset() or 0
        first, last = spans.get(key, (offset, offset))
        spans[key] = (min(first, offset), max(last, offset))
    return [
        OffsetRange(topic, partition, first, last + 1) for (topic, partition), (first, last) in spans.items()
    ]


def passthrough(
    bootstrap: str,
    source: str,
    target: str,
    group: str,
    batch_size: int,
    max_messages: int | None,
    idle_timeout_s: float,
    batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S,
    commit_interval_s: float = COMMIT_INTERVAL_S,
) -> int:
    config = {"bootstrap.servers": bootstrap}
    # The committer speaks the runtime's consumer seam; the loop consumes raw messages from its client, so the
    # ceiling pays for no record conversion.
    consumer = make_record_consumer(config, group)
    producer = make_producer(config, {"linger.ms": 1})
    committer = AtLeastOnce(
        consumer, producer, "passthrough", DEFAULT_FLUSH_TIMEOUT_S, COMMIT_MAX_MESSAGES, commit_interval_s
    )
    consumer.client.subscribe([source])
    moved, last_record = 0, time.monotonic()
    try:
        while max_messages is None or moved < max_messages:
            batch = [m for m in consumer.client.consume(batch_size, batch_timeout_s) if m.error() is None]
            if not batch:
                committer.tick()
                if time.monotonic() - last_record > idle_timeout_s:
                    break
                continue
            last_record = time.monotonic()
            ledger = DeliveryLedger()
            for message in batch:
                ledger.expect()
                produce_with_backoff(producer, target, message.key(), message.value(), ledger.on_delivery)
            committer.complete(raw_offset_ranges(batch), ledger, len(batch))
            moved += len(batch)
    finally:
        try:
            committer.close()
        finally:
            consumer.close()
    return moved


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--batch-timeout", type=float, default=DEFAULT_BATCH_TIMEOUT_S, help="consume timeout, seconds"
    )
    parser.add_argument(
        "--commit-interval", type=float, default=COMMIT_INTERVAL_S, help="flush and commit every S seconds"
    )
    parser.add_argument("--max-messages", type=int)
    parser.add_argument("--idle-timeout", type=float, default=3600.0)
    args = parser.parse_args()
    passthrough(
        args.bootstrap_servers,
        args.input,
        args.output,
        args.group,
        args.batch_size,
        args.max_messages,
        args.idle_timeout,
        args.batch_timeout,
        args.commit_interval,
    )


if __name__ == "__main__":
    main()
