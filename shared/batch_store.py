"""The batch job's databases: which one a command uses, the tables, and bulk writes.

Which database (`database_url`): an explicit `--db` URL, else RIDESTREAM_DB_URL, else the PostgreSQL server
`ridestream db up` started, else an embedded SQLite file in the state directory, so the job also runs with no
server at all. Access is SQLAlchemy Core; bulk writes are COPY on PostgreSQL (`copy_rows`), never row by
row, and one executemany on SQLite.

    rides (--table, default trips)         one row per ride, the trip frame's columns; ride_id the key
    predictions (--dest-table)             one row per ride and model: the number, the model version, the run
    <dest-table>_rejects                   rides the contract refuses, with the reason
    <dest-table>_runs                      one row per scored window: its versions, counts and timing
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    create_engine,
    insert,
    make_url,
    text,
)
from sqlalchemy.exc import ArgumentError, OperationalError

from shared.errors import DatabaseError
from shared.local_cluster import recorded_database_url, state_dir

DB_URL_ENV = "RIDESTREAM_DB_URL"
SQLITE_FILE = "batch.sqlite"


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out on every dialect (SQLite has no time zones: stored as naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value}: an offset is required")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def database_url(explicit: str | None = None) -> str:
    """The database a batch command uses (see the module docstring for the order)."""
    url = explicit or os.environ.get(DB_URL_ENV) or recorded_database_url()
    if url:
        return url
    return f"sqlite:///{state_dir() / SQLITE_FILE}"


def sqlalchemy_url(url: str) -> str:
    """libpq's `postgresql://` (what `db up` prints, what psql takes) → SQLAlchemy's psycopg 3 driver."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def shown(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def connect(url: str) -> Engine:
    """An engine that has answered a query, or a DatabaseError naming the database and the fix."""
    try:
        engine = create_engine(sqlalchemy_url(url))
    except (ArgumentError, ImportError) as exc:
        raise DatabaseError(f"bad database URL {shown(url)}: {exc}") from None
    if engine.dialect.name == "sqlite":
        path = engine.url.database
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    elif engine.dialect.name != "postgresql":
        raise DatabaseError(f"{shown(url)}: only PostgreSQL and SQLite are supported")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            if engine.dialect.name == "sqlite":
                # Write-ahead logging (kept in the file): `batch score` reads the rides over one connection
                # while it writes the window over another; in SQLite's default journal mode the writer would
                # wait for the reader's lock forever.
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    except OperationalError as exc:
        raise DatabaseError(
            f"cannot reach the database {shown(url)}: {str(exc.orig).strip().splitlines()[0]} "
            "(start a local one with `ridestream db up`, or pass --db)"
        ) from None
    return engine


def rides_table(name: str, metadata: MetaData | None = None) -> Table:
    meta = metadata or MetaData()
    return Table(
        name,
        meta,
        Column("ride_id", String(128), primary_key=True),
        Column("pickup_time", UtcDateTime, nullable=False),
        Column("dropoff_time", UtcDateTime),
        Column("pickup_zone", Integer),
        Column("dropoff_zone", Integer),
        Column("trip_distance_miles", Float),
        Column("passenger_count", Integer),
        Column("payment_type", Integer),
        Column("vendor_id", Integer),
        Column("rate_code", Integer),
        Column("trip_type", Integer),
        Column("fare_amount_usd", Float),
        Column("tip_amount_usd", Float),
        Column("total_amount_usd", Float),
        Index(f"{name}_pickup_time", "pickup_time"),
    )


def prediction_tables(name: str, metadata: MetaData | None = None) -> tuple[Table, Table, Table]:
    """(predictions, rejects, runs) for destination table `name`."""
    meta = metadata or MetaData()
    predictions = Table(
        name,
        meta,
        Column("ride_id", String(128), primary_key=True),
        Column("model_name", String(64), primary_key=True),
        Column("model_version", String(64), nullable=False),
        Column("prediction", Float, nullable=False),
        Column("pickup_time", UtcDateTime, nullable=False),
        Column("run_id", String(64), nullable=False),
        Index(f"{name}_pickup_time", "pickup_time"),
    )
    rejects = Table(
        f"{name}_rejects",
        meta,
        # (no key: a ride two models cannot score is refused twice)
        Column("ride_id", String(128), nullable=False),
        Column("pickup_time", UtcDateTime, nullable=False),
        Column("reason", String(64), nullable=False),
        Column("detail", String(500), nullable=False),
        Column("run_id", String(64), nullable=False),
        Index(f"{name}_rejects_pickup_time", "pickup_time"),
    )
    runs = Table(
        f"{name}_runs",
        meta,
        Column("run_id", String(64), primary_key=True),
        Column("window_start", UtcDateTime, nullable=False),
        Column("window_end", UtcDateTime, nullable=False),
        Column("versions", String(1000), nullable=False),
        Column("rides", Integer, nullable=False),
        Column("rows_written", Integer, nullable=False),
        Column("rejects", Integer, nullable=False),
        Column("started_at", UtcDateTime, nullable=False),
        Column("finished_at", UtcDateTime, nullable=False),
    )
    return predictions, rejects, runs


