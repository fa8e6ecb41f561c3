"""The batch job's background transaction on a real (SQLite) database: steps run in order on the writer's
thread and commit together; a failing step, or a failure in the caller, leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, text

from shared.batch_store import BackgroundTransaction, Step, Timings, connect


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    database = connect(f"sqlite:///{tmp_path / 'store.sqlite'}")
    with database.begin() as connection:
        connection.execute(text("CREATE TABLE rows (n INTEGER)"))
    return database


def insert(n: int) -> Step:
    def step(connection: Connection) -> None:
        connection.execute(text("INSERT INTO rows VALUES (:n)"), {"n": n})

    return step


def stored(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(text("SELECT n FROM rows ORDER BY rowid"))]


def test_steps_run_in_order_and_commit_together(engine: Engine) -> None:
    timings: Timings = {}
    with BackgroundTransaction(engine, timings) as writing:
        for n in range(5):
            writing.submit(insert(n))
    assert stored(engine) == [0, 1, 2, 3, 4]
    assert timings["write"] > 0


def test_a_failing_step_is_raised_in_the_caller_and_rolls_everything_back(engine: Engine) -> None:
    def broken(connection: Connection) -> None:
        connection.execute(text("INSERT INTO missing VALUES (1)"))

    with pytest.raises(Exception, match="missing"):
        with BackgroundTransaction(engine, {}, depth=1) as writing:
            writing.submit(insert(1))
            writing.submit(broken)
            for n in range(2, 50):  # the writer drains after the failure: no submit blocks for ever
                writing.submit(insert(n))
    assert stored(engine) == []


def test_a_failure_in_the_caller_rolls_back_what_was_written(engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="scoring failed"):
        with BackgroundTransaction(engine, {}) as writing:
            writing.submit(insert(1))
            raise RuntimeError("scoring failed")
    assert stored(engine) == []
