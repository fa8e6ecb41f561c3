"""Where a duration service's CPU goes per event, stage by stage, without Kafka.

    python -m bench.scoring_costs [--models DIR] [--events 40000] [--out results/scoring-costs.json]

Runs the service's own functions on synthetic ride events in micro-batches of the service's batch size and
reports µs per input event for each stage (best of `--repeats` interleaved rounds in rotated orders, each
timing after a garbage collection, so background noise inflates nothing):
decode and validate, feature matrices, each model's predict, encoding the predictions, and `score_batch`
as a whole. Decoding is measured both ways, as `plan_batch` does it for the duration service: pydantic
per record (`RIDESTREAM_DECODER=pydantic`, before) and `shared.columnar.decode_batch` (now), and so is
`score_batch`; `decode_batch` itself both ways: into contract models (before) and into the views the
scorers read (now). Predicts and `score_batch` are measured with scikit-learn and with the compiled trees
(consumers/compiled.py) in the same invocation, so their ratio is fair on a noisy machine; encoding is too,
three ways: building each contract model and serialising it, `encode_prediction` one prediction at a time
(both before), and the contract's typed encoder a batch at a time (now). The rest of a service's CPU is the
Kafka client's (compare `cpu_s_per_1k_events` of the passthrough in results/bench.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import numpy as np

from bench.consumers import encoded_events, service_batch_size, train_bench_models
from bench.peers import PeerRecord
from consumers.compiled import PREDICT_THREADS_ENV, PREDICTOR_ENV, predict_threads
from consumers.duration.scorer import PROGRESS_MODEL, START_MODEL, TripDurationScorer, load_scorer
from consumers.features import (
    progress_columns_from_events,
    progress_features,
    start_columns_from_events,
    start_features,
)
from consumers.scoring import EncodedPrediction, encode_prediction, predict_rows, prediction_encoder
from schemas.base import SCHEMA_VERSION
from schemas.events import RideProgress, RideStarted
from schemas.predictions import DurationPrediction
from shared.columnar import DECODER_ENV, KINDS, ColumnRule, decode_batch
from shared.runner import plan_batch, score_batch
from shared.serde import Rejected, decode_event, encode


def best_seconds(work: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        # Each timing starts with no garbage left by the stage before it: without this, the stage that ran
        # last in a round paid for the others' collections (score_batch with one decoder or the other was
        # 0.75x or 1.54x the other depending only on which ran second).
        gc.collect()
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


T = TypeVar("T")


def with_env(
    name: str, value: str, work: Callable[[], T], reread: Callable[[], Any] = lambda: None
) -> Callable[[], T]:
    """`work` with the environment variable `name` set to `value` while it runs; `reread` drops what caches
    the variable (called on both sides)."""

    def run() -> T:
        before = os.environ.get(name)
        os.environ[name] = value
        reread()
        try:
            return work()
        finally:
            if before is None:
                del os.environ[name]
            else:
                os.environ[name] = before
            reread()

    return run


def with_decoder(decoder: str, work: Callable[[], T]) -> Callable[[], T]:
    """`work` with RIDESTREAM_DECODER set to `decoder` while it runs (read per batch by `decode_batch`)."""
    return with_env(DECODER_ENV, decoder, work)


def batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def model_encoded(events: Sequence[RideProgress], produced_at: datetime) -> list[bytes]:
    """The previous way: a validated contract model per prediction, then its serialiser."""
    return [
        encode(
            DurationPrediction(
                ride_id=e.ride_id,
                source_event_id=e.event_id,
                source_event_type=e.event_type,
                source_event_time=e.event_time,
                model_name=PROGRESS_MODEL,
                model_version="v1",
                produced_at=produced_at,
                predicted_duration_minutes=12.5,
                predicted_remaining_minutes=3.5,
                elapsed_seconds=e.elapsed_seconds,
            )
        )
        for e in events
    ]


def batch_encoded(events: Sequence[RideProgress], produced_at: datetime) -> list[bytes]:
    """Now: the contract's typed encoder, a batch at a time (what the scorers call)."""
    encoder = prediction_encoder(DurationPrediction)
    return [p.value for p in encoder.encode(events, PROGRESS_MODEL, "v1", produced_at, value_columns(events))]


