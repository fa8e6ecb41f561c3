"""The batch job against a real local PostgreSQL server (Debian's package, started by the project):
`ridestream db up|status|down`, `batch load` twice, `batch score` of a window, rerun, forced, killed midway,
with another alias, with rows the contract refuses; and its numbers against the stream's scorers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumers.batch.scoring import ScoreSummary, Window, alias_scorers, score_window
from consumers.registry import SERVICE_NAMES, service_spec
from producer.loading import load_trips
from producer.source import started_event, trip_rows
from producer.trips import read_trips
from shared.batch_store import connect, database_url
from shared.errors import ModelArtifactError
from shared.protocols import Scorer
from shared.registry import ModelRegistry
from stack.postgres import LocalPostgres
from tests.integration.topics import REPO
from tests.integration.web import chromium

TLC_MONTH = REPO.parent / "shared" / "data" / "green_tripdata_2021-02.parquet"
ZONES = REPO.parent / "shared" / "data" / "taxi_zone_lookup.csv"
# The windows scored: a week of the month (~14k rides), so each run takes seconds.
WEEK = ("2021-02-08T00:00:00+00:00", "2021-02-15T00:00:00+00:00")
needs_tlc = pytest.mark.skipif(not TLC_MONTH.is_file(), reason=f"needs {TLC_MONTH} (CI has it)")
pytestmark = needs_tlc


@pytest.fixture(scope="module")
def state_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is private to us (0700), and run as root the server is `postgres`.
    directory = Path(tempfile.mkdtemp(prefix="ridestream-pg-"))
    directory.chmod(0o755)
    yield directory
    subprocess.run(["rm", "-rf", str(directory)], check=False)


@pytest.fixture(scope="module")
def postgres(state_dir: Path) -> Iterator[LocalPostgres]:
    server = LocalPostgres.start(state_dir / "server")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rides(postgres: LocalPostgres) -> int:
    """February 2021's green rides in the `trips` table; returns how many the scored week has."""
    load_trips(connect(postgres.url), read_trips(TLC_MONTH).trips, "trips")
    (count,) = query(
        postgres, f"SELECT count(*) FROM trips WHERE pickup_time >= '{WEEK[0]}' AND pickup_time < '{WEEK[1]}'"
    )[0]
    assert count > 10_000
    return int(count)


@pytest.fixture
def two_versions(registry_with_challengers: Path) -> Iterator[Path]:
    """The session's rollout registry (cost v1 the champion, v2 another run) with `challenger` on cost v2
    and on the other models' champions; the aliases it had are put back afterwards."""
    registry = ModelRegistry(registry_with_challengers)
    models = ("duration", "dynamic_duration", "tip", "cost")
    had = {model: registry.alias_version(model, "challenger") for model in models}
    for model in models:
        registry.set_alias(
            model, "challenger", "2" if model == "cost" else str(registry.alias_version(model, "champion"))
        )
    try:
        yield registry_with_challengers
    finally:
        for model, version in had.items():
            if version is None:
                registry.client.delete_registered_model_alias(model, "challenger")
            else:
                registry.set_alias(model, "challenger", version)


def cli(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "stack.cli", *args], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, check=False, timeout=300,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"ridestream {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done


@pytest.fixture(scope="module")
def scorers(trained_models: Path) -> dict[str, Scorer]:
    return champion_scorers(trained_models)


def champion_scorers(models: Path, alias: str = "champion") -> dict[str, Scorer]:
    return alias_scorers(models, alias)


def score_here(
    postgres: LocalPostgres, scorers: dict[str, Scorer], dest: str, force: bool = False
) -> ScoreSummary:
    """`batch score` of the week in this process (the CLI's own function; no interpreter start per run)."""
    engine = connect(postgres.url)
    window = Window(datetime.fromisoformat(WEEK[0]), datetime.fromisoformat(WEEK[1]))
    return score_window(engine, "trips", engine, dest, window, scorers, force=force)


