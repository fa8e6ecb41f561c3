"""`ridestream batch score --engine spark`: the batch job's scoring on Apache Spark, for rides tables that
outgrow one machine (docs/batch.md). An optional extra: `pip install 'ridestream[spark]'` (pyspark, on the
system's JDK 17).

    rides table ──JDBC, split on pickup_time──► partitions ──mapInPandas: score_rides──► <dest>_staging_<run>
                                                 (each Python worker loads the alias's      (JDBC appends,
                                                  scorers once)                              one per task)
    then one transaction on the driver: delete the window's old rows, INSERT ... SELECT the staged rows into
    the predictions and rejects tables, record the run, drop the staging table

Each partition runs the single-process job's own pure step (`consumers.batch.scoring.score_rides`: the
contract, then the streaming scorers' numbers at pickup), so for the same rides and versions both engines
write the same rows. Spark's tasks commit on their own, so they write to a staging table; the window still
changes in one transaction, as with the single-process job: a run killed midway leaves the old rows.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, cast

import pandas as pd
from sqlalchemy import Column, Engine, Float, MetaData, String, Table, text
from sqlalchemy.engine import make_url

from consumers.batch.scoring import (
    RIDE_COLUMNS,
    ScoredRides,
    ScoreSummary,
    Window,
    alias_scorers,
    delete_window,
    pickup_scorers,
    run_record,
    score_rides,
    start_run,
    versions_of,
)
from shared.batch_store import UtcDateTime, prediction_tables, rides_table
from shared.errors import ConfigError

# The PostgreSQL JDBC driver, fetched from Maven Central by Spark's own resolver on first use (~/.ivy2).
POSTGRES_JDBC = "org.postgresql:postgresql:42.7.4"
DEFAULT_MASTER = "local[*]"
# One row type for both outputs of a partition (a prediction, or a refused ride), split apart in SQL.
STAGED_SCHEMA = (
    "kind string, ride_id string, model_name string, model_version string, prediction double, "
    "pickup_time timestamp, reason string, detail string, run_id string"
)
Partition = Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]


def jdbc_target(url: str) -> tuple[str, dict[str, str]]:
    """A libpq/SQLAlchemy PostgreSQL URL as Spark's JDBC URL and connection properties."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgres"):
        raise ConfigError(
            f"--engine spark reads and writes PostgreSQL over JDBC; got a {parsed.drivername} URL"
        )
    # reWriteBatchedInserts: the driver sends each JDBC batch as multi-row INSERTs, not one per row.
    jdbc = f"jdbc:postgresql://{parsed.host or '127.0.0.1'}:{parsed.port or 5432}/{parsed.database}"
    properties = {
        "driver": "org.postgresql.Driver",
        "user": parsed.username or "",
        "reWriteBatchedInserts": "true",
    }
    if parsed.password:
        properties["password"] = parsed.password
    return jdbc, properties


def spark_session(master: str) -> Any:
    """A session whose clocks are UTC end to end: JVM, SQL session, and so the JDBC driver's timestamps."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(
            "--engine spark needs pyspark: pip install 'ridestream[spark]' (and a JDK 17 on PATH)"
        ) from None
    utc = "-Duser.timezone=UTC"
    # The workers run this interpreter (this environment's packages); in local mode the JVM starts them
    # from the environment variable, not the session setting.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master)
        .appName("ridestream-batch")
        .config("spark.jars.packages", POSTGRES_JDBC)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", utc)
        .config("spark.executor.extraJavaOptions", utc)
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )


@cache
def _worker_scorers(models: str, alias: str) -> tuple[Any, ...]:
    # Once per Python worker process (Spark reuses its workers across tasks): loading is ~1 s of models.
    return tuple(pickup_scorers(alias_scorers(Path(models), alias)).items())


def ride_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A partition's rides as the single-process job reads them: Python values, NULL as None, pickup times
    aware UTC datetimes (the session's time zone is UTC)."""
    columns: dict[str, list[Any]] = {}
    for name in RIDE_COLUMNS:
        if name == "pickup_time":
            times = pd.to_datetime(frame[name], utc=True)
            columns[name] = [None if pd.isna(t) else t.to_pydatetime() for t in times]
        else:
            columns[name] = [_python_value(value) for value in frame[name].tolist()]
    return [dict(zip(RIDE_COLUMNS, values)) for values in zip(*(columns[name] for name in RIDE_COLUMNS))]


def _python_value(value: Any) -> Any:
    # NULL arrives as pd.NA (nullable integers) or NaN (floats); numbers as numpy scalars in some dtypes.
    if value is None or pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def staged_frame(scored: ScoredRides, run_id: str) -> pd.DataFrame:
    """One partition's predictions and refusals in the staging table's shape."""
    rows: list[tuple[Any, ...]] = [
        ("prediction", ride, model, version, value, pickup, None, None, run_id)
        for ride, model, version, value, pickup, _run in scored.prediction_rows(run_id)
    ]
    rows += [
        ("reject", ride, None, None, None, pickup, reason, detail, run_id)
        for ride, pickup, reason, detail in scored.refused
    ]
    names = [field.split()[0] for field in STAGED_SCHEMA.split(", ")]
    frame = pd.DataFrame(rows, columns=names)
    frame["pickup_time"] = pd.to_datetime(frame["pickup_time"], utc=True)
    frame["prediction"] = frame["prediction"].astype("float64")
    return frame