def direct_encoded(events: Sequence[RideProgress], produced_at: datetime) -> list[bytes]:
    return [
        encode_prediction(
            DurationPrediction,
            e,
            PROGRESS_MODEL,
            "v1",
            produced_at,
            predicted_duration_minutes=12.5,
            predicted_remaining_minutes=3.5,
            elapsed_seconds=e.elapsed_seconds,
        ).value
        for e in events
    ]


def struct_encoded(events: Sequence[RideProgress], produced_at: datetime) -> list[bytes]:
    """The typed encoder before (afa3bf1), as it was: a msgspec Struct per prediction from the value columns,
    one `encode_lines` per batch."""
    columns = [column.tolist() for column in value_columns(events)]
    wire = _wire_struct()
    head = (PROGRESS_MODEL, "v1", produced_at, prediction_encoder(DurationPrediction).prediction_type)
    rows = [
        wire(SCHEMA_VERSION, e.ride_id, e.event_id, e.event_type, e.event_time, *head, *numbers)
        for e, numbers in zip(events, zip(*columns))
    ]
    lines = _WIRE_ENCODER.encode_lines(rows).split(b"\n")
    return [
        EncodedPrediction(e.ride_id, e.ride_id.encode(), line, DurationPrediction).value
        for e, line in zip(events, lines)
    ]


def value_columns(events: Sequence[RideProgress]) -> list[np.ndarray]:
    columns = [np.full(len(events), 12.5), np.full(len(events), 3.5)]
    return [*columns, np.array([e.elapsed_seconds for e in events], dtype=np.float64)]


_WIRE_ENCODER = msgspec.json.Encoder()


@cache
def _wire_struct() -> type[msgspec.Struct]:
    names = [name for name in DurationPrediction.model_fields if name != "variant"]
    return msgspec.defstruct("DurationWire", [(name, Any) for name in names], gc=False)


def _validators_per_struct(kind: Any) -> ColumnRule:
    """The model validators as the decoder ran them before (afa3bf1): each called on each Struct."""
    validators = [info.func for info in kind.model.__pydantic_decorators__.model_validators.values()]

    def passes(struct: Any) -> bool:
        try:
            for validator in validators:
                validator(struct)
        except (ValueError, AssertionError):
            return False
        return True

    return lambda structs, _columns: np.array([passes(s) for s in structs], dtype=bool)


def with_validators_per_struct(work: Callable[[], T]) -> Callable[[], T]:
    def run() -> T:
        saved = [kind.rules for kind in KINDS]
        for kind in KINDS:
            kind.rules = [_validators_per_struct(kind)]
        try:
            return work()
        finally:
            for kind, rules in zip(KINDS, saved):
                kind.rules = rules

    return run


def with_predict_threads(threads: str, work: Callable[[], T]) -> Callable[[], T]:
    return with_env(PREDICT_THREADS_ENV, threads, work, predict_threads.cache_clear)


