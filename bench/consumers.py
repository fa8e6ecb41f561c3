"""Consumer benchmark: every contender against the raw client's ceiling, in one invocation.

    python -m bench.consumers [--events 300000] [--rounds 5] [--rates 1000,5000,20000] [--contenders a,b,...]
                              [--bootstrap-servers B] [--out results/bench.json]

Each contender is a separate OS process scoring the same ride events from the same local broker:
  passthrough       raw confluent-kafka consume → produce the same bytes → commit (no decoding, no model)
  ridestream-alo    the duration service (python -m consumers.duration), at-least-once
  ridestream-eos    the same with processing_guarantee=exactly_once (outputs read with read_committed)
  faust, faust-batched   the same scorer on Faust agents (per event / stream.take), when faust is installed

Measured per contender: sustained events/s draining a backlog (first to last output timestamp), p50/p95/p99
event→output latency at fixed offered rates and at "max", 90% of the contender's own drain rate (input
CreateTime to the moment a downstream reader sees the output), CPU seconds per 1k events while outputs flowed
(all threads of the process, start-up excluded) and peak RSS. A 2-core machine's absolute numbers drift by 2x
between runs (the broker, the reader and the contender share the cores), so the passthrough and ridestream
contenders drain the backlog in `--rounds` interleaved rounds, each round in a rotated order: a round's ratio
compares runs seconds apart, and the reported ratio is the median of the rounds' ratios (every round is kept
in the JSON). The peers, 10-100x slower, drain once. Writes JSON, a markdown table and a PNG plot; README's
performance section is generated from them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.quix_contender import quix_available, quix_command
from producer.source import ride_events
from producer.synthetic import synthesize_trips
from shared.kafka import (
    OFFSET_BEGINNING,
    TopicPartition,
    ensure_topic,
    make_consumer,
    make_producer,
    produce_with_backoff,
)
from shared.protocols import MessageProducer
from shared.serde import encode

REPO = Path(__file__).resolve().parents[1]
PROGRESS_INTERVAL_S = 60.0
WARMUP_S = 1.0
# "max" latency is measured at this share of a contender's own drain rate (at 100% its queue only grows),
# and never above what the benchmark's single Python load generator paces reliably.
MAX_RATE_SHARE = 0.9
LOAD_GENERATOR_CAP = 100_000.0
# Contenders whose ratios carry targets close enough to need repeated, interleaved rounds.
ROUNDED = ("passthrough", "ridestream-alo", "ridestream-eos")


@dataclass(frozen=True)
class Contender:
    name: str
    command: Callable[[str, str, str, str, Path], tuple[list[str], dict[str, str]]]
    isolation: str = "read_uncommitted"


def service_batch_size() -> int:
    """The duration service's micro-batch size (its default, or DURATION_BATCH_SIZE when exported for an
    experiment); the passthrough consumes batches of the same size."""
    from shared.runner import DEFAULT_BATCH_SIZE

    default = DEFAULT_BATCH_SIZE
    return int(os.environ.get("DURATION_BATCH_SIZE", default))


def service_batch_timeout_s() -> float:
    """The duration service's consume timeout (DURATION_BATCH_TIMEOUT_S when exported for an experiment);
    the passthrough waits as long for a batch."""
    from shared.runner import DEFAULT_BATCH_TIMEOUT_S

    return float(os.environ.get("DURATION_BATCH_TIMEOUT_S", DEFAULT_BATCH_TIMEOUT_S))


def service_commit_interval_s() -> float:
    """The duration service's commit interval (DURATION_COMMIT_INTERVAL_S when exported for an experiment);
    the passthrough flushes and commits as often."""
    from shared.guarantees import COMMIT_INTERVAL_S

    return float(os.environ.get("DURATION_COMMIT_INTERVAL_S", COMMIT_INTERVAL_S))


def ridestream_command(
    guarantee: str, engine: str | None = None
) -> Callable[..., tuple[list[str], dict[str, str]]]:
    def command(
        bootstrap: str, source: str, target: str, group: str, models: Path
    ) -> tuple[list[str], dict[str, str]]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DURATION_INPUT_TOPIC": source,
            "DURATION_OUTPUT_TOPIC": target,
            "DURATION_DLQ_TOPIC": target + ".dlq",
            "DURATION_GROUP_ID": group,
            "DURATION_MODELS_DIR": str(models),
            "DURATION_PROCESSING_GUARANTEE": guarantee,
            "DURATION_INSTANCE_NAME": "bench",
            "DURATION_BATCH_SIZE": str(service_batch_size()),
        }
        if engine is None:
            return [sys.executable, "-m", "consumers.duration"], env
        return [sys.executable, "-m", "stack.cli", "consume", "duration", "--engine", engine], env

    return command


def passthrough_command(
    bootstrap: str, source: str, target: str, group: str, _models: Path
) -> tuple[list[str], dict[str, str]]:
    return [
        sys.executable,
        "-m",
        "bench.passthrough",
        "--bootstrap-servers",
        bootstrap,
        "--input",
        source,
        "--output",
        target,
        "--group",
        group,
        "--batch-size",
        str(service_batch_size()),
        "--batch-timeout",
        str(service_batch_timeout_s()),
        "--commit-interval",
        str(service_commit_interval_s()),
    ], {}


def faust_available() -> bool:
    import importlib.util

    return (
        importlib.util.find_spec("faust") is not None
        and importlib.util.find_spec("stack.faust_engine") is not None
    )


def all_contenders() -> dict[str, Contender]:
    contenders = {
        "passthrough": Contender("passthrough", passthrough_command),
        "ridestream-alo": Contender("ridestream-alo", ridestream_command("at_least_once")),
        "ridestream-eos": Contender("ridestream-eos", ridestream_command("exactly_once"), "read_committed"),
    }
    if faust_available():
        contenders["faust"] = Contender("faust", ridestream_command("at_least_once", "faust"))
        contenders["faust-batched"] = Contender(
            "faust-batched", ridestream_command("at_least_once", "faust-batched")
        )
    if quix_available():
        contenders["quix"] = Contender("quix", quix_command)
    return contenders


@dataclass
class Sampler:
    """Samples a process's RSS and CPU time in the background."""

    process: psutil.Process
    peak_rss: int = 0
    cpu_s: float = 0.0
    history: list[tuple[float, int]] = field(default_factory=list)  # (wall clock s, RSS bytes)
    cpu_history: list[tuple[float, float]] = field(default_factory=list)  # (wall clock s, CPU s so far)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Sampler:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                sampled_at, rss = time.time(), self.process.memory_info().rss
                self.peak_rss = max(self.peak_rss, rss)
                self.history.append((sampled_at, rss))
                times = self.process.cpu_times()
                self.cpu_s = times.user + times.system
                self.cpu_history.append((time.time(), self.cpu_s))
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop.set()

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds the process used between two wall-clock times (nearest samples)."""

        def at(moment: float) -> float:
            return (
                min(self.cpu_history, key=lambda sample: abs(sample[0] - moment))[1]
                if self.cpu_history
                else 0.0
            )

        return max(0.0, at(end) - at(start))


def encoded_events(rides: int, seed: int) -> list[tuple[bytes, bytes]]:
    trips = synthesize_trips(rides, seed=seed).trips
    return [
        (event.ride_id.encode(), encode(event)) for event in ride_events(trips, PROGRESS_INTERVAL_S, seed)
    ]


def fill_topic(
    bootstrap: str,
    topic: str,
    events: list[tuple[bytes, bytes]],
    rate: float | None = None,
    producer: MessageProducer | None = None,
) -> None:
    """Publish `events`, as fast as possible or at `rate` events/s. Pass a warm `producer` when timing
    matters: a new one spends its first few hundred ms finding the cluster and its producer id, and every
    record created meanwhile would carry that wait as contender latency."""
    producer = producer or make_producer({"bootstrap.servers": bootstrap})
    started = time.monotonic()
    for index, (key, value) in enumerate(events):
        if rate is not None:
            wait = index / rate - (time.monotonic() - started)
            if wait > 0:
                producer.poll(wait)
        produce_with_backoff(producer, topic, key, value)
        if index % 1000 == 0:
            producer.poll(0)
    producer.flush(120)


def output_timestamps(
    bootstrap: str,
    topic: str,
    expected: int,
    isolation: str,
    timeout_s: float,
    alive: Callable[[], bool],
    receipt: bool = False,
) -> list[tuple[int, bytes]]:
    """(ms, value) of `expected` output records, read as a downstream client would. The time is the
    record's CreateTime, or with `receipt` the wall clock when this reader got it (what latency means
    under exactly-once: an output counts once a read_committed reader can see it)."""
    consumer = make_consumer(
        {"bootstrap.servers": bootstrap},
        f"bench-reader-{uuid.uuid4().hex[:8]}",
        {"isolation.level": isolation},
    )
    # Assigned, not subscribed: a group join would delay the first reads by a rebalance.
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    records: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline and alive():
            if receipt:
                # As a downstream client sees them: poll returns as soon as one record is there (a batch
                # consume would hold every record for its whole timeout, a latency of the reader, not of
                # the contender), then whatever else already arrived, stamped at the same moment.
                first = consumer.poll(0.1)
                if first is None:
                    continue
                stamp = int(time.time() * 1000)
                batch = [first, *consumer.consume(10_000, 0)]
            else:
                batch = consumer.consume(10_000, 0.5)
            for message in batch:
                if message.error() is None:
                    records.append((stamp if receipt else message.timestamp()[1], message.value() or b""))
    finally:
        consumer.close()
    return records


def start_contender(
    contender: Contender, bootstrap: str, source: str, target: str, models: Path, log: Path
) -> subprocess.Popen[bytes]:
    argv, env = contender.command(bootstrap, source, target, f"bench-{uuid.uuid4().hex[:8]}", models)
    with log.open("ab") as sink:
        return subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def expected_outputs(contender: str, events: list[tuple[bytes, bytes]]) -> int:
    """The duration service scores ride_started and ride_progress; the passthrough copies everything."""
    if contender == "passthrough":
        return len(events)
    return sum(1 for _key, value in events if b'"ride_completed"' not in value)


def measure_throughput(
    contender: Contender,
    bootstrap: str,
    backlog: str,
    events: list[tuple[bytes, bytes]],
    models: Path,
    log_dir: Path,
    budget_s: float = 120.0,
) -> dict[str, Any]:
    target = f"bench-out-{uuid.uuid4().hex[:8]}"
    ensure_topic({"bootstrap.servers": bootstrap}, target, 6)
    process = start_contender(
        contender, bootstrap, backlog, target, models, log_dir / f"{contender.name}.log"
    )
    sampler = Sampler(psutil.Process(process.pid)).start()
    expected = expected_outputs(contender.name, events)
    try:
        records = output_timestamps(
            bootstrap, target, expected, contender.isolation, budget_s, lambda: process.poll() is None
        )
    finally:
        sampler.stop()
        stop(process)
    if len(records) < min(expected, 1000):
        raise RuntimeError(
            f"{contender.name}: {len(records)} of {expected} outputs (see {log_dir / contender.name}.log)"
        )
    # A slow contender is measured on the part of the backlog it drained within the budget: its steady rate.
    stamps = sorted(ts for ts, _ in records)
    seconds = max(1e-3, (stamps[-1] - stamps[0]) / 1000)
    inputs = len(events) * len(records) / expected
    return {
        "events_per_s": round(inputs / seconds),
        "drained": f"{len(records):,} of {expected:,} outputs",
        "peak_rss_mb": round(sampler.peak_rss / 2**20, 1),
        # While outputs flowed (first to last): start-up (imports, model load, group join) is not per event.
        "cpu_s_per_1k_events": round(
            sampler.cpu_between(stamps[0] / 1000, stamps[-1] / 1000) / inputs * 1000, 4
        ),
    }


SOAK_WINDOW = (
    "RSS sampled every 0.1 s while the contender scored (from its first output's CreateTime to its last's: "
    "imports, model load and the group join before the first output are left out); that scoring period's "
    "samples in tenths: the highest RSS of the second tenth against the highest of the last tenth"
)


def soak_window(
    samples: Sequence[tuple[float, int]], first_output_s: float, last_output_s: float
) -> dict[str, Any]:
    """RSS growth over the scoring period only: `samples` are (wall clock s, RSS bytes) from process start,
    the period runs from the first output to the last (wall clock s). Of the samples inside it, the highest
    RSS of the second tenth (the first still holds the first fetches filling the prefetch queue) against
    the highest of the last tenth; also the RSS at the first output and at the end (the nearest samples
    inside the period)."""
    scoring = [rss for at, rss in samples if first_output_s <= at <= last_output_s]
    if not scoring:
        raise ValueError("no RSS sample between the first and the last output")
    tenth = max(1, len(scoring) // 10)
    early = max(scoring[tenth : 2 * tenth] or scoring)
    late = max(scoring[-tenth:])

    def mb(rss: int) -> float:
        return round(rss / 2**20, 1)

    return {
        "rss_mb_second_tenth": mb(early),
        "rss_mb_last_tenth": mb(late),
        "growth": round(late / early - 1, 4),
        "rss_mb_at_first_output": mb(scoring[0]),
        "rss_mb_at_end": mb(scoring[-1]),
        "window": SOAK_WINDOW,
        "scoring_s": round(last_output_s - first_output_s, 1),
        "scoring_samples": len(scoring),
        "samples_per_tenth": tenth,
    }


def measure_soak(
    contender: Contender, bootstrap: str, events: list[tuple[bytes, bytes]], models: Path, log_dir: Path
) -> dict[str, Any]:
    """RSS over a long backlog, while it is scored: flat means the highest RSS in the last tenth of the
    scoring period (first output to last) sits within 10% of the highest in its second tenth. Start-up
    (imports, model load, group join) comes before the first output and is not compared (`soak_window`)."""
    source, target = f"bench-soak-in-{uuid.uuid4().hex[:8]}", f"bench-soak-out-{uuid.uuid4().hex[:8]}"
    for topic in (source, target):
        ensure_topic({"bootstrap.servers": bootstrap}, topic, 6)
    fill_topic(bootstrap, source, events)
    process = start_contender(
        contender, bootstrap, source, target, models, log_dir / f"{contender.name}-soak.log"
    )
    sampler = Sampler(psutil.Process(process.pid)).start()
    try:
        records = output_timestamps(
            bootstrap,
            target,
            expected_outputs(contender.name, events),
            contender.isolation,
            1800,
            lambda: process.poll() is None,
        )
    finally:
        sampler.stop()
        stop(process)
    if not records:
        log = log_dir / f"{contender.name}-soak.log"
        raise RuntimeError(f"{contender.name}: no output in the soak (see {log})")
    stamps = [ts for ts, _ in records]  # output CreateTimes: when the contender produced them
    return {
        "contender": contender.name,
        "events": len(events),
        "outputs": len(records),
        **soak_window(sampler.history, min(stamps) / 1000, max(stamps) / 1000),
    }


def source_ids(value: bytes) -> str:
    document = json.loads(value)
    return str(document.get("source_event_id") or document.get("event_id"))


def measure_latency(
    contender: Contender, bootstrap: str, rate: float, seconds: float, models: Path, log_dir: Path, seed: int
) -> dict[str, float]:
    config = {"bootstrap.servers": bootstrap}
    source, target = f"bench-lat-in-{uuid.uuid4().hex[:8]}", f"bench-lat-out-{uuid.uuid4().hex[:8]}"
    ensure_topic(config, source, 6)
    ensure_topic(config, target, 6)
    process = start_contender(
        contender, bootstrap, source, target, models, log_dir / f"{contender.name}-lat.log"
    )
    try:
        producer = make_producer(config)
        warmup = encoded_events(20, seed + 1000)
        fill_topic(
            bootstrap, source, warmup, producer=producer
        )  # readiness: the contender answered real input

        def alive() -> bool:
            return process.poll() is None

        output_timestamps(
            bootstrap, target, expected_outputs(contender.name, warmup), contender.isolation, 120, alive
        )
        total = int(rate * (seconds + WARMUP_S))
        events = encoded_events(max(50, total // 16), seed)[:total]
        input_times: dict[str, int] = {}
        # The reader runs during the load and stamps each output when it becomes visible to it.
        outputs: list[tuple[int, bytes]] = []
        reader = threading.Thread(
            target=lambda: outputs.extend(
                output_timestamps(
                    bootstrap,
                    target,
                    expected_outputs(contender.name, warmup + events),
                    contender.isolation,
                    120,
                    alive,
                    receipt=True,
                )
            ),
            daemon=True,
        )
        reader.start()
        fill_topic(bootstrap, source, events, rate, producer=producer)
        for ts, value in output_timestamps(
            bootstrap, source, len(warmup) + len(events), "read_uncommitted", 120, lambda: True
        ):
            input_times[source_ids(value)] = ts
        reader.join(150)
    finally:
        stop(process)
    # The first WARMUP_S of load is not measured: caches, connections and batch sizes settle there.
    measured = {source_ids(value) for _key, value in events[int(rate * WARMUP_S) :]}
    latencies = sorted(
        ts - input_times[sid] for ts, value in outputs if (sid := source_ids(value)) in measured
    )

    def pct(q: float) -> float:
        return (
            float(latencies[min(len(latencies) - 1, int(q * len(latencies)))]) if latencies else float("nan")
        )

    return {
        "offered_per_s": rate,
        "samples": len(latencies),
        "p50_ms": pct(0.5),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
    }


def max_offered_rate(events_per_s: float) -> float:
    """The offered rate of a contender's "max" latency run."""
    return float(round(min(MAX_RATE_SHARE * events_per_s, LOAD_GENERATOR_CAP)))


