"""`ridestream batch score`: one window of rides from the rides table → one row per ride and model.

    rides table ──(chunks, pickup_time in [start, end))──► ride_started events ──► the streaming scorers
         the contract refuses a row ──► <dest>_rejects (reason, detail)      │ duration, tip, cost
                                                                            ▼
    one transaction: delete the window's old rows, COPY the new ones, record the run ──► commit

A ride becomes the `ride_started` event the producer would publish for it (the same event id), and goes
through the streaming services' own scorers, so for the same ride and versions the batch prediction is the
stream's start-of-ride prediction, number for number. The window is one transaction: a rerun replaces the
window's rows instead of adding to them, and a job killed midway leaves the previous rows, never half a
window. A window already scored by the same versions is skipped (`force` scores it again).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import compress
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import numpy as np
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Connection, Engine, Table, and_, delete, func, insert, select

from consumers.features import StartColumns, start_columns_from_events, start_features
from consumers.registry import SERVICE_NAMES, service_spec
from consumers.scoring import PickupScorer, unscoreable_reason
from schemas.events import RideStarted
from shared.batch_store import (
    BackgroundTransaction,
    Step,
    Timings,
    add_seconds,
    copy_escape,
    copy_rows,
    copy_text,
    prediction_tables,
    rides_table,
)
from shared.errors import ConfigError, ModelArtifactError
from shared.protocols import Scorer
from shared.registry import ModelRegistry, registry_present
from shared.serde import classify, short_detail

CHUNK_ROWS = 20_000
# Threads predicting (the models of a chunk at once): the machine's second core, beside the reading thread.
PREDICT_THREADS = 2
WindowName = Literal["last-hour", "last-day"]
WINDOWS: dict[str, timedelta] = {"last-hour": timedelta(hours=1), "last-day": timedelta(days=1)}
Progress = Callable[[int], None]
# What a ride_started event is built from (no other column of the rides table is read).
RIDE_COLUMNS: tuple[str, ...] = (
    "ride_id", "pickup_time", "pickup_zone", "dropoff_zone", "trip_distance_miles", "passenger_count",
    "payment_type", "vendor_id", "rate_code", "trip_type",
)  # fmt: skip


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ConfigError("a window's bounds need a UTC offset, e.g. 2021-02-01T00:00:00+00:00")
        if not self.start < self.end:
            raise ConfigError(
                f"empty window: --since {self.start.isoformat()} is not before --until {self.end.isoformat()}"
            )

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


def window_from_clock(name: str, now: datetime) -> Window:
    """The last whole hour or day before `now` (UTC): what a scheduler running the job every hour (day)
    needs scored, so the command line never changes."""
    if name not in WINDOWS:
        raise ConfigError(f"--window {name!r}: expected one of {', '.join(WINDOWS)}")
    now = now.astimezone(UTC)
    if name == "last-hour":
        end = now.replace(minute=0, second=0, microsecond=0)
    else:
        end = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return Window(end - WINDOWS[name], end)


@dataclass
class ScoreSummary:
    run_id: str
    window: Window
    versions: dict[str, str]
    rides: int = 0
    rows_written: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    skipped: bool = False
    # seconds per stage: read, validate, features, predict, encode (this thread), write (the writer's thread)
    stages: Timings = field(default_factory=dict)

    @property
    def rides_per_s(self) -> float:
        return self.rides / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        if self.skipped:
            return f"window {self.window} already scored by these versions (run {self.run_id}): skipped"
        refused = ", ".join(f"{n} {reason}" for reason, n in sorted(self.rejects.items())) or "none"
        return (
            f"run {self.run_id}: {self.rides:,} rides in {self.window}, "
            f"{self.rows_written:,} prediction rows, "
            f"rejects: {refused}; {self.seconds:.1f} s, {self.rides_per_s:,.0f} rides/s"
        )


def started_fields(ride: Mapping[str, Any]) -> dict[str, Any]:
    """The ride as the producer publishes it at pickup (producer/source.py: event id `<ride>:0`), before the
    contract has checked it."""
    fields = {name: ride[name] for name in RIDE_COLUMNS}
    fields["event_id"] = f"{ride['ride_id']}:0"
    fields["event_time"] = ride["pickup_time"]
    return fields


def alias_scorers(models: Path, alias: str) -> dict[str, Scorer]:
    """Each service's scorer at the registry's `alias` (plain artifact files have no aliases)."""
    if not registry_present(models):
        if alias != "champion":
            raise ConfigError(f"--model-alias {alias}: {models} has no registry, so no aliases")
        return {name: service_spec(name).load_scorer(models) for name in SERVICE_NAMES}
    registry = ModelRegistry(models)
    scorers: dict[str, Scorer] = {}
    for name in SERVICE_NAMES:
        spec = service_spec(name)
        versions = {}
        for model in spec.models:
            version = registry.alias_version(model, alias)
            if version is None:
                raise ModelArtifactError(
                    f"no version of {model} has the alias {alias!r} in {models} (`ridestream models list`)"
                )
            versions[model] = version
        scorers[name] = spec.load_scorer(models, versions)
    return scorers


def versions_of(scorers: Mapping[str, PickupScorer]) -> dict[str, str]:
    return {service: scorer.pickup_model[1] for service, scorer in sorted(scorers.items())}


def pickup_scorers(scorers: Mapping[str, Scorer]) -> dict[str, PickupScorer]:
    """The services' scorers as the batch job calls them: straight from columns (consumers/scoring.py)."""
    for service, scorer in scorers.items():
        if not isinstance(scorer, PickupScorer):
            raise ConfigError(f"the {service} scorer {type(scorer).__name__} cannot score rides at pickup")
    return dict(cast(Mapping[str, PickupScorer], scorers))