def stage_costs(
    scorer: TripDurationScorer,
    baseline: TripDurationScorer,
    values: list[tuple[bytes, bytes]],
    batch_size: int,
    repeats: int,
    rounds: dict[str, list[float]],
) -> dict[str, float]:
    """`scorer` predicts with the compiled trees, `baseline` with scikit-learn: both measured here, so the
    before/after ratio of each predict comes from one run."""
    records = [
        PeerRecord("rides.events", 0, offset, key, value) for offset, (key, value) in enumerate(values)
    ]
    decoded = [decode_event(value) for _key, value in values]
    typed = [e for e in decoded if not isinstance(e, Rejected) and e.event_type != "ride_completed"]
    started = [e for e in typed if isinstance(e, RideStarted)]
    progress = [e for e in typed if isinstance(e, RideProgress)]
    now = datetime.now(UTC)
    per_batch = len(values) / batch_size
    start_batch, progress_batch = (
        max(1, round(len(started) / per_batch)),
        max(1, round(len(progress) / per_batch)),
    )
    start_X = [start_features(start_columns_from_events(b)) for b in batches(started, start_batch)]
    progress_X = [
        progress_features(progress_columns_from_events(b)) for b in batches(progress, progress_batch)
    ]

    # The encoder "before" is re-created here: it has to write what the encoder writes now, byte for byte.
    if struct_encoded(progress[:200], now) != batch_encoded(progress[:200], now):
        raise AssertionError("the previous encoder, as re-created here, writes other bytes")

    # Batch after batch, each dropped before the next, as a service does: holding all 40,000 events' models
    # at once made every garbage collection walk them, which is not a cost the service pays.
    def planned() -> None:
        for b in batches(records, batch_size):
            plan_batch(b, scorer.scored_event_types, 64 * 1024)

    payloads = [value for _key, value in values]

    def decoded_batches(views: bool) -> Callable[[], None]:
        def run() -> None:
            for b in batches(payloads, batch_size):
                decode_batch(b, scorer.scored_event_types, views=views)

        return run

    def scored(with_scorer: TripDurationScorer) -> Callable[[], None]:
        def run() -> None:
            for b in batches(records, batch_size):
                score_batch(b, with_scorer, "duration", 64 * 1024, now)

        return run

    stages: dict[str, Callable[[], Any]] = {
        "decode and validate: pydantic per record (before)": with_decoder("pydantic", planned),
        "decode and validate: decode_batch (now)": with_decoder("columnar", planned),
        "decode_batch into models (before)": decoded_batches(views=False),
        "decode_batch into views, model validators per Struct (before)": with_validators_per_struct(
            decoded_batches(views=True)
        ),
        "decode_batch into views (now)": decoded_batches(views=True),
        "feature matrices": lambda: (
            [start_features(start_columns_from_events(b)) for b in batches(started, start_batch)],
            [progress_features(progress_columns_from_events(b)) for b in batches(progress, progress_batch)],
        ),
        f"predict {START_MODEL}: scikit-learn (before)": lambda: [
            predict_rows(baseline.start_model, X) for X in start_X
        ],
        f"predict {START_MODEL}: compiled (now)": lambda: [
            predict_rows(scorer.start_model, X) for X in start_X
        ],
        f"predict {PROGRESS_MODEL}: scikit-learn (before)": lambda: [
            predict_rows(baseline.progress_model, X) for X in progress_X
        ],
        f"predict {PROGRESS_MODEL}: compiled, one thread (before)": with_predict_threads(
            "1", lambda: [predict_rows(scorer.progress_model, X) for X in progress_X]
        ),
        f"predict {PROGRESS_MODEL}: compiled (now)": lambda: [
            predict_rows(scorer.progress_model, X) for X in progress_X
        ],
        "encode: contract model + serialiser (before)": lambda: [
            model_encoded(b, now) for b in batches(progress, progress_batch)
        ],
        "encode: encode_prediction, one at a time (before)": lambda: [
            direct_encoded(b, now) for b in batches(progress, progress_batch)
        ],
        "encode: a msgspec Struct per prediction, a batch at a time (before)": lambda: [
            struct_encoded(b, now) for b in batches(progress, progress_batch)
        ],
        "encode: typed encoder, shared text once, rows joined in C (now)": lambda: [
            batch_encoded(b, now) for b in batches(progress, progress_batch)
        ],
        "score_batch, scikit-learn (before)": scored(baseline),
        "score_batch, pydantic decode (before)": with_decoder("pydantic", scored(scorer)),
        "score_batch (decode, features, predict, encode)": with_decoder("columnar", scored(scorer)),
    }
    # Rounds interleave the stages (each round runs every stage once), so a noisy spell of the machine
    # slows a before and its after alike instead of one of them; each stage keeps its best round, and
    # `rounds` keeps every round's µs for per-round ratios.
    names = list(stages)
    for round_ in range(repeats):
        # (each round in a rotated order, so no stage always follows the same one)
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            rounds.setdefault(name, []).append(best_seconds(stages[name], 1) / len(values) * 1e6)
    return {name: round(min(us), 3) for name, us in rounds.items()}


