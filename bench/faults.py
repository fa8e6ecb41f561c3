"""Fault-injection suite, modelled on Kafka's own transactions system test.

    python -m bench.faults [--quick] [--faults hard_kill,...] [--modes at_least_once,exactly_once]
                           [--out results/faults.json]

A producer feeds a known set of rides at a steady rate, faults are injected while duration-service instances
(real processes) score them, and a read_committed verifier drains the output topic. Each run asserts what
Kafka's test asserts: the set of scored inputs equals the set of valid inputs (nothing lost) and, under
exactly-once, no input was scored twice. The result is a row
{"fault", "mode", "inputs", "outputs", "lost", "duplicates", "recovery_s"}; the CI subset
(tests/integration/test_faults.py) runs a few of these scenarios through the same functions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from producer.source import ride_events
from producer.synthetic import synthesize_trips
from shared.kafka import Message, ensure_topic, make_consumer, make_producer, produce_with_backoff
from shared.serde import encode
from stack.broker import LocalKafka
from stack.fleet import ServiceProcess, start_service, stop_service, wait_ready

SERVICE = "duration"
MODES = ("at_least_once", "exactly_once")
# Seconds without any new output, after the load and the faults are over, before the verifier gives up.
SETTLE_S = 90.0
# A killed instance's partitions are reassigned after the group session timeout: 10 s instead of 45 s keeps
# each scenario short without changing what it proves.
SESSION_TIMEOUT_S = "10"


@dataclass(frozen=True)
class Row:
    fault: str
    mode: str
    inputs: int
    outputs: int
    lost: int
    duplicates: int
    recovery_s: float
    restarts: int = 0  # instances that ended themselves and were restarted by the supervisor


@dataclass
class Load:
    """The known input: encoded events, and the ids the duration service must score (start + progress)."""

    events: list[tuple[bytes, bytes]]
    scored_ids: set[str]

    @classmethod
    def synthetic(cls, rides: int, seed: int) -> Load:
        events, scored = [], set()
        for event in ride_events(synthesize_trips(rides, seed=seed).trips, 60.0, seed):
            events.append((event.ride_id.encode(), encode(event)))
            if event.event_type != "ride_completed":
                scored.add(event.event_id)
        return cls(events, scored)


class Verifier(threading.Thread):
    """Reads the output topic as a downstream read_committed client does, from the beginning, all along."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = make_consumer(
            {"bootstrap.servers": bootstrap},
            f"verifier-{uuid.uuid4().hex[:8]}",
            {"isolation.level": "read_committed"},
        )
        self.consumer.subscribe([topic])
        self.counts: Counter[str] = Counter()
        self.arrivals: list[float] = []
        # partition → the model_version of each output, in offset order (which version scored what).
        self.versions: dict[int, list[str]] = {}
        self.values: list[bytes] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                for message in self.consumer.consume(5000, 0.2):
                    if message.error() is None:
                        self.values.append(message.value() or b"{}")
                        output = json.loads(self.values[-1])
                        self.counts[output.get("source_event_id", "?")] += 1
                        self.arrivals.append(time.monotonic())
                        partition = self.versions.setdefault(message.partition() or 0, [])
                        partition.append(output.get("model_version", "?"))
        finally:
            self.consumer.close()

    def first_output_after(self, instant: float) -> float | None:
        return next((t for t in self.arrivals if t > instant), None)

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


def publish_at_rate(
    bootstrap: str, topic: str, events: list[tuple[bytes, bytes]], rate: float, done: threading.Event
) -> threading.Thread:
    """Publish in the background at `rate` events/s; the producer retries through broker faults."""

    def run() -> None:
        producer = make_producer({"bootstrap.servers": bootstrap}, {"message.timeout.ms": 300_000})
        started = time.monotonic()
        for index, (key, value) in enumerate(events):
            wait = index / rate - (time.monotonic() - started)
            if wait > 0:
                producer.poll(wait)
            produce_with_backoff(producer, topic, key, value)
        remaining = producer.flush(300)
        assert remaining == 0, f"{remaining} input events were never delivered"
        done.set()

    thread = threading.Thread(target=run, daemon=True, name="load")
    thread.start()
    return thread