def start_run(
    dest: Engine, dest_table: str, window: Window, versions: dict[str, str], force: bool
) -> ScoreSummary:
    """The run's summary, with `skipped` set when the same versions already scored the window (and not
    `force`); creates the destination tables when missing. Every engine starts a window here."""
    predictions, _rejects, runs = prediction_tables(dest_table)
    predictions.metadata.create_all(dest)
    summary = ScoreSummary(uuid.uuid4().hex[:12], window, versions)
    done = _finished_run(dest, runs, window, versions)
    if done is not None and not force:
        summary.run_id, summary.skipped = done, True
    return summary


def run_record(runs: Table, summary: ScoreSummary, started_at: datetime) -> Any:
    """The `<dest>_runs` row that marks the window scored: written in the window's transaction, last."""
    return insert(runs).values(
        run_id=summary.run_id, window_start=summary.window.start, window_end=summary.window.end,
        versions=json.dumps(summary.versions, sort_keys=True), rides=summary.rides,
        rows_written=summary.rows_written, rejects=sum(summary.rejects.values()),
        started_at=started_at, finished_at=datetime.now(UTC),
    )  # fmt: skip


def window_query(table: str, window: Window) -> Any:
    """The columns a ride_started event is built from, for the rides picked up in the window."""
    rides = rides_table(table)
    in_window = and_(rides.c.pickup_time >= window.start, rides.c.pickup_time < window.end)
    return select(*(rides.c[name] for name in RIDE_COLUMNS)).where(in_window)