def rotated(names: list[str], round_index: int) -> list[str]:
    """The round's running order: each contender leads once every len(names) rounds."""
    shift = round_index % max(1, len(names))
    return names[shift:] + names[:shift]


def round_ratios(rounds: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per contender, the median over rounds of its events/s divided by the same round's passthrough."""
    paired = [r for r in rounds if "passthrough" in r]
    names = sorted({name for r in paired for name in r if name != "passthrough"})
    return {
        f"{name}/passthrough": round(
            statistics.median(r[name] / r["passthrough"] for r in paired if name in r), 3
        )
        for name in names
    }


def ratios(
    contenders: Mapping[str, Mapping[str, Any]], rounds: Sequence[Mapping[str, float]] | None = None
) -> dict[str, float]:
    rate = {name: float(c["events_per_s"]) for name, c in contenders.items()}
    out: dict[str, float] = round_ratios(rounds) if rounds else {}
    for name, value in rate.items():
        if name != "passthrough" and "passthrough" in rate and f"{name}/passthrough" not in out:
            out[f"{name}/passthrough"] = round(value / rate["passthrough"], 3)
    for ours in ("ridestream-alo", "ridestream-eos"):
        for peer in ("faust", "faust-batched", "quix"):
            if ours in rate and peer in rate:
                out[f"{ours}/{peer}"] = round(rate[ours] / rate[peer], 2)
    return out


def cpu_ratio(result: Mapping[str, Any], name: str) -> float | None:
    """CPU seconds per event of `name` ÷ the passthrough's, when both ran."""
    contenders = result["contenders"]
    if name not in contenders or "passthrough" not in contenders:
        return None
    ceiling = float(contenders["passthrough"]["cpu_s_per_1k_events"])
    if ceiling <= 0:  # a drain shorter than the sampler's 0.1 s step measured no CPU: nothing to divide by
        return None
    return float(contenders[name]["cpu_s_per_1k_events"]) / ceiling


# The performance issues' targets (the compiled hot path's, issue 16, where it set one): (label, how to read
# it from the result, bound, "min" or "max").
TARGETS: tuple[tuple[str, Callable[[Mapping[str, Any]], float | None], float, str], ...] = (
    (
        "at-least-once events/s ÷ passthrough",
        lambda r: r["ratios"].get("ridestream-alo/passthrough"),
        0.6,
        "min",
    ),
    (
        "exactly-once events/s ÷ passthrough",
        lambda r: r["ratios"].get("ridestream-eos/passthrough"),
        0.5,
        "min",
    ),
    ("at-least-once ÷ Faust (per event)", lambda r: r["ratios"].get("ridestream-alo/faust"), 5.0, "min"),
    (
        "at-least-once ÷ Faust (stream.take batches)",
        lambda r: r["ratios"].get("ridestream-alo/faust-batched"),
        5.0,
        "min",
    ),
    ("at-least-once ÷ Quix Streams", lambda r: r["ratios"].get("ridestream-alo/quix"), 3.0, "min"),
    (
        "CPU per event, at-least-once ÷ passthrough",
        lambda r: cpu_ratio(r, "ridestream-alo"),
        2.0,
        "max",
    ),
    (
        "at-least-once p99 ms @ 5,000/s",
        lambda r: r["contenders"].get("ridestream-alo", {}).get("p99_ms", {}).get("5000"),
        25.0,
        "max",
    ),
    (
        "exactly-once p99 ms @ 5,000/s",
        lambda r: r["contenders"].get("ridestream-eos", {}).get("p99_ms", {}).get("5000"),
        150.0,
        "max",
    ),
    (
        "peak RSS MB per service (at-least-once, exactly-once)",
        lambda r: max(
            (
                r["contenders"][n]["peak_rss_mb"]
                for n in ("ridestream-alo", "ridestream-eos")
                if n in r["contenders"]
            ),
            default=None,
        ),
        300.0,
        "max",
    ),
    (
        "RSS growth over the soak, %",
        lambda r: r["soak"]["growth"] * 100 if "soak" in r else None,
        10.0,
        "max",
    ),
)


def targets_table(result: Mapping[str, Any]) -> list[str]:
    """The issue's targets against this run: measured, bound, met or not (absent contenders are skipped)."""
    lines = ["| target | measured | bound | met |", "|---|---:|---:|:---:|"]
    for label, read, bound, kind in TARGETS:
        value = read(result)
        if value is None:
            continue
        met = value >= bound if kind == "min" else value <= bound
        lines.append(
            f"| {label} | {value:,.3g} | {'≥' if kind == 'min' else '≤'} {bound:g} | {'✓' if met else '✗'} |"
        )
    return lines


def markdown(result: Mapping[str, Any]) -> str:
    rates = result["rates"]
    at_max = any("latency_at_max" in c for c in result["contenders"].values())
    head = (
        "| contender | events/s | "
        + " | ".join(f"p99 ms @ {int(r):,}/s" for r in rates)
        + (" | p99 ms @ max (offered/s)" if at_max else "")
        + " | peak RSS MB | CPU s / 1k ev |"
    )
    lines = [head, "|---" * (4 + len(rates) + at_max) + "|"]
    for name, c in result["contenders"].items():
        p99 = " | ".join(
            f"{c['p99_ms'][str(int(r))]:.0f}" if str(int(r)) in c["p99_ms"] else "— (over capacity)"
            for r in rates
        )
        if at_max:
            top = c.get("latency_at_max")
            p99 += " | " + (f"{top['p99_ms']:.0f} ({top['offered_per_s']:,.0f})" if top else "—")
        lines.append(
            f"| {name} | {c['events_per_s']:,} | {p99} | {c['peak_rss_mb']} | {c['cpu_s_per_1k_events']} |"
        )
    lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in result["ratios"].items()]
    lines += ["", *targets_table(result)]
    rounds = result.get("rounds") or []
    if rounds:
        names = list(rounds[0])
        shared = [n for n in names if n != "passthrough"] if "passthrough" in names else []
        lines += [
            "",
            (
                "Throughput rounds (events/s; the table above shows each contender's median round and its "
                "highest RSS of any round, the ratios are medians of per-round ratios):"
            ),
            "",
            "| round | " + " | ".join(names + [f"{n}/passthrough" for n in shared]) + " |",
            "|---" * (1 + len(names) + len(shared)) + "|",
        ]
        for index, r in enumerate(rounds, 1):
            cells = [f"{r[n]:,.0f}" for n in names] + [f"{r[n] / r['passthrough']:.2f}" for n in shared]
            lines.append(f"| {index} | " + " | ".join(cells) + " |")
    if "soak" in result:
        lines += ["", soak_line(result["soak"])]
    return "\n".join(lines) + "\n"


