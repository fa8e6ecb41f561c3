"""The estimate service's adaptive batching: requests that arrive while a batch is scored are scored together,
each gets exactly its own rides back, in order, and a model's failure fails only the requests it was for."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from consumers.estimate.batching import Batcher, Outcome
from consumers.estimate.estimates import Unscoreable
from schemas.events import RideStarted
from tests.factories import ride_started


def test_requests_queued_behind_a_batch_are_scored_together_and_answered_in_order() -> None:
    calls: list[list[str]] = []
    first_started, release = threading.Event(), threading.Event()

    def score(events: Sequence[RideStarted]) -> list[Outcome]:
        calls.append([e.ride_id for e in events])
        first_started.set()
        release.wait(5)
        return [Unscoreable(i, "tip", e.ride_id) for i, e in enumerate(events)]

    async def scenario() -> list[list[Outcome]]:
        batcher = Batcher(score, inline_rides=0)  # every batch on the worker thread, as large ones are
        batcher.start()
        first = asyncio.create_task(batcher.estimate([ride_started("a")]))
        await asyncio.get_running_loop().run_in_executor(None, first_started.wait, 5)
        rest = [
            asyncio.create_task(batcher.estimate([ride_started(f"{n}-{i}") for i in range(n)]))
            for n in (1, 2, 3)
        ]
        while batcher.queue.qsize() < 3:  # all three queued behind the running batch
            await asyncio.sleep(0)
        release.set()
        answers = [await first, *[await task for task in rest]]
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert calls == [["a"], ["1-0", "2-0", "2-1", "3-0", "3-1", "3-2"]], "one predict for the queued three"
    assert [[o.reason for o in answer if isinstance(o, Unscoreable)] for answer in answers] == [
        ["a"], ["1-0"], ["2-0", "2-1"], ["3-0", "3-1", "3-2"],
    ]  # fmt: skip


def test_a_model_that_raises_fails_its_batch_and_the_batcher_keeps_serving() -> None:
    raised = [False]

    def score(events: Sequence[RideStarted]) -> list[Outcome]:
        if not raised[0]:
            raised[0] = True
            raise RuntimeError("broken model")
        return [Unscoreable(i, "cost", "ok") for i, _ in enumerate(events)]

    async def scenario() -> list[Outcome]:
        batcher = Batcher(score)
        batcher.start()
        with pytest.raises(RuntimeError, match="broken model"):
            await batcher.estimate([ride_started("x")])
        answer = await batcher.estimate([ride_started("y")])
        await batcher.stop()
        return answer

    assert len(asyncio.run(scenario())) == 1


def test_small_batches_are_scored_on_the_loop_and_large_ones_on_a_worker_thread() -> None:
    threads: dict[int, int] = {}

    def score(events: Sequence[RideStarted]) -> list[Outcome]:
        threads[len(events)] = threading.get_ident()
        return [Unscoreable(i, "cost", "ok") for i, _ in enumerate(events)]

    async def scenario() -> int:
        batcher = Batcher(score, inline_rides=4)
        batcher.start()
        await batcher.estimate([ride_started(f"s-{i}") for i in range(4)])
        await batcher.estimate([ride_started(f"l-{i}") for i in range(5)])
        await batcher.stop()
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert threads[4] == loop_thread
    assert threads[5] != loop_thread
