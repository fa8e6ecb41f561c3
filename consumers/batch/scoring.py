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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import Engine, and_, delete, func, insert, select
from sqlalchemy.engine import Row

from consumers.registry import SERVICE_NAMES, service_spec
from schemas.events import RideStarted
from shared.batch_store import copy_rows, prediction_tables, rides_table
from shared.errors import ConfigError
from shared.protocols import Scorer
from shared.serde import classify, short_detail

CHUNK_ROWS = 20_000
WindowName = Literal["last-hour", "last-day"]
WINDOWS: dict[str, timedelta] = {"last-hour": timedelta(hours=1), "last-day": timedelta(days=1)}
Progress = Callable[[int], None]
# The field that carries each service's number (for duration: the start model's whole-trip minutes).
START_FIELDS: dict[str, str] = {service: service_spec(service).value_field for service in SERVICE_NAMES}


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


def started_event(ride: Mapping[str, Any]) -> RideStarted:
    """The ride as the producer publishes it at pickup (producer/source.py: event id `<ride>:0`)."""
    return RideStarted(
        event_id=f"{ride['ride_id']}:0",
        ride_id=ride["ride_id"],
        event_time=ride["pickup_time"],
        pickup_time=ride["pickup_time"],
        pickup_zone=ride["pickup_zone"],
        dropoff_zone=ride["dropoff_zone"],
        trip_distance_miles=ride["trip_distance_miles"],
        passenger_count=ride["passenger_count"],
        payment_type=ride["payment_type"],
        vendor_id=ride["vendor_id"],
        rate_code=ride["rate_code"],
        trip_type=ride["trip_type"],
    )


def versions_of(scorers: Mapping[str, Scorer]) -> dict[str, str]:
    return {service: scorer.model_version for service, scorer in sorted(scorers.items())}


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
    rides = rides_table(table)
    predictions, rejects, runs = prediction_tables(dest_table)
    predictions.metadata.create_all(dest)
    versions = versions_of(scorers)
    summary = ScoreSummary(uuid.uuid4().hex[:12], window, versions)
    done = _finished_run(dest, runs, window, versions)
    if done is not None and not force:
        summary.run_id, summary.skipped = done, True
        return summary
    started_at, started = datetime.now(UTC), time.monotonic()
    in_window = and_(rides.c.pickup_time >= window.start, rides.c.pickup_time < window.end)
    with dest.begin() as writing:
        for old in (predictions, rejects):
            writing.execute(
                delete(old).where(old.c.pickup_time >= window.start, old.c.pickup_time < window.end)
            )
        for chunk in _chunks(
            source, select(rides).where(in_window).order_by(rides.c.pickup_time, rides.c.ride_id), chunk_rows
        ):
            events, refused = _events(chunk)
            rows = _prediction_rows(events, scorers, summary.run_id, datetime.now(UTC), refused)
            summary.rows_written += copy_rows(writing, predictions, rows)
            copy_rows(
                writing, rejects, [(r, t, reason, detail, summary.run_id) for r, t, reason, detail in refused]
            )
            summary.rides += len(chunk)
            summary.rejects.update(reason for _r, _t, reason, _d in refused)
            if progress is not None:
                progress(len(chunk))
        summary.seconds = time.monotonic() - started
        writing.execute(
            insert(runs).values(
                run_id=summary.run_id, window_start=window.start, window_end=window.end,
                versions=json.dumps(versions, sort_keys=True), rides=summary.rides,
                rows_written=summary.rows_written, rejects=sum(summary.rejects.values()),
                started_at=started_at, finished_at=datetime.now(UTC),
            )
        )  # fmt: skip
    return summary


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


def _chunks(source: Engine, query: Any, size: int) -> Iterator[Sequence[Row[Any]]]:
    """The query's rows, `size` at a time, over a server-side cursor on PostgreSQL (bounded memory)."""
    with source.connect() as connection:
        result = connection.execution_options(stream_results=True, yield_per=size).execute(query)
        yield from result.partitions(size)


Refusal = tuple[str, datetime, str, str]  # ride id, pickup time, reason, detail


def _events(chunk: Sequence[Row[Any]]) -> tuple[list[RideStarted], list[Refusal]]:
    events: list[RideStarted] = []
    refused: list[Refusal] = []
    for row in chunk:
        ride = row._mapping
        try:
            events.append(started_event(dict(ride)))
        except ValidationError as error:
            refused.append((ride["ride_id"], ride["pickup_time"], classify(error), short_detail(error)))
    return events, refused


def _prediction_rows(
    events: Sequence[RideStarted],
    scorers: Mapping[str, Scorer],
    run_id: str,
    produced_at: datetime,
    refused: list[tuple[str, datetime, str, str]],
) -> list[tuple[Any, ...]]:
    """One row per ride and model; a ride a model cannot score is refused (`unscoreable`) for that model."""
    rows: list[tuple[Any, ...]] = []
    pickup = {event.event_id: event.pickup_time for event in events}
    for service, field_name in START_FIELDS.items():
        result = scorers[service].score(events, produced_at)
        for position, reason in result.failures:
            event = events[position]
            refused.append((event.ride_id, event.pickup_time, "unscoreable", reason[:500]))
        for prediction in result.predictions:
            body = json.loads(prediction.value)
            rows.append(
                (body["ride_id"], body["model_name"], body["model_version"], body[field_name],
                 pickup[body["source_event_id"]], run_id)
            )  # fmt: skip
    return rows