@dataclass
class Fleet:
    """Instances of the service under test; the fault functions start, kill and restart them.

    Like a process supervisor (Kubernetes, systemd `Restart=on-failure`), the fleet restarts an instance
    that exits on its own: a service ends itself non-zero when it cannot go on safely (brokers gone for too
    long, a stuck transactional call), and its restart is part of the recovery being measured.
    """

    bootstrap: str
    models: Path
    logs: Path
    env: dict[str, str]
    instances: dict[int, ServiceProcess] = field(default_factory=dict)
    restarts: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self, index: int) -> ServiceProcess:
        with self.lock:
            instance = start_service(SERVICE, index, self.bootstrap, self.models, self.logs, self.env)
            self.instances[index] = instance
            wait_ready([instance], timeout_s=120)
            return instance

    def stop(self, index: int, sig: int = signal.SIGTERM) -> int:
        with self.lock:
            instance = self.instances.pop(index)
        return stop_service(instance, sig)

    def supervise(self) -> threading.Thread:
        def run() -> None:
            while not self.stopping.wait(0.5):
                with self.lock:
                    exited = [i for i, p in self.instances.items() if p.process.poll() is not None]
                    for index in exited:
                        code = self.instances[index].process.returncode
                        print(
                            f"supervisor: {SERVICE}-{index} exited with {code}; restarting",
                            flush=True,
                        )
                        self.restarts += 1
                        self.start(index)

        thread = threading.Thread(target=run, daemon=True, name="supervisor")
        thread.start()
        return thread

    def stop_all(self) -> None:
        self.stopping.set()
        for index in list(self.instances):
            self.stop(index)


@dataclass
class Scenario:
    """What the fault function gets: the fleet, the cluster (when the scenario owns it) and a clock of
    faults."""

    fleet: Fleet
    cluster: LocalKafka | None
    rng: random.Random
    load_done: threading.Event
    fault_times: list[float] = field(default_factory=list)

    def mark_fault(self) -> None:
        self.fault_times.append(time.monotonic())

    def pause(self, low: float, high: float) -> None:
        """A random point under load at which to strike: the timing of a fault, not a readiness wait."""
        time.sleep(self.rng.uniform(low, high))


def hard_kill(s: Scenario, times: int = 5) -> None:
    for _ in range(times):
        s.pause(1.0, 3.0)
        index = s.rng.choice(sorted(s.fleet.instances))
        s.mark_fault()
        s.fleet.stop(index, signal.SIGKILL)
        s.fleet.start(index)  # same instance number: same transactional.id, so it fences its zombie


def clean_bounce(s: Scenario, times: int = 5) -> None:
    for _ in range(times):
        s.pause(1.0, 3.0)
        index = s.rng.choice(sorted(s.fleet.instances))
        s.mark_fault()
        exit_code = s.fleet.stop(index, signal.SIGTERM)
        assert exit_code == 0, f"SIGTERM should stop cleanly, got exit {exit_code}"
        s.fleet.start(index)


def rebalance_churn(s: Scenario, times: int = 5) -> None:
    next_index = max(s.fleet.instances) + 1
    for step in range(times):
        s.pause(0.5, 2.0)
        s.mark_fault()
        if step % 2 == 0 or len(s.fleet.instances) == 1:
            s.fleet.start(next_index)
            next_index += 1
        else:
            s.fleet.stop(s.rng.choice(sorted(s.fleet.instances)))


def broker_bounce(s: Scenario) -> None:
    assert s.cluster is not None
    s.pause(2.0, 4.0)
    s.mark_fault()
    s.cluster.kill_node(0, signal.SIGTERM)
    s.cluster.start_node(0)


def broker_loss(s: Scenario) -> None:
    assert s.cluster is not None and s.cluster.node_count == 3
    s.pause(2.0, 4.0)
    s.mark_fault()
    s.cluster.kill_node(1, signal.SIGKILL)
    s.pause(8.0, 10.0)
    s.cluster.start_node(1)


FAULTS: dict[str, tuple[Callable[[Scenario], None], int]] = {
    # name: (inject, brokers the scenario needs of its own; 0 = the shared broker is fine)
    "hard_kill": (hard_kill, 0),
    "clean_bounce": (clean_bounce, 0),
    "rebalance_churn": (rebalance_churn, 0),
    "broker_bounce": (broker_bounce, 1),
    "broker_loss": (broker_loss, 3),
}


@contextmanager
def cluster_for(nodes: int, shared_bootstrap: str | None) -> Iterator[tuple[str, LocalKafka | None]]:
    if nodes == 0 and shared_bootstrap:
        yield shared_bootstrap, None
        return
    with LocalKafka.start(nodes=max(1, nodes)) as cluster:
        yield cluster.bootstrap_servers, cluster


