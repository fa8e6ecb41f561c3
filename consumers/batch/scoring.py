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

import gc
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import compress
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import msgspec
import numpy as np
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, Table, and_, delete, func, insert, select

from consumers.features import StartColumns, start_features
from consumers.registry import SERVICE_NAMES, service_spec
from consumers.scoring import PickupScorer, unscoreable_reason
from schemas.events import RideStarted
from shared.batch_store import (
    PREDICTION_COPY_ORDER,
    BackgroundTransaction,
    Step,
    Timings,
    add_seconds,
    copy_binary,
    copy_rows,
    prediction_tables,
    rides_table,
)
from shared.columnar import KINDS, ContractDrift
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
    with _frozen_heap(), BackgroundTransaction(dest, summary.stages) as writing:
        writing.submit(partial(delete_window, tables=(predictions, rejects), window=window))
        chunks = ride_chunks(source, window_query(table, window), chunk_rows)
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


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """What the process holds before the window (the models, the modules) out of the collector's sight
    while the job allocates a million rides' tuples: its full collections then skip it (~0.5 s a
    million rides)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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
    payload = _timed(stages, "encode", partial(scored.copy_binary, run_id)) if on_postgres else None

    def step(connection: Connection) -> None:
        if payload is not None:
            copy_binary(connection, predictions, payload, PREDICTION_COPY_ORDER)
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


def ride_chunks(source: Engine, query: Any, size: int) -> Iterator[list[RideRow]]:
    """The query's rides as tuples (`RIDE_COLUMNS`' order), `size` at a time, over a server-side cursor on
    PostgreSQL (bounded memory)."""
    with source.connect() as connection:
        if source.dialect.name != "postgresql":
            result = connection.execution_options(stream_results=True, yield_per=size).execute(query)
            for rows in result.partitions(size):
                yield [tuple(row) for row in rows]
            return
        # psycopg's own named cursor: its plain tuples cost half of SQLAlchemy's rows and their per-value
        # result processing (~4 µs a ride, a million rides' 4 s on the job's busiest thread), tuples rather
        # than dicts, and binary values (the same Python values, a third less to parse: ~0.4 s a million).
        # The session in UTC (this transaction only): times come back in `datetime.UTC` itself, what the
        # contract would convert them to, instead of a ZoneInfo each time would have to be converted from.
        connection.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
        compiled = query.compile(dialect=source.dialect)
        driver = connection.connection.driver_connection
        assert driver is not None
        with driver.cursor(name=f"rides_{uuid.uuid4().hex[:8]}", binary=True) as cursor:
            cursor.itersize = size
            cursor.execute(compiled.string, compiled.params)
            while rows := cursor.fetchmany(size):
                yield rows


Refusal = tuple[str, datetime, str, str]  # ride id, pickup time, reason, detail
Rides = Sequence[Mapping[str, Any]]
RideRow = tuple[Any, ...]  # a ride's RIDE_COLUMNS, in that order


@dataclass(frozen=True)
class CopyKeys:
    """What a ride's prediction rows share, as the columns COPY's binary format sends: the ride id's bytes
    (ASCII: the contract's pattern), their lengths, and the pickup time in PostgreSQL's microseconds since
    2000-01-01 UTC."""

    ride_ids: np.ndarray  # fixed-width bytes, the chunk's longest id wide
    lengths: np.ndarray
    pickup_us: np.ndarray

    @classmethod
    def of(cls, ride_ids: Sequence[str], pickup_times: Sequence[datetime]) -> CopyKeys:
        micros = [(t - _PG_EPOCH) // _MICROSECOND for t in pickup_times]  # exact, integer arithmetic
        return cls(
            np.array(ride_ids, dtype=bytes) if ride_ids else np.zeros(0, dtype="S1"),
            np.fromiter(map(len, ride_ids), dtype=np.int64, count=len(ride_ids)),
            np.array(micros, dtype=np.int64),
        )

    def __getitem__(self, kept: np.ndarray) -> CopyKeys:
        return CopyKeys(self.ride_ids[kept], self.lengths[kept], self.pickup_us[kept])


_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # the signature, no flags, no extension
_COPY_TRAILER = b"\xff\xff"


@dataclass(frozen=True)
class ModelPredictions:
    """One model's finite predictions for a chunk, as columns."""

    model_name: str
    model_version: str
    ride_ids: list[str]
    values: list[float]
    pickup_times: list[datetime]
    numbers: np.ndarray  # `values` as float64
    keys: CopyKeys


@dataclass
class ScoredRides:
    """One chunk's output: each model's predictions, and the rides refused (by the contract or a model)."""

    models: list[ModelPredictions]
    refused: list[Refusal]

    @property
    def rows(self) -> int:
        return sum(len(model.ride_ids) for model in self.models)

    def copy_binary(self, run_id: str) -> bytes:
        """The prediction rows in COPY's binary format, columns in `PREDICTION_COPY_ORDER`: whole columns
        packed by numpy, one record array per model and ride-id length, with no number or time formatted as
        text (the float8 is the prediction's own 8 bytes, so the table holds the stream's number exactly)."""
        parts = [_COPY_HEADER]
        for model in self.models:
            constants = [text.encode() for text in (model.model_name, model.model_version, run_id)]
            keys = model.keys
            for width in np.unique(keys.lengths).tolist():
                rows = np.flatnonzero(keys.lengths == width)
                parts.append(
                    _binary_records(
                        model.numbers[rows],
                        keys.ride_ids[rows].astype(f"S{width}"),
                        keys.pickup_us[rows],
                        constants,
                    )  # fmt: skip
                )
        parts.append(_COPY_TRAILER)
        return b"".join(parts)

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

    ride_ids: list[str]
    pickup_times: list[datetime]  # in UTC, as the contract has them
    refused: list[Refusal]
    columns: StartColumns
    features: np.ndarray


def prepare_rides(rides: Sequence[RideRow], stages: Timings) -> PreparedRides:
    accepted, refused = _timed(stages, "validate", partial(validated_rides, rides))
    ride_ids, pickup_times, columns = _timed(stages, "features", partial(start_columns_of, accepted))
    return PreparedRides(
        ride_ids, pickup_times, refused, columns, _timed(stages, "features", partial(start_features, columns))
    )


def assemble(
    prepared: PreparedRides, scorers: Sequence[PickupScorer], values: Sequence[np.ndarray], stages: Timings
) -> ScoredRides:
    """Each model's finite numbers as columns; a ride a model gave no finite number is refused for it."""
    started = time.perf_counter()
    refused = list(prepared.refused)
    ride_ids, pickup_times = prepared.ride_ids, prepared.pickup_times
    keys = CopyKeys.of(ride_ids, pickup_times)
    models: list[ModelPredictions] = []
    for scorer, numbers in zip(scorers, values):
        model_name, model_version = scorer.pickup_model
        finite = np.isfinite(numbers)
        for position in np.flatnonzero(~finite).tolist():
            reason = unscoreable_reason(float(numbers[position]), model_name)
            refused.append((ride_ids[position], pickup_times[position], "unscoreable", reason[:500]))
        kept_numbers = numbers[finite].astype(np.float64)
        if finite.all():
            kept = (ride_ids, pickup_times, keys)
        else:
            mask = finite.tolist()
            kept = (list(compress(ride_ids, mask)), list(compress(pickup_times, mask)), keys[finite])
        models.append(
            ModelPredictions(
                model_name, model_version, kept[0], kept_numbers.tolist(), kept[1], kept_numbers, kept[2]
            )
        )
    add_seconds(stages, "encode", time.perf_counter() - started)
    return ScoredRides(models, refused)


def _binary_records(
    values: np.ndarray, ride_ids: np.ndarray, pickup_us: np.ndarray, constants: Sequence[bytes]
) -> bytes:
    """COPY binary tuples (prediction, ride_id, pickup_time, then `constants`) for rides whose ids all have
    one width: a packed record array, each field preceded by its big-endian length as the format wants."""
    tail = b"".join(len(value).to_bytes(4, "big") + value for value in constants)
    layout = np.dtype(
        [("fields", ">i2"), ("prediction_len", ">i4"), ("prediction", ">f8"),
         ("ride_id_len", ">i4"), ("ride_id", ride_ids.dtype),
         ("pickup_len", ">i4"), ("pickup_time", ">i8"), ("tail", f"V{len(tail)}")]
    )  # fmt: skip
    records = np.empty(len(values), dtype=layout)
    records["fields"] = len(PREDICTION_COPY_ORDER)
    records["prediction_len"] = 8
    records["prediction"] = values
    records["ride_id_len"] = ride_ids.dtype.itemsize
    records["ride_id"] = ride_ids
    records["pickup_len"] = 8
    records["pickup_time"] = pickup_us
    records["tail"] = np.frombuffer(tail, dtype=layout["tail"])[0]
    return records.tobytes()


def ride_rows(rides: Rides) -> list[RideRow]:
    """Rides as mappings (the rides table's columns by name) → the tuples the job validates."""
    return [tuple(ride[name] for name in RIDE_COLUMNS) for ride in rides]


def score_rides(
    rides: Rides, scorers: Mapping[str, PickupScorer], stages: Timings | None = None
) -> ScoredRides:
    """Rides (the rides table's columns) → each model's prediction per ride, and the rides the contract
    refuses or a model cannot score. Pure: the single-process job and each Spark partition call it alike.
    `stages` sums the seconds spent validating, building features, predicting and encoding."""
    stages = {} if stages is None else stages
    prepared = prepare_rides(ride_rows(rides), stages)
    models = list(scorers.values())
    values = [
        _timed(stages, "predict", partial(m.at_pickup, prepared.columns, prepared.features)) for m in models
    ]
    return assemble(prepared, models, values, stages)


def _score_chunks(
    chunks: Iterator[Sequence[RideRow]], scorers: Sequence[PickupScorer], stages: Timings
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


# The contract, checked as the streaming services check it (shared/columnar.py): msgspec's Struct for
# ride_started, with every bound of the pydantic model, then the kind's own column checks (the id pattern,
# the years, the model validators). That path only *accepts*; a ride it doubts goes to pydantic, which
# decides every refusal and its reason and detail, and accepts what its lax mode accepts.
_STARTED = next(kind for kind in KINDS if kind.model is RideStarted)
# What the producer derives from a ride's columns (`started_fields`), after them in a checked row.
_DERIVED: tuple[str, ...] = ("event_id", "event_time", "schema_version")


def _row_struct(struct: type[msgspec.Struct], order: tuple[str, ...]) -> type[msgspec.Struct]:
    """`struct`'s fields (their types and bounds as they are) as an array-like Struct in `order`: a tuple
    of values converts without a dict per ride."""
    types = {info.name: info.type for info in msgspec.structs.fields(struct)}
    if sorted(types) != sorted(order):
        raise ContractDrift(f"{struct.__name__}: fields {sorted(types)}, a ride's row has {sorted(order)}")
    return msgspec.defstruct(
        f"{struct.__name__}Row",
        [(name, types[name]) for name in order],
        array_like=True,
        forbid_unknown_fields=True,
        gc=False,
    )


_STARTED_ROW = _row_struct(_STARTED.struct, RIDE_COLUMNS + _DERIVED)
_STARTED_ROWS = cast(Any, list)[_STARTED_ROW]  # (list[...] of a Struct made at run time)
_PICKUP = RIDE_COLUMNS.index("pickup_time")


def validated_rides(rides: Sequence[RideRow]) -> tuple[list[RideRow], list[Refusal]]:
    """The rides the contract accepts (in their order, times in UTC) and those it refuses, with pydantic's
    reason and detail."""
    candidates = [(*ride, f"{ride[0]}:0", ride[_PICKUP], 1) for ride in rides]
    try:
        structs: list[Any] = msgspec.convert(candidates, _STARTED_ROWS)
    except msgspec.ValidationError:  # a chunk with a doubtful ride: which ones
        structs = [_struct_or_none(candidate) for candidate in candidates]
    converted = [position for position, struct in enumerate(structs) if struct is not None]
    valid = np.zeros(len(rides), dtype=bool)
    if converted:
        valid[converted] = _STARTED.valid_rows([structs[position] for position in converted])
    if valid.all():
        return _in_utc(list(rides)), []
    accepted: list[RideRow] = []
    refused: list[Refusal] = []
    for position, ok in enumerate(valid.tolist()):
        if ok:
            accepted.append(rides[position])
            continue
        fields = started_fields(dict(zip(RIDE_COLUMNS, rides[position])))
        try:
            event = RideStarted.model_validate(fields)
        except ValidationError as error:  # the reason and detail the ride is refused with
            refused.append((fields["ride_id"], fields["pickup_time"], classify(error), short_detail(error)))
        else:  # (what pydantic's lax mode accepts: its values, as the stream would have them)
            accepted.append(tuple(getattr(event, name) for name in RIDE_COLUMNS))
    return _in_utc(accepted), refused


def _struct_or_none(candidate: RideRow) -> Any:
    try:
        return msgspec.convert(candidate, _STARTED_ROW)
    except msgspec.ValidationError:
        return None


def _in_utc(rides: list[RideRow]) -> list[RideRow]:
    """Pickup times in UTC, as the contract's `_to_utc` gives them (a no-op for times already in UTC)."""
    for position, ride in enumerate(rides):
        pickup = ride[_PICKUP]
        if pickup.tzinfo is not UTC:
            rides[position] = (*ride[:_PICKUP], pickup.astimezone(UTC), *ride[_PICKUP + 1 :])
    return rides


def start_columns_of(rides: Sequence[RideRow]) -> tuple[list[str], list[datetime], StartColumns]:
    """(ride ids, pickup times, the models' columns) of accepted rides: what `start_columns_from_events`
    makes of their events, column by column."""
    columns = {name: list(map(itemgetter(n), rides)) for n, name in enumerate(RIDE_COLUMNS)}
    pickups: list[datetime] = columns["pickup_time"]

    def ints(name: str) -> np.ndarray:
        return np.array(columns[name], dtype=np.int64)

    return (
        columns["ride_id"],
        pickups,
        StartColumns(
            pickup_zone=ints("pickup_zone"),
            dropoff_zone=ints("dropoff_zone"),
            trip_distance_miles=np.array(columns["trip_distance_miles"], dtype=np.float64),
            pickup_epoch_s=np.array([t.timestamp() for t in pickups], dtype=np.float64),
            passenger_count=ints("passenger_count"),
            payment_type=ints("payment_type"),
            vendor_id=ints("vendor_id"),
            rate_code=ints("rate_code"),
            trip_type=ints("trip_type"),
        ),
    )