def partition_scorer(models: Path, alias: str, run_id: str) -> Partition:
    """What each Spark task runs over its rides (shipped to the workers by cloudpickle)."""
    where = str(models.resolve())

    def score_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        scorers = dict(_worker_scorers(where, alias))
        for frame in frames:
            yield staged_frame(score_rides(ride_records(frame), scorers), run_id)

    return score_partition


def staging_table(dest_table: str, run_id: str) -> Table:
    return Table(
        f"{dest_table}_staging_{run_id}",
        MetaData(),
        Column("kind", String(16), nullable=False),
        Column("ride_id", String(128)),
        Column("model_name", String(64)),
        Column("model_version", String(64)),
        Column("prediction", Float),
        Column("pickup_time", UtcDateTime),
        Column("reason", String(64)),
        Column("detail", String(500)),
        Column("run_id", String(64), nullable=False),
        prefixes=["UNLOGGED"],  # scratch: rebuilt by a rerun, so not worth the write-ahead log
    )


def score_window_on_spark(
    source_url: str,
    source: Engine,
    table: str,
    dest_url: str,
    dest: Engine,
    dest_table: str,
    window: Window,
    models: Path,
    alias: str,
    force: bool = False,
    master: str = DEFAULT_MASTER,
    partitions: int = 4,
) -> ScoreSummary:
    """`score_window`'s contract (consumers/batch/scoring.py) with Spark doing the scoring."""
    source_jdbc, source_properties = jdbc_target(source_url)
    dest_jdbc, dest_properties = jdbc_target(dest_url)
    if partitions < 1:
        raise ConfigError(f"--spark-partitions {partitions}: at least 1")
    versions = versions_of(pickup_scorers(alias_scorers(models, alias)))
    summary = start_run(dest, dest_table, window, versions, force)
    if summary.skipped:
        return summary
    started_at, started = datetime.now(UTC), time.monotonic()
    staging = staging_table(dest_table, summary.run_id)
    staging.create(dest)
    try:
        spark = spark_session(master)
        rides_sql = window_sql(table, window)
        # (the reader's options, not `read.jdbc`, which takes integer bounds only)
        rides = (
            spark.read.format("jdbc")
            .options(**source_properties)
            .option("url", source_jdbc)
            .option("dbtable", rides_sql)
            .option("partitionColumn", "pickup_time")
            .option("lowerBound", _spark_time(window.start))
            .option("upperBound", _spark_time(window.end))
            .option("numPartitions", partitions)
            .load()
        )
        staged = rides.mapInPandas(partition_scorer(models, alias, summary.run_id), STAGED_SCHEMA)
        staged.write.jdbc(
            dest_jdbc, staging.name, mode="append", properties={**dest_properties, "batchsize": "10000"}
        )
        summary.stages["spark"] = time.monotonic() - started
        swapped = time.monotonic()
        _swap_in(dest, dest_table, staging, summary, started_at)
        summary.stages["swap in"] = time.monotonic() - swapped
    finally:
        staging.drop(dest, checkfirst=True)
    summary.seconds = time.monotonic() - started
    return summary


def window_sql(table: str, window: Window) -> str:
    """The window's rides as the subquery Spark's JDBC reader partitions (bounds are the window's own)."""
    rides = rides_table(table)
    columns = ", ".join(f'"{rides.c[name].name}"' for name in RIDE_COLUMNS)
    start, end = window.start.isoformat(), window.end.isoformat()
    return (
        f"(SELECT {columns} FROM \"{rides.name}\" WHERE pickup_time >= TIMESTAMPTZ '{start}' "
        f"AND pickup_time < TIMESTAMPTZ '{end}') AS rides"
    )


def _spark_time(moment: datetime) -> str:
    # Spark parses JDBC partition bounds as timestamps in the session's time zone (UTC).
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _swap_in(
    dest: Engine, dest_table: str, staging: Table, summary: ScoreSummary, started_at: datetime
) -> None:
    """The window's one transaction: old rows out, staged rows in, the run recorded."""
    predictions, rejects, runs = prediction_tables(dest_table)
    staged = f'"{staging.name}"'
    with dest.begin() as connection:
        delete_window(connection, (predictions, rejects), summary.window)
        summary.rows_written = connection.execute(
            text(
                f'INSERT INTO "{predictions.name}" SELECT ride_id, model_name, model_version, prediction, '
                f"pickup_time, run_id FROM {staged} WHERE kind = 'prediction'"
            )
        ).rowcount
        connection.execute(
            text(
                f'INSERT INTO "{rejects.name}" SELECT ride_id, pickup_time, reason, detail, run_id '
                f"FROM {staged} WHERE kind = 'reject'"
            )
        )
        reasons = text(f"SELECT reason, count(*) FROM {staged} WHERE kind = 'reject' GROUP BY reason")
        for reason, count in connection.execute(reasons):
            summary.rejects[str(reason)] = cast(int, count)
        # Every ride has a row: its predictions, or its refusals.
        rides = text(f"SELECT count(DISTINCT ride_id) FROM {staged}")
        summary.rides = cast(int, connection.execute(rides).scalar_one())
        connection.execute(run_record(runs, summary, started_at))
