"""`ridestream batch load | score`: the batch deployment mode (docs/batch.md).

    ridestream batch load  --data FILE... [--db URL] [--table trips]
    ridestream batch score [--db URL] [--table trips] [--dest-db URL] [--dest-table predictions]
                           [--since T --until T | --window last-hour|last-day] [--model-alias champion]
                           [--engine local|spark]

The database is `--db`, else RIDESTREAM_DB_URL, else the server of `ridestream db up`, else an embedded
SQLite file (shared/batch_store.py). A progress bar goes to stderr; the summary line too, and `--json`
prints it as JSON on stdout for schedulers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shared.errors import ConfigError

batch_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="rides database URL (default: RIDESTREAM_DB_URL, `db up`'s server, SQLite)"),
]
TableOption = Annotated[str, typer.Option("--table", help="the rides table")]
DestDbOption = Annotated[
    str | None, typer.Option("--dest-db", help="predictions database URL (default: --db's)")
]
DestTableOption = Annotated[str, typer.Option("--dest-table", help="the predictions table")]


def _bar(console: Console, what: str) -> Progress:
    return Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
        transient=False,
    )  # fmt: skip


@batch_app.command()
def load(
    data: Annotated[list[Path], typer.Option("--data", help="TLC trip file(s) (parquet or CSV)")],
    db: DbOption = None,
    table: TableOption = "trips",
) -> None:
    """Load TLC trip files into the rides table (rides already there are kept, not duplicated)."""
    from producer.loading import load_trips
    from producer.trips import read_many
    from shared.batch_store import connect, database_url, shown

    console = Console(stderr=True)
    url = database_url(db)
    engine = connect(url)
    frame = read_many(list(data))
    console.print(f"read {len(frame.trips):,} rides from {len(data)} file(s); skipped {dict(frame.skipped)}")
    with _bar(console, f"loading into {table}") as bar:
        task = bar.add_task("load", total=len(frame.trips))
        summary = load_trips(engine, frame.trips, table, progress=lambda n: bar.advance(task, n))
    console.print(
        f"{summary.inserted:,} rides added to {table} in {shown(url)}, "
        f"{summary.already_present:,} already there"
    )


def _parse_time(value: str, flag: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{flag} {value!r}: expected an ISO 8601 time, e.g. 2021-02-01T00:00:00+00:00"
        ) from None
    if parsed.tzinfo is None:
        raise ConfigError(f"{flag} {value!r}: needs its UTC offset, e.g. 2021-02-01T00:00:00+00:00")
    return parsed


@batch_app.command()
def score(
    db: DbOption = None,
    table: TableOption = "trips",
    dest_db: DestDbOption = None,
    dest_table: DestTableOption = "predictions",
    since: Annotated[
        str | None, typer.Option("--since", help="window start (ISO 8601 with offset), inclusive")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="window end (ISO 8601 with offset), exclusive")
    ] = None,
    window: Annotated[
        str | None,
        typer.Option("--window", help="last-hour or last-day: the window before now, from the clock"),
    ] = None,
    now: Annotated[
        str | None, typer.Option("--now", help="the clock for --window (default: the real one)")
    ] = None,
    model_alias: Annotated[
        str, typer.Option("--model-alias", help="registry alias of the versions to score with")
    ] = "champion",
    models: Annotated[Path, typer.Option("--models", help="model directory (registry)")] = Path("models"),
    force: Annotated[
        bool, typer.Option("--force", help="score a window already scored by the same versions")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON on stdout")] = False,
    engine: Annotated[
        str, typer.Option("--engine", help="local (this process) or spark (pyspark extra; PostgreSQL only)")
    ] = "local",
    spark_master: Annotated[
        str, typer.Option("--spark-master", help="Spark master URL for --engine spark")
    ] = "local[*]",
    spark_partitions: Annotated[
        int, typer.Option("--spark-partitions", help="JDBC read partitions (by pickup time)")
    ] = 4,
) -> None:
    """Score one window of rides with the registry's alias; rerunning a window replaces its rows."""
    from consumers.batch.scoring import Window, alias_scorers, count_rides, score_window, window_from_clock
    from shared.batch_store import connect, database_url

    if window is not None and (since or until):
        raise ConfigError(
            "--window picks the window from the clock: give it, or --since and --until, not both"
        )
    if window is not None:
        chosen = window_from_clock(window, _parse_time(now, "--now") if now else datetime.now(UTC))
    elif since and until:
        chosen = Window(_parse_time(since, "--since"), _parse_time(until, "--until"))
    else:
        raise ConfigError("which rides? give --since and --until, or --window last-hour|last-day")
    console = Console(stderr=True)
    source_url, dest_url = database_url(db), database_url(dest_db or db)
    source, dest = connect(source_url), connect(dest_url)
    if engine == "spark":
        from stack.spark_engine import score_window_on_spark

        console.print(f"scoring {chosen} on Spark ({spark_master}, {spark_partitions} partitions)")
        summary = score_window_on_spark(
            source_url, source, table, dest_url, dest, dest_table, chosen, models, model_alias,
            force=force, master=spark_master, partitions=spark_partitions,
        )  # fmt: skip
    elif engine == "local":
        scorers = alias_scorers(models, model_alias)
        total = count_rides(source, table, chosen)
        with _bar(console, f"scoring {chosen}") as bar:
            task = bar.add_task("score", total=total)
            summary = score_window(
                source, table, dest, dest_table, chosen, scorers, force=force,
                progress=lambda n: bar.advance(task, n),
            )  # fmt: skip
    else:
        raise ConfigError(f"--engine {engine!r}: expected local or spark")
    console.print(summary.line())
    if as_json:
        print(json.dumps({
            "run_id": summary.run_id, "window": [chosen.start.isoformat(), chosen.end.isoformat()],
            "versions": summary.versions, "rides": summary.rides, "rows_written": summary.rows_written,
            "rejects": dict(summary.rejects), "seconds": round(summary.seconds, 3),
            "rides_per_s": round(summary.rides_per_s, 1), "skipped": summary.skipped,
            "stage_seconds": {stage: round(s, 3) for stage, s in sorted(summary.stages.items())},
        }))  # fmt: skip