def score_window(
    source: Engine,
    table: str,
    dest: Engine,
    dest_table: str,
    window: Window,
    scorers: Mapping[str, Scorer],
    force: bool = False,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> ScoreSummary:
    """Score every ride of `table` whose pickup is in `window` into `dest_table` (module docstring)."""
    models = pickup_scorers(scorers)
    summary = start_run(dest, dest_table, window, versions_of(models), force)
    if summary.skipped:
        return summary
    predictions, rejects, runs = prediction_tables(dest_table)
    started_at, started = datetime.now(UTC), time.monotonic()
    on_postgres = dest.dialect.name == "postgresql"
    with BackgroundTransaction(dest, summary.stages) as writing:
        writing.submit(partial(delete_window, tables=(predictions, rejects), window=window))
        chunks = _chunks(source, window_query(table, window), chunk_rows)
        for count, scored in _score_chunks(chunks, list(models.values()), summary.stages):
            writing.submit(_write(predictions, rejects, scored, summary.run_id, on_postgres, summary.stages))
            summary.rides += count
            summary.rows_written += scored.rows
            summary.rejects.update(reason for _r, _t, reason, _d in scored.refused)
            if progress is not None:
                progress(count)
        summary.seconds = time.monotonic() - started
        writing.submit(partial(_execute, run_record(runs, summary, started_at)))
    summary.seconds = time.monotonic() - started
    return summary


def _execute(statement: Any, connection: Connection) -> None:
    connection.execute(statement)


def delete_window(connection: Connection, tables: Sequence[Table], window: Window) -> None:
    """The window's old rows go, inside the transaction that writes its new ones."""
    for old in tables:
        connection.execute(
            delete(old).where(old.c.pickup_time >= window.start, old.c.pickup_time < window.end)
        )


def _write(
    predictions: Table,
    rejects: Table,
    scored: ScoredRides,
    run_id: str,
    on_postgres: bool,
    stages: Timings,
) -> Step:
    """The writer's step for one chunk; the COPY text is built here, on the caller's thread (`encode`)."""
    payload = _timed(stages, "encode", partial(scored.copy_text, run_id)) if on_postgres else None

    def step(connection: Connection) -> None:
        if payload is not None:
            copy_text(connection, predictions, payload)
        else:
            copy_rows(connection, predictions, scored.prediction_rows(run_id))
        copy_rows(connection, rejects, scored.reject_rows(run_id))

    return step


def count_rides(source: Engine, table: str, window: Window) -> int:
    rides = rides_table(table)
    query = (
        select(func.count())
        .select_from(rides)
        .where(rides.c.pickup_time >= window.start, rides.c.pickup_time < window.end)
    )
    with source.connect() as connection:
        return int(connection.execute(query).scalar_one())


def _finished_run(dest: Engine, runs: Any, window: Window, versions: dict[str, str]) -> str | None:
    query = select(runs.c.run_id).where(
        runs.c.window_start == window.start,
        runs.c.window_end == window.end,
        runs.c.versions == json.dumps(versions, sort_keys=True),
    )
    with dest.connect() as connection:
        found = connection.execute(query.order_by(runs.c.finished_at.desc())).first()
    return None if found is None else str(found[0])


def _chunks(source: Engine, query: Any, size: int) -> Iterator[list[dict[str, Any]]]:
    """The query's rides, `size` at a time, over a server-side cursor on PostgreSQL (bounded memory)."""
    with source.connect() as connection:
        if source.dialect.name != "postgresql":
            result = connection.execution_options(stream_results=True, yield_per=size).execute(query)
            for rows in result.partitions(size):
                yield [dict(row._mapping) for row in rows]
            return
        # psycopg's own named cursor: its plain tuples cost half of SQLAlchemy's rows and their per-value
        # result processing (~4 µs a ride, a million rides' 4 s on the job's busiest thread).
        compiled = query.compile(dialect=source.dialect)
        names = [column.name for column in query.selected_columns]
        driver = connection.connection.driver_connection
        assert driver is not None
        with driver.cursor(name=f"rides_{uuid.uuid4().hex[:8]}") as cursor:
            cursor.itersize = size
            cursor.execute(compiled.string, compiled.params)
            while rows := cursor.fetchmany(size):
                yield [dict(zip(names, row)) for row in rows]


Refusal = tuple[str, datetime, str, str]  # ride id, pickup time, reason, detail
Rides = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class ModelPredictions:
    """One model's finite predictions for a chunk, as columns."""

    model_name: str
    model_version: str
    ride_ids: list[str]
    values: list[float]
    pickup_times: list[datetime]
    pickup_text: list[str]


@dataclass
class ScoredRides:
    """One chunk's output: each model's predictions, and the rides refused (by the contract or a model)."""

    models: list[ModelPredictions]
    refused: list[Refusal]

    @property
    def rows(self) -> int:
        return sum(len(model.ride_ids) for model in self.models)

    def copy_text(self, run_id: str) -> str:
        """The prediction rows in COPY's text format, the predictions table's column order. Ride ids need
        no escaping: the contract allows only letters, digits and `_.:-` in them."""
        tail = f"\t{copy_escape(run_id)}\n"
        return "".join(
            f"{ride}{constant}{value!r}\t{pickup}{tail}"
            for model in self.models
            for constant in [f"\t{copy_escape(model.model_name)}\t{copy_escape(model.model_version)}\t"]
            for ride, value, pickup in zip(model.ride_ids, model.values, model.pickup_text)
        )

    def prediction_rows(self, run_id: str) -> list[tuple[Any, ...]]:
        return [
            (ride, model.model_name, model.model_version, value, pickup, run_id)
            for model in self.models
            for ride, value, pickup in zip(model.ride_ids, model.values, model.pickup_times)
        ]

    def reject_rows(self, run_id: str) -> list[tuple[Any, ...]]:
        return [(ride, pickup, reason, detail, run_id) for ride, pickup, reason, detail in self.refused]


@dataclass(frozen=True)
class PreparedRides:
    """A chunk validated and turned into the models' input: what every model predicts from."""

    events: list[RideStarted]
    refused: list[Refusal]
    columns: StartColumns
    features: np.ndarray


def prepare_rides(rides: Rides, stages: Timings) -> PreparedRides:
    events, refused = _timed(stages, "validate", partial(_events, rides))
    columns = _timed(stages, "features", partial(start_columns_from_events, events))
    return PreparedRides(
        events, refused, columns, _timed(stages, "features", partial(start_features, columns))
    )


def assemble(
    prepared: PreparedRides, scorers: Sequence[PickupScorer], values: Sequence[np.ndarray], stages: Timings
) -> ScoredRides:
    """Each model's finite numbers as columns; a ride a model gave no finite number is refused for it."""
    started = time.perf_counter()
    events, refused = prepared.events, list(prepared.refused)
    ride_ids = [event.ride_id for event in events]
    pickup_times = [event.pickup_time for event in events]
    pickup_text = [t.isoformat() for t in pickup_times]
    models: list[ModelPredictions] = []
    for scorer, numbers in zip(scorers, values):
        model_name, model_version = scorer.pickup_model
        finite = np.isfinite(numbers)
        for position in np.flatnonzero(~finite).tolist():
            reason = unscoreable_reason(float(numbers[position]), model_name)
            refused.append((ride_ids[position], pickup_times[position], "unscoreable", reason[:500]))
        if finite.all():
            kept = (ride_ids, pickup_times, pickup_text)
        else:
            mask = finite.tolist()
            kept = (list(compress(ride_ids, mask)), list(compress(pickup_times, mask)),
                    list(compress(pickup_text, mask)))  # fmt: skip
        models.append(
            ModelPredictions(model_name, model_version, kept[0], numbers[finite].tolist(), *kept[1:])
        )
    add_seconds(stages, "encode", time.perf_counter() - started)
    return ScoredRides(models, refused)


def score_rides(
    rides: Rides, scorers: Mapping[str, PickupScorer], stages: Timings | None = None
) -> ScoredRides:
    """Rides (the rides table's columns) → each model's prediction per ride, and the rides the contract
    refuses or a model cannot score. Pure: the single-process job and each Spark partition call it alike.
    `stages` sums the seconds spent validating, building features, predicting and encoding."""
    stages = {} if stages is None else stages
    prepared = prepare_rides(rides, stages)
    models = list(scorers.values())
    values = [
        _timed(stages, "predict", partial(m.at_pickup, prepared.columns, prepared.features)) for m in models
    ]
    return assemble(prepared, models, values, stages)


def _score_chunks(
    chunks: Iterator[list[dict[str, Any]]], scorers: Sequence[PickupScorer], stages: Timings
) -> Iterator[tuple[int, ScoredRides]]:
    """(rides, scored) per chunk, pipelined over both cores: the models predict one chunk on worker threads
    (the compiled kernel releases the GIL) while this thread reads and validates the next."""
    with ThreadPoolExecutor(PREDICT_THREADS, thread_name_prefix="batch-predict") as pool:
        pending: tuple[int, PreparedRides, list[Future[np.ndarray]]] | None = None
        while True:
            chunk = _timed(stages, "read", partial(next, chunks, None))
            if chunk is not None:
                prepared = prepare_rides(chunk, stages)
                futures = [pool.submit(_predict, m, prepared, stages) for m in scorers]
            if pending is not None:
                rides, earlier, running = pending
                values = _timed(stages, "predict wait", lambda: [f.result() for f in running])
                yield rides, assemble(earlier, scorers, values, stages)
            if chunk is None:
                return
            pending = (len(chunk), prepared, futures)


def _predict(scorer: PickupScorer, prepared: PreparedRides, stages: Timings) -> np.ndarray:
    return _timed(stages, "predict", partial(scorer.at_pickup, prepared.columns, prepared.features))


T = TypeVar("T")


def _timed(stages: Timings, stage: str, work: Callable[[], T]) -> T:
    started = time.perf_counter()
    try:
        return work()
    finally:
        add_seconds(stages, stage, time.perf_counter() - started)


# One validation call per chunk: the contract's own validators still run for every ride, but the loop runs
# in pydantic-core (~8 µs a ride instead of ~19 through the model's constructor).
_STARTED = TypeAdapter(list[RideStarted])


def _events(rides: Rides) -> tuple[list[RideStarted], list[Refusal]]:
    """Each ride as its ride_started event; the contract (pydantic) decides which rides are refused, why."""
    fields = [started_fields(ride) for ride in rides]
    try:
        return _STARTED.validate_python(fields), []
    except ValidationError as error:
        failed = {int(problem["loc"][0]) for problem in error.errors()}
    refused: list[Refusal] = []
    for position in sorted(failed):
        ride = fields[position]
        try:
            RideStarted.model_validate(ride)
        except ValidationError as own:  # each ride's own error: the reason and detail it is refused with
            refused.append((ride["ride_id"], ride["pickup_time"], classify(own), short_detail(own)))
        else:
            failed.discard(position)
    kept = [ride for position, ride in enumerate(fields) if position not in failed]
    return _STARTED.validate_python(kept), refused