def median_round_ratio(rounds: dict[str, list[float]], before: str, now: str) -> float:
    """The median over rounds of before ÷ now, each pair measured back to back in one round."""
    return round(statistics.median(b / n for b, n in zip(rounds[before], rounds[now])), 2)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        (
            f"Per input event, micro-batches of {result['batch_size']:,} "
            f"({result['events']:,} synthetic events, best of {result['repeats']}):"
        ),
        "",
        "| stage | µs per event |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {us} |" for name, us in result["us_per_event"].items()]
    lines += ["", f"Encoding, contract model ÷ typed encoder: {result['encode_before_over_now']}x."]
    lines += [
        "Encoding, encode_prediction ÷ typed encoder (median of the rounds' ratios): "
        f"{result['encode_one_by_one_over_now']}x."
    ]
    lines += [
        f"decode_batch, models ÷ views (median of the rounds' ratios): {result['decode_models_over_views']}x."
    ]
    lines += [
        "Encoding, a Struct per prediction ÷ rows joined in C (median of the rounds' ratios): "
        f"{result['encode_structs_over_now']}x."
    ]
    lines += [
        "decode_batch into views, validators per Struct ÷ column rules (median of the rounds' ratios): "
        f"{result['decode_validators_over_rules']}x."
    ]
    lines += [
        f"predict {PROGRESS_MODEL}, one thread ÷ two (median of the rounds' ratios): "
        f"{result['predict_one_thread_over_two']}x."
    ]
    lines += [
        "Decode and validate, pydantic ÷ decode_batch (median of the rounds' ratios): "
        f"{result['decode_before_over_now']}x."
    ]
    lines += [
        "score_batch, pydantic decode ÷ decode_batch (median of the rounds' ratios): "
        f"{result['score_batch_decode_before_over_now']}x."
    ]
    lines += [f"score_batch, scikit-learn ÷ compiled: {result['score_batch_before_over_now']}x."]
    lines += [
        f"{name}, scikit-learn ÷ compiled: {ratio}x."
        for name, ratio in result["predict_before_over_now"].items()
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", type=Path, help="model dir (default: train on synthetic rides into a temp dir)"
    )
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results/scoring-costs.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ridestream-costs-") as work:
        models = args.models or Path(work) / "models"
        train_bench_models(models)
        scorer = load_scorer(models)
        os.environ[PREDICTOR_ENV] = "scikit-learn"
        baseline = load_scorer(models)
        del os.environ[PREDICTOR_ENV]
        values = encoded_events(args.events // 16 + 1, seed=7)[: args.events]
        rounds: dict[str, list[float]] = {}
        us = stage_costs(scorer, baseline, values, service_batch_size(), args.repeats, rounds)
    result = {
        "batch_size": service_batch_size(),
        "events": len(values),
        "repeats": args.repeats,
        "us_per_event": us,
        "encode_before_over_now": round(
            us["encode: contract model + serialiser (before)"]
            / us["encode: typed encoder, shared text once, rows joined in C (now)"],
            2,
        ),
        "encode_one_by_one_over_now": median_round_ratio(
            rounds,
            "encode: encode_prediction, one at a time (before)",
            "encode: typed encoder, shared text once, rows joined in C (now)",
        ),
        "decode_models_over_views": median_round_ratio(
            rounds, "decode_batch into models (before)", "decode_batch into views (now)"
        ),
        "encode_structs_over_now": median_round_ratio(
            rounds,
            "encode: a msgspec Struct per prediction, a batch at a time (before)",
            "encode: typed encoder, shared text once, rows joined in C (now)",
        ),
        "decode_validators_over_rules": median_round_ratio(
            rounds,
            "decode_batch into views, model validators per Struct (before)",
            "decode_batch into views (now)",
        ),
        "predict_one_thread_over_two": median_round_ratio(
            rounds,
            f"predict {PROGRESS_MODEL}: compiled, one thread (before)",
            f"predict {PROGRESS_MODEL}: compiled (now)",
        ),
        "predict_before_over_now": {
            f"predict {name}": round(
                us[f"predict {name}: scikit-learn (before)"] / us[f"predict {name}: compiled (now)"], 2
            )
            for name in (START_MODEL, PROGRESS_MODEL)
        },
        # Median of the rounds' ratios (each round measures both, back to back): steadier on this
        # machine than a ratio of two best rounds.
        "decode_before_over_now": median_round_ratio(
            rounds,
            "decode and validate: pydantic per record (before)",
            "decode and validate: decode_batch (now)",
        ),
        "score_batch_decode_before_over_now": median_round_ratio(
            rounds, "score_batch, pydantic decode (before)", "score_batch (decode, features, predict, encode)"
        ),
        "score_batch_before_over_now": round(
            us["score_batch, scikit-learn (before)"] / us["score_batch (decode, features, predict, encode)"],
            2,
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
