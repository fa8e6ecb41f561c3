"""TLC trip files → the batch job's rides table (`ridestream batch load`).

The files are read by the replay's own reader (producer/trips.py: the same cleaning, the same ride ids), and
written in chunks through a staging table: COPY into a temporary table, then one INSERT ... ON CONFLICT DO
NOTHING into the rides table. So a bulk load never goes row by row, and loading a file twice adds nothing
the second time (each ride id is its key).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Connection, Engine, MetaData, Table, insert, text

from producer.source import trip_rows
from shared.batch_store import copy_rows, rides_table

CHUNK_ROWS = 50_000
Progress = Callable[[int], None]


@dataclass(frozen=True)
class LoadSummary:
    rides: int
    inserted: int

    @property
    def already_present(self) -> int:
        return self.rides - self.inserted


def load_trips(
    engine: Engine, trips: pd.DataFrame, table: str, progress: Progress | None = None
) -> LoadSummary:
    """Append the trip frame's rides to `table` (created when missing); rides already there are kept."""
    target = rides_table(table)
    target.metadata.create_all(engine)
    columns = [column.name for column in target.columns]
    inserted = 0
    for start in range(0, len(trips), CHUNK_ROWS):
        chunk = trip_rows(trips.iloc[start : start + CHUNK_ROWS])
        rows = [tuple(row[c] for c in columns) for row in chunk]  # type: ignore[literal-required]
        with engine.begin() as connection:
            inserted += _insert_new(connection, target, rows)
        if progress is not None:
            progress(len(rows))
    return LoadSummary(len(trips), inserted)


def _insert_new(connection: Connection, target: Table, rows: list[tuple[object, ...]]) -> int:
    if connection.dialect.name != "postgresql":
        result = connection.execute(
            insert(target).prefix_with("OR IGNORE"), [dict(zip(target.columns.keys(), row)) for row in rows]
        )
        return int(result.rowcount)
    columns = [c._copy() for c in target.columns]
    staging = Table(f"{target.name}_staging", MetaData(), *columns, prefixes=["TEMPORARY"])
    staging.create(connection)
    copy_rows(connection, staging, rows)
    # (through the driver: its rowcount is the rows inserted; SQLAlchemy's INSERT ... SELECT reports -1)
    result = connection.exec_driver_sql(
        f'INSERT INTO "{target.name}" SELECT * FROM "{staging.name}" ON CONFLICT DO NOTHING'
    )
    connection.execute(text(f'DROP TABLE "{staging.name}"'))
    return int(result.rowcount)