def run_fault(
    fault: str,
    mode: str,
    models: Path,
    work: Path,
    rides: int = 1500,
    rate: float = 1500.0,
    instances: int = 2,
    shared_bootstrap: str | None = None,
    seed: int = 1,
    inject: Callable[[Scenario], None] | None = None,
) -> Row:
    """One scenario: load + faults + verification. Returns its row; asserts nothing itself."""
    chosen, nodes = FAULTS[fault]
    load = Load.synthetic(rides, seed)
    with cluster_for(nodes, shared_bootstrap) as (bootstrap, cluster), ExitStack() as stack:
        config = {"bootstrap.servers": bootstrap}
        suffix = uuid.uuid4().hex[:8]
        source, target, dlq = f"faults-in-{suffix}", f"faults-out-{suffix}", f"faults-dlq-{suffix}"
        for topic in (source, target, dlq):
            ensure_topic(config, topic, 6)
        env = {
            "INPUT_TOPIC": source,
            "OUTPUT_TOPIC": target,
            "DLQ_TOPIC": dlq,
            "GROUP_ID": f"faults-{suffix}",
            "PROCESSING_GUARANTEE": mode,
            "BROKER_LOSS_TIMEOUT_S": "120",
            "COMMIT_INTERVAL_S": "0.1",
            "SESSION_TIMEOUT_S": SESSION_TIMEOUT_S,
        }
        fleet = Fleet(bootstrap, models, work / f"logs-{fault}-{mode}", env)
        stack.callback(fleet.stop_all)
        for index in range(1, instances + 1):
            fleet.start(index)
        fleet.supervise()
        verifier = Verifier(bootstrap, target)
        verifier.start()
        stack.callback(verifier.stop)
        done = threading.Event()
        loader = publish_at_rate(bootstrap, source, load.events, rate, done)
        scenario = Scenario(fleet, cluster, random.Random(seed), done)
        (inject or chosen)(scenario)
        loader.join()
        settle(verifier, load.scored_ids)
        counts = Counter(verifier.counts)
    return Row(
        fault=fault,
        mode=mode,
        inputs=len(load.scored_ids),
        outputs=sum(counts.values()),
        lost=len(load.scored_ids - set(counts)),
        duplicates=sum(n - 1 for n in counts.values() if n > 1),
        recovery_s=recovery_seconds(verifier, scenario.fault_times, load.scored_ids),
        restarts=fleet.restarts,
    )


def recovery_seconds(verifier: Verifier, fault_times: list[float], expected: set[str]) -> float:
    """The longest stall of the output stream that a fault caused: per fault, the longest gap between
    outputs from the fault until the stream ended. A fault after the last output needed no recovery when
    nothing was missing, and never recovered (inf) when something was."""
    complete = expected <= verifier.counts.keys()
    arrivals = sorted(verifier.arrivals)
    stalls = []
    for fault in fault_times:
        after = [fault] + [t for t in arrivals if t > fault]
        if len(after) == 1:
            stalls.append(0.0 if complete else float("inf"))
            continue
        stalls.append(max(b - a for a, b in itertools.pairwise(after)))
    return round(max(stalls, default=0.0), 2)


def settle(verifier: Verifier, expected: set[str]) -> None:
    """Until every expected input is scored, or no new output came for SETTLE_S seconds."""
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < SETTLE_S:
        if expected <= verifier.counts.keys():
            return
        if len(verifier.arrivals) != last_count:
            last_count, last_change = len(verifier.arrivals), time.monotonic()
        time.sleep(0.2)  # poll interval of the verifier's progress


