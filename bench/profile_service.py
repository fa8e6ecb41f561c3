"""Where a duration service's own time goes while it drains a backlog from the real broker: a py-spy profile.

    python -m bench.profile_service [--events 1000000] [--seconds 5] [--out results/service-profile.md]

Starts the local broker, fills a backlog of synthetic ride events (as `make bench` does), starts the
at-least-once duration service on it exactly as the benchmark's `ridestream-alo` contender, and once its
predictions flow samples its main thread with py-spy (`--idle`, so time spent waiting inside the Kafka
client counts too) for `--seconds`. The report groups the samples by the loop's stages (inclusive: a
stage's share includes what it calls) and lists the functions with the most samples of their own.
`results/service-profile.txt` keeps the collapsed stacks for flame-graph tools.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from bench.consumers import (
    all_contenders,
    encoded_events,
    expected_outputs,
    fill_topic,
    output_timestamps,
    start_contender,
    stop,
    train_bench_models,
)
from shared.kafka import TopicPartition, ensure_topic, make_consumer

# The loop's stages, by the function that runs each (a sample counts for the first that is on its stack).
STAGES: tuple[tuple[str, str], ...] = (
    ("decode and validate (plan_batch)", "plan_batch"),
    ("score: features, predict, encode (the scorer)", "TripDurationScorer.score"),
    ("produce predictions and dead letters", "ServiceRunner.produce_outputs"),
    ("commit: flush, verify deliveries, commit offsets", ".complete"),
    ("consume (the Kafka client, waiting included)", "KafkaRecordConsumer.consume"),
    ("metrics and counters", "record_batch"),
    ("blue/green bookkeeping (switch records)", "record_switches"),
)


def outputs_so_far(bootstrap: str, topic: str) -> int:
    """The records in `topic` (its partitions' high watermarks, as an at-least-once reader sees them)."""
    consumer = make_consumer({"bootstrap.servers": bootstrap}, f"profile-{uuid.uuid4().hex[:8]}")
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        marks = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions]
        return sum(high for _low, high in marks)
    finally:
        consumer.close()


def function_of(frame: str) -> str:
    return frame.split(" (")[0]


def stage_of(frames: list[str]) -> str:
    names = [function_of(frame) for frame in frames]
    for label, function in STAGES:
        if any(name.endswith(function) for name in names):
            return label
    return "the loop itself (between stages)"


def own_function(frames: list[str]) -> str:
    leaf = frames[-1]
    where = leaf.rsplit(" (", 1)[-1].rstrip(")") if " (" in leaf else ""
    return f"{function_of(leaf)} ({where.split('/')[-1]})"


def summarize(collapsed: str) -> tuple[Counter[str], Counter[str], int]:
    stages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if not frames[0].endswith("MainThread"):
            continue  # another thread's stack (the reload thread, the metrics server)
        if not any(function_of(frame) == "ServiceRunner.run" for frame in frames):
            continue  # start-up or shutdown, not the loop
        total += count
        stages[stage_of(frames)] += count
        own[own_function(frames)] += count
    return stages, own, total


def markdown(stages: Counter[str], own: Counter[str], total: int, seconds: float, rate: float) -> str:
    lines = [
        f"py-spy, {total:,} samples of the at-least-once duration service's main thread over {seconds:g} s "
        f"while it drained a backlog at ~{rate:,.0f} events/s:",
        "",
        "| stage (inclusive) | share |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {count / total:.1%} |" for name, count in stages.most_common()]
    lines += ["", "Functions with the most samples of their own:", "", "| function | share |", "|---|---:|"]
    lines += [f"| `{name}` | {count / total:.1%} |" for name, count in own.most_common(15)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("results/service-profile.md"))
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(__file__).resolve().parents[1] / ".venv/bin/py-spy")
    from stack.broker import LocalKafka

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ridestream-profile-")))
        bootstrap = stack.enter_context(LocalKafka.start(nodes=1)).bootstrap_servers
        models = work / "models"
        train_bench_models(models)
        events = encoded_events(max(1, args.events // 17), seed=7)[: args.events]
        backlog, target = f"profile-in-{uuid.uuid4().hex[:8]}", f"profile-out-{uuid.uuid4().hex[:8]}"
        for topic in (backlog, target):
            ensure_topic({"bootstrap.servers": bootstrap}, topic, 6)
        fill_topic(bootstrap, backlog, events)
        contender = all_contenders()["ridestream-alo"]
        process = start_contender(contender, bootstrap, backlog, target, models, work / "service.log")
        try:
            # predictions flow: the service has loaded, joined its group and is draining the backlog
            output_timestamps(
                bootstrap, target, 2000, contender.isolation, 120, lambda: process.poll() is None
            )
            started, before = time.monotonic(), outputs_so_far(bootstrap, target)
            raw = work / "profile.txt"
            subprocess.run(
                [py_spy, "record", "--pid", str(process.pid), "--duration", str(int(args.seconds)),
                 "--rate", "250", "--idle", "--threads", "--nonblocking", "--format", "raw",
                 "--output", str(raw)],
                check=True, capture_output=True,
            )  # fmt: skip
            elapsed = time.monotonic() - started
            produced = outputs_so_far(bootstrap, target) - before
        finally:
            stop(process)
        collapsed = raw.read_text()
    # (predictions per second ÷ the share of events scored: the input rate)
    rate = produced / elapsed / (expected_outputs("ridestream-alo", events) / len(events))
    stages, own, total = summarize(collapsed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".txt").write_text(collapsed)
    text = markdown(stages, own, total, round(elapsed, 1), rate)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
