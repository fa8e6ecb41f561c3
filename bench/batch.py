"""The batch job at a million rides: `make bench-batch` (python -m bench.batch).

    python -m bench.batch [--rides 1000000] [--db URL] [--models DIR] [--out results/batch.json]

A rides table of `--rides` rides on PostgreSQL (a server of the run's own, `ridestream db up`'s code, unless
`--db`), made of the TLC months in ../shared/data repeated under new ride ids (synthetic rides without
them), then one `ridestream batch score` of the whole window as a process of its own: its wall time, its
peak RSS (wait4's ru_maxrss), and the seconds of each stage from its `--json` summary.

The baseline, in the same run and on the same server: the database's own ceiling for the same volume. One
process reads the same rides through the same SQLAlchemy query and COPYs three constant rows per ride into a
table shaped like the predictions table, in one transaction; no validation, no model. The job's rides/s is
reported as a ratio of it, because these machines' absolute speed varies from run to run.

Results: results/batch.json and results/batch.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, select

from bench.consumers import train_bench_models
from consumers.batch.scoring import RIDE_COLUMNS
from producer.loading import load_trips
from producer.synthetic import synthesize_trips
from producer.trips import read_trips
from shared.batch_store import connect, copy_text, prediction_tables, rides_table
from stack.postgres import LocalPostgres

DATA = Path("../shared/data")
TARGET_SECONDS = 60.0
TARGET_RSS_MB = 1024.0
SINCE, UNTIL = "2000-01-01T00:00:00+00:00", "2100-01-01T00:00:00+00:00"


def source_trips() -> tuple[pd.DataFrame, str]:
    """The TLC months when present (the README's data), else synthetic rides."""
    months = sorted(DATA.glob("green_tripdata_*.parquet"))
    if months:
        frames = [read_trips(path).trips for path in months]
        return pd.concat(frames, ignore_index=True), f"TLC green months {', '.join(p.stem for p in months)}"
    return synthesize_trips(200_000, seed=3).trips, "synthetic rides (no ../shared/data)"


def repeated(trips: pd.DataFrame, rides: int) -> pd.DataFrame:
    """`rides` rides: the trips over and over, each pass under its own ride ids."""
    passes = -(-rides // len(trips))
    copies = []
    for n in range(passes):
        copy = trips.copy()
        copy["ride_id"] = copy["ride_id"] + f"-r{n}"
        copies.append(copy)
    return pd.concat(copies, ignore_index=True).iloc[:rides]


def passthrough(engine: Engine, table: str) -> dict[str, float]:
    """The same read and the same rows written, with nothing in between (the module docstring)."""
    rides = rides_table(table)
    target, _, _ = prediction_tables("passthrough")
    target.metadata.drop_all(engine)
    target.metadata.create_all(engine)
    query = select(*(rides.c[name] for name in RIDE_COLUMNS))
    started = time.monotonic()
    count = 0
    with engine.connect() as reading, engine.begin() as writing:
        result = reading.execution_options(stream_results=True, yield_per=20_000).execute(query)
        for chunk in result.partitions(20_000):
            payload = "".join(
                f"{row[0]}\t{model}\t1\t1.0\t{row[1].isoformat()}\tpassthrough\n"
                for model in ("duration", "tip", "cost")
                for row in chunk
            )
            copy_text(writing, target, payload)
            count += len(chunk)
    seconds = time.monotonic() - started
    target.metadata.drop_all(engine)
    return {"rides": count, "seconds": round(seconds, 2), "rides_per_s": round(count / seconds)}


def timed_score(url: str, models: Path, table: str) -> dict[str, Any]:
    """One `ridestream batch score` process: its JSON summary, wall seconds and peak RSS."""
    command = [sys.executable, "-m", "stack.cli", "batch", "score", "--db", url, "--table", table,
               "--models", str(models), "--since", SINCE, "--until", UNTIL, "--force", "--json"]  # fmt: skip
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"batch score failed ({process.returncode}):\n{err.read().decode()[-3000:]}")
        summary = json.loads(out.read().decode().strip().splitlines()[-1])
    summary["wall_seconds"] = round(wall, 2)
    summary["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux reports KiB
    return dict(summary)


def stage_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rides = summary["rides"]
    return [
        {"stage": stage, "seconds": seconds, "rides_per_s": round(rides / seconds) if seconds else None}
        for stage, seconds in summary["stage_seconds"].items()
    ]


def report_markdown(result: dict[str, Any]) -> str:
    job, base = result["job"], result["passthrough"]
    lines = [
        f"# Batch scoring: {job['rides']:,} rides, PostgreSQL → predictions table",
        "",
        f"Generated by `make bench-batch` on {result['generated_at']} ({result['machine']}); "
        f"rides: {result['source']}.",
        "",
        "| | target | measured |",
        "|---|---|---|",
        f"| wall time of the `ridestream batch score` process | ≤ {TARGET_SECONDS:.0f} s "
        f"| {job['wall_seconds']} s |",
        f"| peak RSS | ≤ {TARGET_RSS_MB:.0f} MB | {job['peak_rss_mb']} MB |",
        "",
        f"{job['rides']:,} rides → {job['rows_written']:,} prediction rows at {job['rides_per_s']:,.0f} "
        f"rides/s in the job ({job['seconds']} s inside the window's transaction). The database's own "
        f"ceiling for the same read and the same rows written, in the same run: "
        f"{base['rides_per_s']:,} rides/s, so the job runs at "
        f"**{result['ratio_to_passthrough']:.2f}** of it.",
        "",
        "Stages (seconds summed over the run; `predict` is summed over its two threads and `write` runs on "
        "the writer's thread, both alongside the reading thread's read, validate, features and encode; "
        "`predict wait` and `write wait` are the reading thread waiting for them):",
        "",
        "| stage | seconds | rides/s |",
        "|---|---|---|",
    ]
    lines += [f"| {s['stage']} | {s['seconds']} | {s['rides_per_s'] or '-':,} |" for s in result["stages"]]
    lines += [
        "",
        f"Loading the rides table (`batch load`'s code, not timed above): {result['load_seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    engine = connect(url)
    trips, source = source_trips()
    rides = repeated(trips, args.rides)
    target = rides_table(args.table)
    target.metadata.drop_all(engine)
    print(f"loading {len(rides):,} rides into {args.table} ...", file=sys.stderr)
    started = time.monotonic()
    load_trips(engine, rides, args.table)
    load_seconds = round(time.monotonic() - started, 1)
    print(f"loaded in {load_seconds} s; database ceiling ...", file=sys.stderr)
    base = passthrough(engine, args.table)
    print(f"passthrough {base}; scoring ...", file=sys.stderr)
    job = timed_score(url, args.models, args.table)
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores",
        "source": source,
        "load_seconds": load_seconds,
        "passthrough": base,
        "job": job,
        "stages": stage_table(job),
        "ratio_to_passthrough": round(job["rides_per_s"] / base["rides_per_s"], 3),
        "targets": {
            "wall_seconds": TARGET_SECONDS,
            "peak_rss_mb": TARGET_RSS_MB,
            "met": job["wall_seconds"] <= TARGET_SECONDS and job["peak_rss_mb"] <= TARGET_RSS_MB,
        },
    }


def rewrite_markdown(out: Path) -> None:
    """results/batch.md again from results/batch.json (after a change to the report's wording)."""
    out.with_suffix(".md").write_text(report_markdown(json.loads(out.read_text())))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rides", type=int, default=1_000_000)
    parser.add_argument("--db", help="an existing PostgreSQL (default: a server of this run's own)")
    parser.add_argument("--table", default="bench_trips")
    parser.add_argument("--models", type=Path, default=None, help="a registry (default: trained here)")
    parser.add_argument("--out", type=Path, default=Path("results/batch.json"))
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args()
    if args.markdown_only:
        rewrite_markdown(args.out)
        return
    with tempfile.TemporaryDirectory(prefix="ridestream-bench-batch-") as work:
        if args.models is None:
            args.models = Path(work) / "models"
            train_bench_models(args.models)
        if args.db:
            result = run(args, args.db)
        else:
            os.chmod(work, 0o755)  # (the server may run as the postgres user: stack/postgres.py)
            server = LocalPostgres.start(Path(work) / "postgres")
            try:
                result = run(args, server.url)
            finally:
                server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report_markdown(result))
    print(report_markdown(result))


if __name__ == "__main__":
    main()