DEFAULT_ZONES = Path("../shared/data/taxi_zone_lookup.csv")


@batch_app.command()
def report(
    db: DbOption = None,
    table: TableOption = "trips",
    dest_db: DestDbOption = None,
    dest_table: DestTableOption = "predictions",
    since: Annotated[
        str | None, typer.Option("--since", help="only rides picked up from then (ISO 8601)")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="only rides picked up before then (ISO 8601)")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="the HTML file to write")] = Path("report.html"),
    zones: Annotated[
        Path, typer.Option("--zones", help="TLC taxi_zone_lookup.csv, for error by borough")
    ] = DEFAULT_ZONES,
    reference_data: Annotated[
        list[Path] | None,
        typer.Option(
            "--reference-data",
            help="the models' training file(s), the drift reference (default: the period's first fifth)",
        ),
    ] = None,
) -> None:
    """Render the predictions table as one self-contained HTML dashboard (plots inline, no network)."""
    import pandas as pd
    from sqlalchemy import select

    from consumers.batch.report import render
    from shared.batch_store import connect, database_url, prediction_tables, rides_table

    console = Console(stderr=True)
    rides_db, dest = connect(database_url(db)), connect(database_url(dest_db or db))
    predictions_table = prediction_tables(dest_table)[0]
    rides_of = rides_table(table)
    query, rides_query = select(predictions_table), select(rides_of)
    if since is not None:
        start = _parse_time(since, "--since")
        query = query.where(predictions_table.c.pickup_time >= start)
        rides_query = rides_query.where(rides_of.c.pickup_time >= start)
    if until is not None:
        end = _parse_time(until, "--until")
        query = query.where(predictions_table.c.pickup_time < end)
        rides_query = rides_query.where(rides_of.c.pickup_time < end)
    with dest.connect() as connection:
        predictions = pd.read_sql(query, connection)
    if predictions.empty:
        raise ConfigError(
            f"no predictions in {dest_table} for that period: run `ridestream batch score` first"
        )
    with rides_db.connect() as connection:
        rides = pd.read_sql(rides_query, connection)
    rides = rides[rides["ride_id"].isin(predictions["ride_id"])]
    for column in ("pickup_time", "dropoff_time"):
        rides[column] = pd.to_datetime(rides[column], utc=True)
    boroughs: dict[int, str] = {}
    if zones.is_file():
        lookup = pd.read_csv(zones)
        boroughs = dict(zip(lookup["LocationID"].astype(int), lookup["Borough"].astype(str)))
    else:
        console.print(f"no zone lookup at {zones}: the report has no error by borough (pass --zones)")
    reference = None
    if reference_data:
        from producer.trips import read_many

        reference = read_many(list(reference_data)).trips
    page = render(predictions, rides, reference, boroughs)
    out.write_text(page.html)
    console.print(f"wrote {out}: {page.rides:,} rides, models {', '.join(page.models)}")