def hostile_payloads(count: int, rng: random.Random, valid: bytes) -> list[bytes]:
    """`count` payloads a service must refuse, each of a kind attackers and broken clients really send."""

    def nested(depth: int) -> bytes:
        return b'{"a":' * depth + b"1" + b"}" * depth

    kinds: list[Callable[[], bytes]] = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))),  # random bytes
        lambda: valid[: rng.randint(1, len(valid) - 2)],  # truncated JSON
        lambda: nested(rng.choice([64, 1000, 20_000])),  # deeply nested JSON
        lambda: b"[" * rng.randint(1000, 50_000),  # unbalanced nesting
        lambda: valid.replace(b'"ride_id":"', b'"ride_id":"' + b"x" * rng.randint(200, 2000)),  # long string
        lambda: valid.replace(
            b'"pickup_zone":', b'"pickup_zone":1' + b"0" * rng.randint(20, 400) + b',"_":'
        ),  # huge number
        lambda: valid.replace(b'"trip_distance_miles":', b'"trip_distance_miles":1e999,"_x":'),  # infinity
        lambda: valid.decode().encode("utf-16"),  # wrong encoding
        lambda: valid.replace(b'"pickup_zone":', b'"pickup_zone":"seventy","_z":'),  # wrong type
        lambda: valid.replace(b'"passenger_count":', b'"passenger_count":-3,"_p":'),  # out of range
        lambda: valid.replace(b'Z"', b'"'),  # naive timestamps
        lambda: json.dumps(
            rng.choice([None, 42, "ride", [], [1, 2], {}, True])
        ).encode(),  # valid JSON, not an event
        lambda: valid.replace(
            b'"schema_version":1', b'"schema_version":%d' % rng.randint(2, 99)
        ),  # future version
        lambda: (
            b'{"event_type":"ride_started","pad":"' + b"p" * rng.randint(70_000, 300_000) + b'"}'
        ),  # oversized
        lambda: b"",  # empty value
    ]
    return [kinds[index % len(kinds)]() for index in range(count)]


def run_adversarial(
    bootstrap: str, models: Path, work: Path, hostile: int = 10_000, rides: int = 600, seed: int = 3
) -> tuple[Row, Counter[str], Counter[bytes]]:
    """Hostile payloads interleaved with valid rides, scored under exactly-once by one instance.

    Returns the row, the dead-letter reasons seen, and how often each hostile key reached the DLQ.
    """
    rng = random.Random(seed)
    load = Load.synthetic(rides, seed)
    bad = hostile_payloads(hostile, rng, load.events[0][1])
    mixed: list[tuple[bytes, bytes]] = list(load.events)
    for index, payload in enumerate(bad):
        mixed.insert(rng.randint(0, len(mixed)), (f"hostile-{index}".encode(), payload))
    suffix = uuid.uuid4().hex[:8]
    source, target, dlq = f"adv-in-{suffix}", f"adv-out-{suffix}", f"adv-dlq-{suffix}"
    config = {"bootstrap.servers": bootstrap}
    for topic in (source, target, dlq):
        ensure_topic(config, topic, 6)
    producer = make_producer(config)
    for key, value in mixed:
        produce_with_backoff(producer, source, key, value)
    assert producer.flush(120) == 0
    env = {
        "INPUT_TOPIC": source,
        "OUTPUT_TOPIC": target,
        "DLQ_TOPIC": dlq,
        "GROUP_ID": f"adv-{suffix}",
        "PROCESSING_GUARANTEE": "exactly_once",
    }
    fleet = Fleet(bootstrap, models, work / "logs-adversarial", env)
    verifier, dead = Verifier(bootstrap, target), DeadLetterReader(bootstrap, dlq)
    try:
        instance = fleet.start(1)
        verifier.start()
        dead.start()
        settle(verifier, load.scored_ids)
        dead.settle(hostile)
        crashed = instance.process.poll() is not None
    finally:
        fleet.stop_all()
        verifier.stop()
        dead.stop()
    assert not crashed, f"the service crashed on hostile input:\n{instance.log_tail()}"
    counts = Counter(verifier.counts)
    row = Row(
        "adversarial",
        "exactly_once",
        len(load.scored_ids),
        sum(counts.values()),
        len(load.scored_ids - set(counts)),
        sum(n - 1 for n in counts.values() if n > 1),
        0.0,
    )
    return row, dead.reasons, dead.keys


def header_text(message: Message, name: str, default: str = "?") -> str:
    """A header's value as text (`default` when absent); the client types values as str, bytes or None."""
    value = dict(message.headers() or []).get(name)
    if value is None:
        return default
    return value if isinstance(value, str) else value.decode()


