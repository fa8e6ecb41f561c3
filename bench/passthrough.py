"""The client's ceiling: consume a batch → produce the same bytes → flush → commit, no decoding, no model.

    python -m bench.passthrough --bootstrap-servers B --input T --output O --group G [--max-messages N]

Same client settings and batch shape as a ridestream service (shared/kafka.py factories), so the ratio of a
service to this process isolates what ridestream adds: decoding, validation, scoring, encoding.
"""

from __future__ import annotations

import argparse
import time

from shared.kafka import make_consumer, make_producer


def passthrough(bootstrap: str, source: str, target: str, group: str, batch_size: int, max_messages: int | None,
                idle_timeout_s: float) -> int:
    config = {"bootstrap.servers": bootstrap}
    consumer = make_consumer(config, group)
    producer = make_producer(config, {"linger.ms": 1})
    consumer.subscribe([source])
    moved, last_record = 0, time.monotonic()
    try:
        while max_messages is None or moved < max_messages:
            batch = [m for m in consumer.consume(batch_size, 0.05) if m.error() is None]
            if not batch:
                if time.monotonic() - last_record > idle_timeout_s:
                    break
                continue
            last_record = time.monotonic()
            for message in batch:
                while True:
                    try:
                        producer.produce(target, value=message.value(), key=message.key())
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.flush(30)
            consumer.commit(asynchronous=False)
            moved += len(batch)
    finally:
        consumer.close()
    return moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--max-messages", type=int)
    parser.add_argument("--idle-timeout", type=float, default=3600.0)
    args = parser.parse_args()
    passthrough(args.bootstrap_servers, args.input, args.output, args.group, args.batch_size, args.max_messages,
                args.idle_timeout)


if __name__ == "__main__":
    main()
