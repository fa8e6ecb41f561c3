"""`ridestream db up | status | down`: the local PostgreSQL server of the batch job (stack/postgres.py).

`up` prints only the database URL on stdout, so scripts can do `export RIDESTREAM_DB_URL=$(ridestream db up)`;
everything meant for a person goes to stderr.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from shared.local_cluster import recorded_database_url
from stack.postgres import LocalPostgres, clear_state, default_data_dir, load_state, write_state

db_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@db_app.command()
def up(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="the cluster's data (default: <state dir>/postgres)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the server to answer")] = 60.0,
) -> None:
    """Start a local PostgreSQL server in the background and print its URL."""
    running = recorded_database_url()
    if running is not None:
        _note(f"already running: {running}")
        print(running)
        return
    started = time.monotonic()
    server = LocalPostgres.start(data_dir or default_data_dir(), timeout_s=timeout, progress=_note)
    write_state(server)
    _note(
        f"ready in {time.monotonic() - started:.1f}s: {server.url} (data in {server.data_dir}); "
        "stop it with `ridestream db down`"
    )
    print(server.url)


@db_app.command()
def status() -> None:
    """Say whether the server started by `db up` is running (exit 0) or not (exit 1)."""
    url = recorded_database_url()
    if url is None:
        print("not running")
        raise typer.Exit(1)
    server = load_state()
    print(f"running: {url}" + (f" (data in {server.data_dir})" if server else ""))


@db_app.command()
def down(
    drop: Annotated[bool, typer.Option("--drop", help="also remove the data directory")] = False,
) -> None:
    """Stop the server started by `db up` (its data stays for the next `up`, unless --drop)."""
    server = load_state()
    if server is None:
        print("no local database server is recorded")
        return
    server.stop()
    clear_state()
    if drop:
        shutil.rmtree(server.data_dir, ignore_errors=True)
    print(f"stopped; data {'removed' if drop else f'kept in {server.data_dir}'}")