class DeadLetterReader(Verifier):
    """Counts dead letters by key and by reason header."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.keys: Counter[bytes] = Counter()
        self.reasons: Counter[str] = Counter()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                for message in self.consumer.consume(5000, 0.2):
                    if message.error() is None:
                        self.keys[message.key() or b""] += 1
                        self.reasons[header_text(message, "ridestream.reason")] += 1
                        self.arrivals.append(time.monotonic())
        finally:
            self.consumer.close()

    def settle(self, expected: int) -> None:
        last_count, last_change = -1, time.monotonic()
        while sum(self.keys.values()) < expected and time.monotonic() - last_change < SETTLE_S:
            if len(self.arrivals) != last_count:
                last_count, last_change = len(self.arrivals), time.monotonic()
            time.sleep(0.2)  # poll interval of the reader's progress


def run_brokers_gone(models: Path, work: Path, limit_s: float = 5.0) -> tuple[int, str, float]:
    """Every broker stops for good: the service must exit non-zero with a clear message within the limit
    (plus the time to notice), not hang and not keep reporting healthy. Returns (exit code, log, seconds)."""
    with LocalKafka.start(nodes=1) as cluster:
        suffix = uuid.uuid4().hex[:8]
        env = {
            "INPUT_TOPIC": f"gone-in-{suffix}",
            "OUTPUT_TOPIC": f"gone-out-{suffix}",
            "DLQ_TOPIC": f"gone-dlq-{suffix}",
            "GROUP_ID": f"gone-{suffix}",
            "BROKER_LOSS_TIMEOUT_S": str(limit_s),
        }
        fleet = Fleet(cluster.bootstrap_servers, models, work / "logs-gone", env)
        instance = fleet.start(1)
        stopped = time.monotonic()
        cluster.stop()
        try:
            code = instance.process.wait(timeout=limit_s + 90)
        finally:
            fleet.stop_all()
    return code, instance.log_tail(30), time.monotonic() - stopped


def prepare_models(models: Path) -> Path:
    from consumers.training import models_present, train_models

    if not models_present(models):
        train_models(synthesize_trips(20_000, seed=1).trips, models)
    return models


def table(rows: list[Row]) -> str:
    lines = [
        "| fault | mode | inputs | outputs | lost | duplicates | recovery s | self-restarts |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.fault} | {r.mode} | {r.inputs:,} | {r.outputs:,} | {r.lost} | {r.duplicates} | {r.recovery_s} "
        f"| {r.restarts} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rides", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=1500.0)
    parser.add_argument("--models", type=Path)
    parser.add_argument(
        "--extra", default="adversarial,brokers_gone", help="the scenarios beyond load + fault"
    )
    parser.add_argument("--hostile", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("results/faults.json"))
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ridestream-faults-") as tmp, LocalKafka.start(nodes=1) as shared:
        work = Path(tmp)
        models = prepare_models(args.models or work / "models")
        for fault in args.faults.split(","):
            for mode in args.modes.split(","):
                row = run_fault(
                    fault,
                    mode,
                    models,
                    work,
                    args.rides,
                    args.rate,
                    shared_bootstrap=shared.bootstrap_servers,
                )
                rows.append(row)
                print(json.dumps(asdict(row)), flush=True)
        rows += extra_rows(args, shared.bootstrap_servers, models, work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(rows))
    print(table(rows))
    bad = [r for r in rows if r.lost or (r.mode == "exactly_once" and r.duplicates)]
    if bad:
        raise SystemExit(
            f"{len(bad)} scenarios lost or duplicated input: {[r.fault + '/' + r.mode for r in bad]}"
        )


def extra_rows(args: Any, bootstrap: str, models: Path, work: Path) -> list[Row]:
    """Adversarial input (10,000 hostile payloads) and all brokers gone for longer than the limit."""
    rows: list[Row] = []
    if "adversarial" in args.extra:
        row, reasons, keys = run_adversarial(bootstrap, models, work, hostile=args.hostile)
        missing = args.hostile - len(keys)
        twice = sum(1 for n in keys.values() if n > 1)
        print(
            f"adversarial: dead letters by reason {dict(reasons)}; missing {missing}, more than once {twice}"
        )
        rows.append(
            Row(row.fault, row.mode, row.inputs, row.outputs, row.lost + missing, row.duplicates + twice, 0.0)
        )
    if "brokers_gone" in args.extra:
        code, log, seconds = run_brokers_gone(models, work)
        ok = code != 0 and "no Kafka broker reachable" in log
        print(f"brokers_gone: exit {code} after {seconds:.1f}s; clear message: {ok}")
        rows.append(Row("brokers_gone", "at_least_once", 0, 0, 0 if ok else 1, 0, round(seconds, 2)))
    return rows


if __name__ == "__main__":
    main()