def copy_rows(connection: Connection, table: Table, rows: Iterable[Sequence[Any]]) -> int:
    """Append `rows` (values in the table's column order) inside the connection's transaction: COPY on
    PostgreSQL, one executemany on SQLite. Returns how many."""
    columns = [column.name for column in table.columns]
    if connection.dialect.name == "postgresql":
        driver = connection.connection.driver_connection
        assert driver is not None  # (a live connection inside a transaction)
        count = 0
        quoted = ", ".join(f'"{c}"' for c in columns)
        with driver.cursor() as cursor, cursor.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row([_copy_value(value) for value in row])
                count += 1
        return count
    batch = [dict(zip(columns, row)) for row in rows]
    if batch:
        connection.execute(insert(table), batch)
    return len(batch)


def _copy_value(value: Any) -> Any:
    # COPY's text format sends datetimes as psycopg renders them: aware ones keep their offset.
    if isinstance(value, datetime) and value.tzinfo is None:
        raise ValueError(f"naive datetime {value}: an offset is required")
    return value


# The predictions table's columns in the order the batch job's binary COPY has them (`copy_binary`).
PREDICTION_COPY_ORDER: tuple[str, ...] = (
    "prediction", "ride_id", "pickup_time", "model_name", "model_version", "run_id",
)  # fmt: skip


def copy_binary(connection: Connection, table: Table, payload: bytes, columns: Sequence[str]) -> None:
    """Append rows already in COPY's binary format (the signature, the tuples, the trailer; values in the
    order of `columns`) inside the connection's transaction: PostgreSQL only."""
    driver = connection.connection.driver_connection
    assert driver is not None  # (a live connection inside a transaction)
    if sorted(columns) != sorted(column.name for column in table.columns):
        raise ValueError(f"COPY into {table.name}: columns {list(columns)} are not the table's")
    quoted = ", ".join(f'"{name}"' for name in columns)
    with (
        driver.cursor() as cursor,
        cursor.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN (FORMAT BINARY)') as copy,
    ):
        copy.write(payload)


Step = Callable[[Connection], None]
Timings = dict[str, float]  # seconds per stage


_TIMINGS_LOCK = threading.Lock()  # (the batch job's threads add to one dict)


def add_seconds(timings: Timings, stage: str, seconds: float) -> None:
    with _TIMINGS_LOCK:
        timings[stage] = timings.get(stage, 0.0) + seconds


_END = object()


class BackgroundTransaction:
    """One transaction on `engine`, run by a thread of its own: steps execute in the order submitted, and the
    caller computes the next chunk while the database takes this one (PostgreSQL ingests in its own process,
    on the other core). At most `depth` steps wait, so memory stays bounded. The transaction commits when
    the `with` block ends normally; on an exception in the block, or in a step, it rolls back, and a step's
    exception is raised in the caller. `timings["write"]` sums the steps' seconds, `timings["write wait"]`
    the caller's seconds waiting for room."""

    def __init__(self, engine: Engine, timings: Timings, depth: int = 2) -> None:
        self._engine = engine
        self._timings = timings
        self._steps: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._commit = False
        self._thread = threading.Thread(target=self._run, name="batch-writer", daemon=True)

    def __enter__(self) -> BackgroundTransaction:
        self._thread.start()
        return self

    def submit(self, step: Step) -> None:
        self._raise_failure()
        started = time.perf_counter()
        self._steps.put(step)
        add_seconds(self._timings, "write wait", time.perf_counter() - started)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._commit = error is None
        self._steps.put(_END)
        self._thread.join()
        if error is None:
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            with self._engine.begin() as connection:
                while (step := self._steps.get()) is not _END:
                    if self._error is None:  # after a failure, only drained, so no submitter blocks
                        self._execute(connection, step)  # type: ignore[arg-type]
                if self._error is not None or not self._commit:
                    raise _RolledBack
        except _RolledBack:
            pass
        except BaseException as error:  # the commit itself failed  # noqa: BLE001
            self._error = self._error or error

    def _execute(self, connection: Connection, step: Step) -> None:
        started = time.perf_counter()
        try:
            step(connection)
        except BaseException as error:  # noqa: BLE001  (re-raised in the caller's thread)
            self._error = error
        finally:
            add_seconds(self._timings, "write", time.perf_counter() - started)


class _RolledBack(Exception):
    """Leaves `engine.begin()` by an exception, which rolls the transaction back."""
