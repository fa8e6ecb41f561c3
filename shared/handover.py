"""Blue/green: which deployment publishes an input record for users, as a function of the control log.

Each handover names the deployment live from a rollout epoch on. Per input partition it takes effect at a
cut-over offset: where the deployment live before it first scored under that epoch or a later one (its
first such switch record in log order, written in the transaction of that batch). So the deployment
handing over decides the cut-over by itself, at a batch boundary, and the one taking over waits until it
can read it:

    offsets  ... 998 999 │1000 1001 ...        blue applies epoch 7 (hand to green) at offset 1000
    blue     users users │shadow shadow        (its switch record: switch/tip/3/7@1000, deployment blue)
    green    shadow ...  │users users          (waits for that record, then publishes from 1000 on)

A cut-over never moves back: it is at least the one before it, and once written it stays (a later record
at a lower offset does not move it). So however late a deployment reads the log, every record has exactly
one owner, and a replay of the input and the control log reproduces it.

The deployment taking over may have read past the cut-over before it knew of the handover (it runs ahead
of the live one, on the shadow topic): it then consumes again from the cut-over (`rewind_point`). Its own
switch records say whether it did: once it scored from the cut-over under the handover's epoch or a later
one, it has a record at or below the cut-over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

from pydantic import ValidationError

from schemas.control import SWITCH_PREFIX, SwitchRecord

# (epoch, deployment handing over, topic, partition) → its cut-over offset, or None while not recorded yet
CutoverLookup = Callable[[int, str, str, int], int | None]


class HandoverStep(NamedTuple):
    epoch: int
    to: str


def owner_at(
    handovers: Sequence[HandoverStep],
    initial: str,
    cutover: CutoverLookup,
    topic: str,
    partition: int,
    offset: int,
) -> str | None:
    """The deployment that publishes `offset` of `topic`/`partition` for users; None while a cut-over this
    record depends on is not known yet (the caller scores it later)."""
    owner, floor = initial, 0
    for step in handovers:
        if step.to == owner:
            continue
        found = cutover(step.epoch, owner, topic, partition)
        if found is None:
            return None
        at = max(found, floor)
        if offset < at:
            return owner
        owner, floor = step.to, at
    return owner


def rewind_point(
    handovers: Sequence[HandoverStep],
    initial: str,
    me: str,
    cutover: CutoverLookup,
    lowest_scored: Callable[[int], int | None],
    topic: str,
    partition: int,
    first: int,
) -> int | None:
    """Where `me` must consume `topic`/`partition` again from (its batch starts at `first`), or None: the
    earliest cut-over handing users to `me` that it read past without scoring from it under that handover.
    `lowest_scored(epoch)` is the lowest offset `me` has a switch record for at that epoch or a later one."""
    owner, floor, rewind = initial, 0, None
    for step in handovers:
        if step.to == owner:
            continue
        found = cutover(step.epoch, owner, topic, partition)
        if found is None:
            break  # what lies past it waits anyway (owner_at says None)
        at = max(found, floor)
        if step.to == me and first > at:
            scored = lowest_scored(step.epoch)
            if scored is None or scored > at:
                rewind = at if rewind is None else min(rewind, at)
        owner, floor = step.to, at
    return rewind


def first_at(records: Sequence[tuple[int, int]], epoch: int) -> int | None:
    """The offset of the first (epoch, offset) record, in the order written, at `epoch` or later."""
    return next((offset for e, offset in records if e >= epoch), None)


def lowest_at(records: Sequence[tuple[int, int]], epoch: int) -> int | None:
    return min((offset for e, offset in records if e >= epoch), default=None)


class CutoverIndex:
    """The switch records of one service, by (deployment, topic, partition), in log order. Filled by the
    control log's reader thread, read by the run loop."""

    def __init__(self, service: str) -> None:
        self.prefix = f"{SWITCH_PREFIX}{service}/"
        self._records: dict[tuple[str, str, int], list[tuple[int, int]]] = {}
        self._lock = threading.Lock()
        self.changed = threading.Event()

    def add(self, key: str, value: bytes | None) -> None:
        if value is None or not key.startswith(self.prefix):
            return
        try:
            record = SwitchRecord.model_validate_json(value)
        except ValidationError:
            return
        with self._lock:
            where = (record.deployment, record.topic, record.partition)
            self._records.setdefault(where, []).append((record.epoch, record.offset))
        self.changed.set()

    def records(self, deployment: str, topic: str, partition: int) -> list[tuple[int, int]]:
        with self._lock:
            return list(self._records.get((deployment, topic, partition), ()))

    def cutover(self, epoch: int, deployment: str, topic: str, partition: int) -> int | None:
        """Where `deployment` hands `topic`/`partition` over at `epoch`: its first record at `epoch` or
        later."""
        return first_at(self.records(deployment, topic, partition), epoch)


Where = tuple[str, int]  # (topic, partition)


class HandoverView:
    """Who publishes what, as seen by an instance of `me` at one batch boundary: the plan's handovers, the
    cut-overs the other deployment recorded (`index`), and our own switch records, from the log and from
    this instance (`local`, some not read back yet). `first` is where each partition's batch starts."""

    def __init__(
        self,
        handovers: Sequence[HandoverStep],
        live: str,
        me: str,
        index: CutoverIndex | None,
        local: Callable[[str, int], list[tuple[int, int]]],
        first: dict[Where, int],
    ) -> None:
        self.handovers, self.live, self.me, self.index, self.first = handovers, live, me, index, first
        self.mine = {
            where: (index.records(me, *where) if index is not None else [], local(*where)) for where in first
        }

    def cutover(self, epoch: int, deployment: str, topic: str, partition: int) -> int | None:
        if deployment != self.me:
            return self.index.cutover(epoch, deployment, topic, partition) if self.index else None
        # Handing over ourselves: where we first scored under this epoch or a later one, by the log, else by
        # this instance, else here (this batch records it).
        logged, local = self.mine[(topic, partition)]
        found = first_at(logged, epoch)
        found = first_at(local, epoch) if found is None else found
        return self.first[(topic, partition)] if found is None else found

    def rewinds(self) -> dict[Where, int]:
        """The partitions to consume again, from where (`rewind_point`)."""
        again = {}
        for (topic, partition), first in self.first.items():
            logged, local = self.mine[(topic, partition)]
            point = rewind_point(
                self.handovers,
                self.live,
                self.me,
                self.cutover,
                lambda epoch: lowest_at(logged + local, epoch),  # noqa: B023 (used before the next turn)
                topic,
                partition,
                first,
            )
            if point is not None:
                again[(topic, partition)] = point
        return again

    def owner(self, topic: str, partition: int, offset: int) -> str | None:
        return owner_at(self.handovers, self.live, self.cutover, topic, partition, offset)