def soak_line(soak: Mapping[str, Any]) -> str:
    """The soak's sentence under the table. A soak of a run before the scoring-period window (no
    `scoring_s`) compared the second and last tenths of the whole process's life, start-up included."""
    if "scoring_s" not in soak:
        return (
            f"Memory over {soak['events']:,} events ({soak['contender']}): RSS {soak['rss_mb_second_tenth']} "
            f"MB in the second tenth of the run (start-up included), {soak['rss_mb_last_tenth']} MB in the "
            f"last: {soak['growth'] * 100:+.1f}%."
        )
    return (
        f"Memory over {soak['events']:,} events ({soak['contender']}), while it scored (first output to "
        f"last, {soak['scoring_s']:g} s): RSS {soak['rss_mb_second_tenth']} MB in the second tenth of that "
        f"period, {soak['rss_mb_last_tenth']} MB in the last: {soak['growth'] * 100:+.1f}% "
        f"({soak['rss_mb_at_first_output']} MB at the first output, {soak['rss_mb_at_end']} MB at the end)."
    )


def plot(result: Mapping[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(result["contenders"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(names, [result["contenders"][n]["events_per_s"] for n in names])
    left.set_title("sustained events/s (backlog)")
    left.tick_params(axis="x", rotation=30)
    for name in names:
        contender = result["contenders"][name]
        points = sorted(
            [(int(r), ms) for r, ms in contender["p99_ms"].items()]
            + (
                [(contender["latency_at_max"]["offered_per_s"], contender["latency_at_max"]["p99_ms"])]
                if "latency_at_max" in contender
                else []
            )
        )
        right.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
    if any(result["contenders"][n]["p99_ms"] for n in names):  # a throughput-only run has no curve to scale
        right.set_xscale("log")
        right.set_yscale("log")
    right.set_xlabel("offered events/s")
    right.set_ylabel("p99 event→output ms")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def throughput_rounds(
    contenders: list[Contender],
    count: int,
    bootstrap: str,
    backlog: str,
    events: list[tuple[bytes, bytes]],
    models: Path,
    work: Path,
    results: dict[str, dict[str, Any]],
) -> list[dict[str, float]]:
    """Drain the backlog `count` times per contender, interleaved; fill `results` with each contender's median
    round (events/s, and the RSS and CPU of that run) and return every round's events/s."""
    by_name = {c.name: c for c in contenders}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in by_name}
    rounds: list[dict[str, float]] = []
    for index in range(count if by_name else 0):
        rounds.append({})
        for name in rotated(list(by_name), index):
            run = measure_throughput(by_name[name], bootstrap, backlog, events, models, work)
            runs[name].append(run)
            rounds[-1][name] = run["events_per_s"]
        print(f"round {index + 1}/{count}: {json.dumps(rounds[-1])}", flush=True)
    for name, measured in runs.items():
        # The median run's rate and CPU (an odd --rounds has one), and the highest RSS of any round.
        median_run = sorted(measured, key=lambda run: run["events_per_s"])[(len(measured) - 1) // 2]
        results[name] = {
            **median_run,
            "peak_rss_mb": max(run["peak_rss_mb"] for run in measured),
            "events_per_s_rounds": [run["events_per_s"] for run in measured],
        }
    return rounds


def train_bench_models(models: Path) -> None:
    from consumers.training import models_present, train_models

    if not models_present(models):
        train_models(synthesize_trips(20_000, seed=1).trips, models)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300_000, help="backlog size for the throughput runs")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="interleaved throughput rounds of passthrough and ridestream (median reported; odd)",
    )
    parser.add_argument("--rates", default="1000,5000,20000")
    parser.add_argument(
        "--no-max-latency",
        dest="max_latency",
        action="store_false",
        help="skip the latency run at each contender's own top rate",
    )
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    parser.add_argument("--contenders", help="comma-separated subset (default: all available)")
    parser.add_argument("--bootstrap-servers")
    parser.add_argument("--models", type=Path, help="model dir (default: train into a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("results/bench.json"))
    parser.add_argument(
        "--soak", type=int, default=0, help="also drain this many events, tracking RSS growth"
    )
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md and .png from the .json")
    args = parser.parse_args()
    if args.render_only:
        result = json.loads(args.out.read_text())
        args.out.with_suffix(".md").write_text(markdown(result))
        plot(result, args.out.with_suffix(".png"))
        return
    available = all_contenders()
    chosen = (
        [available[n] for n in args.contenders.split(",")] if args.contenders else list(available.values())
    )
    rates = [float(r) for r in args.rates.split(",") if r]

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ridestream-bench-")))
        bootstrap = args.bootstrap_servers
        if bootstrap is None:
            from stack.broker import LocalKafka

            bootstrap = stack.enter_context(LocalKafka.start(nodes=1)).bootstrap_servers
        models = args.models or work / "models"
        train_bench_models(models)
        events = encoded_events(max(1, args.events // 17), seed=7)[: args.events]
        backlog = f"bench-backlog-{uuid.uuid4().hex[:8]}"
        ensure_topic({"bootstrap.servers": bootstrap}, backlog, 6)
        fill_topic(bootstrap, backlog, events)
        print(f"backlog: {len(events):,} events in {backlog}")
        results: dict[str, dict[str, Any]] = {}
        rounds = throughput_rounds(
            [c for c in chosen if c.name in ROUNDED],
            args.rounds,
            bootstrap,
            backlog,
            events,
            models,
            work,
            results,
        )
        failed: dict[str, str] = {}
        for contender in chosen:
            if contender.name not in results:
                try:
                    results[contender.name] = measure_throughput(
                        contender, bootstrap, backlog, events, models, work
                    )
                except RuntimeError as error:
                    if contender.name in ROUNDED:
                        raise
                    # A peer that scores nothing loses its rows and targets, not the whole run's results.
                    log_tail = (work / f"{contender.name}.log").read_text(errors="replace")[-3000:]
                    print(f"{contender.name}: FAILED, left out: {error}\n{log_tail}", flush=True)
                    failed[contender.name] = str(error)
                    continue
            results[contender.name]["latency"] = {}
            results[contender.name]["p99_ms"] = {}
            for rate in rates:
                if rate > 1.5 * results[contender.name]["events_per_s"]:
                    print(f"{contender.name}: {rate:,.0f}/s is beyond its throughput; latency not measured")
                    continue
                latency = measure_latency(
                    contender, bootstrap, rate, args.latency_seconds, models, work, seed=11
                )
                results[contender.name]["latency"][str(int(rate))] = latency
                results[contender.name]["p99_ms"][str(int(rate))] = latency["p99_ms"]
            if args.max_latency:
                top = max_offered_rate(results[contender.name]["events_per_s"])
                results[contender.name]["latency_at_max"] = measure_latency(
                    contender, bootstrap, top, args.latency_seconds, models, work, seed=11
                )
            print(f"{contender.name}: {json.dumps(results[contender.name])}", flush=True)
        soak = None
        if args.soak:
            soak_events = encoded_events(args.soak // 16, seed=13)[: args.soak]
            soak = measure_soak(available["ridestream-alo"], bootstrap, soak_events, models, work)
            print(f"soak: {json.dumps(soak)}", flush=True)
    result = {
        "benchmark": "consumer fleet: duration scoring of synthetic ride events, one process per contender",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "events": len(events),
        "rates": rates,
        "rounds": rounds,
        "contenders": results,
        "ratios": ratios(results, rounds),
        **({"failed": failed} if failed else {}),
        **({"soak": soak} if soak else {}),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    plot(result, args.out.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