def score(postgres: LocalPostgres, models: Path, *extra: str) -> dict[str, Any]:
    done = cli("batch", "score", "--db", postgres.url, "--models", str(models), "--since", WEEK[0],
               "--until", WEEK[1], "--json", *extra)  # fmt: skip
    return dict(json.loads(done.stdout))


def query(postgres: LocalPostgres, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(postgres.url) as connection:
        return connection.execute(sql).fetchall()


def test_db_up_starts_a_server_that_answers_and_down_stops_it(state_dir: Path) -> None:
    env = {"RIDESTREAM_STATE_DIR": str(state_dir / "cli")}
    url = cli("db", "up", env=env).stdout.strip()
    try:
        assert url.startswith("postgresql://")
        assert query_url(url) == [(1,)]
        assert cli("db", "status", env=env).stdout.startswith("running: postgresql://")
    finally:
        assert "stopped" in cli("db", "down", env=env).stdout
    assert cli("db", "status", env=env, check=False).returncode == 1
    with pytest.raises(psycopg.OperationalError):
        query_url(url)


def query_url(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, connect_timeout=3) as connection:
        return connection.execute("SELECT 1").fetchall()


def test_loading_a_file_twice_adds_its_rides_once(postgres: LocalPostgres, rides: int) -> None:
    # The module's `trips` table was loaded from the month once already.
    again = cli("batch", "load", "--db", postgres.url, "--table", "trips", "--data", str(TLC_MONTH))
    (count,) = query(postgres, "SELECT count(*) FROM trips")[0]
    assert count == len(read_trips(TLC_MONTH).trips)
    assert "0 rides added to trips" in again.stderr and f"{count:,} already there" in again.stderr


def test_a_window_scored_again_is_replaced_never_duplicated(
    postgres: LocalPostgres, rides: int, trained_models: Path, scorers: dict[str, Scorer]
) -> None:
    first = score(postgres, trained_models, "--dest-table", "replaced")  # the CLI, its JSON summary
    assert first["rides"] == rides and first["rows_written"] == 3 * rides and not first["skipped"]
    skipped = score_here(postgres, scorers, "replaced")
    assert skipped.skipped and skipped.run_id == first["run_id"], "same window, same versions"
    forced = score_here(postgres, scorers, "replaced", force=True)
    assert forced.run_id != first["run_id"] and forced.rides == rides
    assert query(postgres, "SELECT count(*), count(DISTINCT (ride_id, model_name)) FROM replaced") == [
        (3 * rides, 3 * rides)
    ]
    assert query(postgres, "SELECT DISTINCT run_id FROM replaced") == [(forced.run_id,)]


def test_the_batch_numbers_are_the_stream_scorers_numbers_for_the_producers_events(
    postgres: LocalPostgres, rides: int, trained_models: Path, scorers: dict[str, Scorer]
) -> None:
    score_here(postgres, scorers, "compared")
    stored = {
        (ride, model): (version, value)
        for ride, model, version, value in query(
            postgres, "SELECT ride_id, model_name, model_version, prediction FROM compared"
        )
    }
    trips = read_trips(TLC_MONTH).trips
    in_week = trips[(trips["pickup_time"] >= WEEK[0]) & (trips["pickup_time"] < WEEK[1])]
    sample = trip_rows(in_week.sample(300, random_state=1))
    events = [started_event(row) for row in sample]  # what the producer publishes for these rides
    checked = 0
    for service in SERVICE_NAMES:
        spec = service_spec(service)
        result = spec.load_scorer(trained_models).score(events, datetime.now(UTC))
        for prediction in result.predictions:
            body = json.loads(prediction.value)
            assert stored[(body["ride_id"], body["model_name"])] == (
                body["model_version"],
                body[spec.value_field],
            )
            checked += 1
    assert checked == 3 * len(events)


COLUMNS = (
    "pickup_time", "dropoff_time", "pickup_zone", "dropoff_zone", "trip_distance_miles", "passenger_count",
    "payment_type", "vendor_id", "rate_code", "trip_type", "fare_amount_usd", "tip_amount_usd",
    "total_amount_usd",
)  # fmt: skip


def copy_a_ride_of_the_week(postgres: LocalPostgres, ride_id: str, **values: str) -> None:
    """Another rider's ride of the scored week under `ride_id`, with `values` (SQL) instead of its own."""
    chosen = ", ".join(values.get(column, column) for column in COLUMNS)
    with psycopg.connect(postgres.url) as connection:
        connection.execute(
            f"INSERT INTO trips SELECT '{ride_id}', {chosen} FROM trips WHERE pickup_time >= '{WEEK[0]}' "
            f"AND pickup_time < '{WEEK[1]}' ORDER BY ride_id LIMIT 1"
        )


def test_rows_the_contract_refuses_are_counted_by_reason_and_kept(
    postgres: LocalPostgres, rides: int, scorers: dict[str, Scorer]
) -> None:
    copy_a_ride_of_the_week(postgres, "bad-zone", pickup_zone="999")
    copy_a_ride_of_the_week(postgres, "no-passengers", passenger_count="NULL")
    try:
        summary = score_here(postgres, scorers, "refusing")
        assert summary.rejects == {"schema_violation": 2}
        assert summary.rides == rides + 2 and summary.rows_written == 3 * rides
        refused = dict(query(postgres, "SELECT ride_id, detail FROM refusing_rejects"))
        assert "pickup_zone" in refused["bad-zone"] and "passenger_count" in refused["no-passengers"]
        assert query(
            postgres, "SELECT count(*) FROM refusing WHERE ride_id IN ('bad-zone', 'no-passengers')"
        ) == [(0,)]
    finally:
        with psycopg.connect(postgres.url) as connection:
            connection.execute("DELETE FROM trips WHERE ride_id IN ('bad-zone', 'no-passengers')")


def test_a_job_killed_midway_leaves_the_previous_window_whole(
    postgres: LocalPostgres, rides: int, trained_models: Path, scorers: dict[str, Scorer]
) -> None:
    before = score_here(postgres, scorers, "killed")
    job = subprocess.Popen(
        [sys.executable, "-m", "stack.cli", "batch", "score", "--db", postgres.url,
         "--models", str(trained_models), "--since", WEEK[0], "--until", WEEK[1], "--dest-table", "killed",
         "--force"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # Mid-run: its COPY into the window's transaction is running.
        while not query(postgres, "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'COPY \"killed\"%'"):
            assert job.poll() is None, "the job finished before it could be killed mid-run"
            assert time.monotonic() < deadline
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait(30)
    assert query(postgres, "SELECT count(*), min(run_id), max(run_id) FROM killed") == [
        (3 * rides, before.run_id, before.run_id)
    ]


def test_another_alias_scores_with_its_versions_and_the_rows_say_which(
    postgres: LocalPostgres, rides: int, two_versions: Path
) -> None:
    champion = score_here(postgres, champion_scorers(two_versions), "aliased")
    other = score(postgres, two_versions, "--dest-table", "aliased", "--model-alias", "challenger")
    assert not other["skipped"], "other versions: scored again"
    assert other["versions"]["cost"] != champion.versions["cost"]
    assert other["versions"]["tip"] == champion.versions["tip"]
    assert query(postgres, "SELECT DISTINCT model_version FROM aliased WHERE model_name = 'cost'") == [
        (other["versions"]["cost"],)
    ]


def test_a_missing_alias_and_an_empty_window_are_refused_naming_them(
    postgres: LocalPostgres, trained_models: Path
) -> None:
    with pytest.raises(ModelArtifactError, match="'nope'"):
        champion_scorers(trained_models, "nope")
    empty = cli("batch", "score", "--db", postgres.url, "--models", str(trained_models),
                "--since", WEEK[1], "--until", WEEK[0], check=False)  # fmt: skip
    assert empty.returncode != 0 and "empty window" in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1, "one plain line, no traceback"


def test_the_report_renders_its_plots_in_a_browser(
    postgres: LocalPostgres, rides: int, scorers: dict[str, Scorer], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    score_here(postgres, scorers, "reported")
    out = tmp_path / "report.html"
    done = cli("batch", "report", "--db", postgres.url, "--dest-table", "reported", "--out", str(out),
               "--zones", str(ZONES))  # fmt: skip
    assert f"{rides:,} rides" in done.stderr
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(out.as_uri())
            titles = page.locator("section h2").all_inner_texts()
            drawn = page.locator("section svg path").count()
            widths = [
                box["width"] for box in (s.bounding_box() for s in page.locator("section svg").all()) if box
            ]
        finally:
            browser.close()
    assert errors == []
    assert titles == [
        "Predicted against actual", "Error by hour of day", "Error by borough",
        "Error per model version over time", "Input drift (population stability index)",
    ]  # fmt: skip
    assert drawn > 100 and all(width > 200 for width in widths), "each plot drawn, at a readable size"


def test_without_a_server_the_job_runs_on_an_embedded_sqlite_file(
    scorers: dict[str, Scorer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RIDESTREAM_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("RIDESTREAM_DB_URL", raising=False)
    url = database_url()
    assert url == f"sqlite:///{tmp_path / 'batch.sqlite'}"
    engine = connect(url)
    trips = read_trips(TLC_MONTH).trips
    week = trips[(trips["pickup_time"] >= WEEK[0]) & (trips["pickup_time"] < WEEK[1])]
    assert load_trips(engine, week, "trips").inserted == len(week)
    window = Window(datetime.fromisoformat(WEEK[0]), datetime.fromisoformat(WEEK[1]))
    # Rides read over one connection while the window is written over another, in the same file.
    first = score_window(engine, "trips", engine, "predictions", window, scorers)
    again = score_window(engine, "trips", engine, "predictions", window, scorers, force=True)
    assert first.rows_written == again.rows_written == 3 * len(week)
    with engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT count(*), count(DISTINCT run_id) FROM predictions").one()
    assert tuple(stored) == (3 * len(week), 1)


@pytest.mark.spark
def test_spark_in_local_mode_writes_the_single_process_jobs_rows(
    postgres: LocalPostgres, rides: int, trained_models: Path, scorers: dict[str, Scorer]
) -> None:
    """`--engine spark` (pyspark's local mode, JDBC both ways, the scorer per partition) against the
    single-process job on the same week, rows the contract refuses included: the same rows, number for
    number, and the same rejects with the same details."""
    copy_a_ride_of_the_week(postgres, "bad-zone", pickup_zone="999")
    copy_a_ride_of_the_week(postgres, "no-passengers", passenger_count="NULL")
    try:
        local = score_here(postgres, scorers, "by_process")
        on_spark = score(postgres, trained_models, "--dest-table", "by_spark", "--engine", "spark",
                         "--spark-master", "local[2]", "--spark-partitions", "3")  # fmt: skip
    finally:
        with psycopg.connect(postgres.url) as connection:
            connection.execute("DELETE FROM trips WHERE ride_id IN ('bad-zone', 'no-passengers')")
    assert on_spark["rides"] == local.rides == rides + 2
    assert on_spark["rows_written"] == local.rows_written == 3 * rides
    assert on_spark["rejects"] == dict(local.rejects) == {"schema_violation": 2}
    assert on_spark["versions"] == local.versions
    columns = "ride_id, model_name, model_version, prediction, pickup_time"
    assert set(query(postgres, f"SELECT {columns} FROM by_spark")) == set(
        query(postgres, f"SELECT {columns} FROM by_process")
    )
    refusals = "ride_id, pickup_time, reason, detail"
    assert set(query(postgres, f"SELECT {refusals} FROM by_spark_rejects")) == set(
        query(postgres, f"SELECT {refusals} FROM by_process_rejects")
    )
    staging = query(postgres, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'by_spark_staging_%'")
    assert staging == [(0,)], "the staging table is dropped once swapped in"
