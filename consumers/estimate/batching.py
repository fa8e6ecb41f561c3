"""Requests scored together: scoring has a fixed cost per call (per model: building the feature matrix,
entering the compiled trees; ~300 µs for the three models of one ride) that a batch pays once.

Each request's rides go on a queue; one scoring task takes everything queued (up to `max_rides`), scores it
with one predict per model and hands each request its slice. No request waits for a batch to fill: at low
load a batch is one request; under load the requests that arrive while a batch is scored form the next one
(the adaptive batching of model servers such as Triton).

Where a batch is scored depends on its size. Up to `inline_rides` rides it is scored on the event loop: the
hop to a worker thread and back costs ~190 µs of CPU (two threads taking turns on the GIL), more than half
of what a one-ride batch costs itself, and blocks the loop for no longer than parsing a large body does (16
rides: ~1 ms). Larger batches go to a worker thread, so the loop keeps accepting connections while they are
scored (and the trees run there without the GIL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import NamedTuple

from consumers.estimate.estimates import Unscoreable
from schemas.events import RideStarted
from schemas.http import Estimate

Outcome = Estimate | Unscoreable
Score = Callable[[Sequence[RideStarted]], list[Outcome]]


class Pending(NamedTuple):
    events: Sequence[RideStarted]
    answer: asyncio.Future[list[Outcome]]


# Measured in bench/web.py's runs: see the module's docstring.
INLINE_RIDES = 16


class Batcher:
    def __init__(self, score: Score, max_rides: int = 1000, inline_rides: int = INLINE_RIDES) -> None:
        self.score = score
        self.max_rides = max_rides
        self.inline_rides = inline_rides
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="estimate-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def estimate(self, events: Sequence[RideStarted]) -> list[Outcome]:
        answer: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        await self.queue.put(Pending(events, answer))
        return await answer

    def _take(self, first: Pending) -> list[Pending]:
        batch, rides = [first], len(first.events)
        while rides < self.max_rides and not self.queue.empty():
            item = self.queue.get_nowait()
            batch.append(item)
            rides += len(item.events)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._take(await self.queue.get())
            events = [event for item in batch for event in item.events]
            try:
                if len(events) <= self.inline_rides:
                    outcomes = self.score(events)
                else:
                    outcomes = await loop.run_in_executor(None, self.score, events)
            except Exception as exc:  # a model's failure is each request's 500, never the batcher's end
                for item in batch:
                    if not item.answer.done():
                        item.answer.set_exception(exc)
                continue
            start = 0
            for item in batch:
                if not item.answer.done():  # (a client gone meanwhile)
                    item.answer.set_result(outcomes[start : start + len(item.events)])
                start += len(item.events)
