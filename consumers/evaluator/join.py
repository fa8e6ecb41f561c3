"""The evaluator's join, pure: predictions meet what actually happened (`ride_completed`) by ride_id.

Per input partition (all input topics are co-partitioned by ride_id) a `PartitionJoin` holds the rides it
has seen a prediction or an outcome of, in the order they first appeared, and accumulates error sums per
(service, model, version, segment). Sums, not averages: a window of any length is the difference of two
snapshots, and the fleet's figure is the sum over partitions.

    segment   duration, model duration:          "start"      (the estimate at pickup)
              duration, model dynamic_duration:  "0-25%" … "75-100%" of the ride done when it was made
              tip:                               "card"       (tips are recorded on card rides only)
              cost:                              "all"

Arrival order does not matter: a prediction waits for its outcome up to `max_wait_s` (then it counts as
expired), an outcome waits `grace_s` for late predictions, then the ride is forgotten.

Restarts count nothing twice. A snapshot carries `counted_through`, the next offset per topic at the time of
the sums it holds; `resume`, the lowest offset per topic of any record of a ride still held; and `held`,
those rides. A restarted join replays from `resume`. A replayed record (below `counted_through`) of a ride
not held is passed over, and a pair whose records both lie below `counted_through` is only remembered:
both are in the restored sums already (and a later duplicate of such a pair is still recognised).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

CARD_PAYMENT = 1
START_SEGMENT = "start"
PROGRESS_SEGMENTS = ("0-25%", "25-50%", "50-75%", "75-100%")
# The prediction contract's field holding the predicted value, by prediction_type.
VALUE_FIELDS = {
    "duration": "predicted_duration_minutes",
    "tip": "predicted_tip_usd",
    "cost": "predicted_total_usd",
}


class Prediction(NamedTuple):
    topic: str
    offset: int
    service: str  # the contract's prediction_type
    source_event_id: str
    model: str
    version: str
    value: float
    elapsed_seconds: float


class Outcome(NamedTuple):
    topic: str
    offset: int
    duration_minutes: float
    tip_usd: float
    total_usd: float
    card: bool


class FigureKey(NamedTuple):
    service: str
    model: str
    version: str
    segment: str


@dataclass
class Sums:
    """count, Σ error, Σ |error|, Σ error², Σ error⁴ of (predicted − actual): the last one gives the
    variance of the squared error, for confidence intervals of the MSE."""

    count: int = 0
    error: float = 0.0
    abs_error: float = 0.0
    sq_error: float = 0.0
    fourth_error: float = 0.0

    def add(self, error: float) -> None:
        square = error * error
        self.count += 1
        self.error += error
        self.abs_error += abs(error)
        self.sq_error += square
        self.fourth_error += square * square

    def merge(self, other: Sums) -> None:
        self.count += other.count
        self.error += other.error
        self.abs_error += other.abs_error
        self.sq_error += other.sq_error
        self.fourth_error += other.fourth_error

    def minus(self, earlier: Sums) -> Sums:
        """What was added since `earlier` (a snapshot of the same sums)."""
        return Sums(
            self.count - earlier.count,
            self.error - earlier.error,
            self.abs_error - earlier.abs_error,
            self.sq_error - earlier.sq_error,
            self.fourth_error - earlier.fourth_error,
        )

    def as_list(self) -> list[float]:
        return [self.count, self.error, self.abs_error, self.sq_error, self.fourth_error]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> Sums:
        count, error, abs_error, sq_error, *fourth = values
        return cls(int(count), error, abs_error, sq_error, fourth[0] if fourth else 0.0)

    @property
    def mse(self) -> float:
        return self.sq_error / self.count if self.count else math.nan

    @property
    def mse_variance(self) -> float:
        """The sample variance of the squared errors."""
        if self.count < 2:
            return math.nan
        mean = self.mse
        return max(0.0, (self.fourth_error - self.count * mean * mean) / (self.count - 1))

    @property
    def rmse(self) -> float:
        return math.sqrt(self.sq_error / self.count) if self.count else math.nan

    @property
    def mae(self) -> float:
        return self.abs_error / self.count if self.count else math.nan

    @property
    def bias(self) -> float:
        return self.error / self.count if self.count else math.nan


def progress_segment(elapsed_seconds: float, duration_minutes: float) -> str:
    done = elapsed_seconds / (duration_minutes * 60.0)
    return PROGRESS_SEGMENTS[min(len(PROGRESS_SEGMENTS) - 1, max(0, int(done * len(PROGRESS_SEGMENTS))))]


def judged(prediction: Prediction, outcome: Outcome) -> tuple[str, float] | None:
    """(segment, predicted − actual) of one prediction, or None when its truth is not recorded."""
    if prediction.service == "duration":
        segment = (
            START_SEGMENT
            if prediction.elapsed_seconds == 0
            else progress_segment(prediction.elapsed_seconds, outcome.duration_minutes)
        )
        return segment, prediction.value - outcome.duration_minutes
    if prediction.service == "tip":
        return ("card", prediction.value - outcome.tip_usd) if outcome.card else None
    if prediction.service == "cost":
        return "all", prediction.value - outcome.total_usd
    return None


def prediction_from(topic: str, offset: int, record: Mapping[str, Any]) -> Prediction | None:
    """The parts of a decoded prediction record the join needs; None when it is not a known prediction."""
    service = record.get("prediction_type")
    value_field = VALUE_FIELDS.get(service) if isinstance(service, str) else None
    if value_field is None:
        return None
    value, elapsed = record.get(value_field), record.get("elapsed_seconds", 0.0) or 0.0
    numbers = (value, elapsed)
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
        return None
    if not all(math.isfinite(n) for n in numbers):  # type: ignore[arg-type]  # json.loads takes NaN
        return None
    return Prediction(
        topic,
        offset,
        str(service),
        str(record.get("source_event_id", "")),
        str(record.get("model_name", "")),
        str(record.get("model_version", "")),
        float(value),  # type: ignore[arg-type]
        float(elapsed),
    )


@dataclass
class Ride:
    first_seen: float
    waiting: list[Prediction] = field(default_factory=list)
    outcome: Outcome | None = None
    outcome_at: float = 0.0
    # The lowest offset per topic of any record of this ride: a restart re-reads them all, so that the
    # judged ones are known again and a duplicate arriving later is not judged twice.
    first_offsets: dict[str, int] = field(default_factory=dict)
    # (service, source event, model version) of every prediction already judged: a duplicate (an
    # at-least-once replay upstream) is judged once.
    judged_ids: set[tuple[str, str, str]] = field(default_factory=set)


class PartitionJoin:
    def __init__(
        self,
        partition: int,
        counted_through: Mapping[str, int] | None = None,
        resume: Mapping[str, int] | None = None,
        sums: Mapping[FigureKey, Sums] | None = None,
        expired: int = 0,
        held: Iterable[str] = (),
    ) -> None:
        self.partition = partition
        self.rides: dict[str, Ride] = {}
        self.counted_through = dict(counted_through or {})
        # The rides the restored snapshot still held: a replayed record (below counted_through) of any other
        # ride belongs to a ride already judged or expired, and is passed over.
        self.restoring: set[str] = set(held)
        # Where reading (re)starts per topic: a restored join has not passed its snapshot's resume yet.
        self.through = dict(resume or {})
        self.sums: dict[FigureKey, Sums] = dict(sums or {})
        self.expired = expired

    def _seen(self, topic: str, offset: int) -> None:
        if offset + 1 > self.through.get(topic, 0):
            self.through[topic] = offset + 1

    def _done_before(self, ride_id: str, record: Prediction | Outcome) -> bool:
        """A replayed record of a ride the snapshot no longer held (its pairs are in the sums already)."""
        replayed = record.offset < self.counted_through.get(record.topic, 0)
        return replayed and ride_id not in self.rides and ride_id not in self.restoring

    def _ride(self, ride_id: str, record: Prediction | Outcome, now: float) -> Ride:
        ride = self.rides.get(ride_id)
        if ride is None:
            ride = self.rides[ride_id] = Ride(now)
        if record.offset < ride.first_offsets.get(record.topic, record.offset + 1):
            ride.first_offsets[record.topic] = record.offset
        return ride

    def _counted_before(self, prediction: Prediction, outcome: Outcome) -> bool:
        limit = self.counted_through
        return prediction.offset < limit.get(prediction.topic, 0) and outcome.offset < limit.get(
            outcome.topic, 0
        )

    def _judge(self, ride: Ride, prediction: Prediction, outcome: Outcome) -> None:
        identity = (prediction.service, prediction.source_event_id, prediction.version)
        if identity in ride.judged_ids:
            return
        ride.judged_ids.add(identity)
        if self._counted_before(prediction, outcome):
            return
        verdict = judged(prediction, outcome)
        if verdict is None:
            return
        segment, error = verdict
        key = FigureKey(prediction.service, prediction.model, prediction.version, segment)
        self.sums.setdefault(key, Sums()).add(error)

    def add_prediction(self, ride_id: str, prediction: Prediction, now: float) -> None:
        self._seen(prediction.topic, prediction.offset)
        if self._done_before(ride_id, prediction):
            return
        ride = self._ride(ride_id, prediction, now)
        if ride.outcome is None:
            ride.waiting.append(prediction)
        else:
            self._judge(ride, prediction, ride.outcome)

    def add_outcome(self, ride_id: str, outcome: Outcome, now: float) -> None:
        self._seen(outcome.topic, outcome.offset)
        if self._done_before(ride_id, outcome):
            return
        ride = self._ride(ride_id, outcome, now)
        if ride.outcome is not None:
            return  # a replayed ride_completed: the first one stands
        ride.outcome, ride.outcome_at = outcome, now
        for prediction in ride.waiting:
            self._judge(ride, prediction, outcome)
        ride.waiting.clear()

    def expire(self, now: float, max_wait_s: float, grace_s: float) -> int:
        """Forget rides without an outcome first seen over `max_wait_s` ago, and rides whose outcome came
        over `grace_s` ago (the window for late predictions); returns the predictions expired unjudged."""
        expired = 0
        for ride_id, ride in list(self.rides.items()):
            if ride.outcome is None and now - ride.first_seen > max_wait_s:
                expired += len(ride.waiting)
                del self.rides[ride_id]
                self.restoring.discard(ride_id)
            elif ride.outcome is not None and now - ride.outcome_at > grace_s:
                del self.rides[ride_id]
                self.restoring.discard(ride_id)
        self.expired += expired
        return expired

    def resume_offsets(self) -> dict[str, int]:
        """Per topic, where a restart must read from: the first record of every ride still held."""
        resume = dict(self.through)
        for ride in self.rides.values():
            for topic, offset in ride.first_offsets.items():
                if offset < resume.get(topic, offset + 1):
                    resume[topic] = offset
        return resume

    def snapshot(self) -> dict[str, Any]:
        # Mid-replay, `through` is still below the restored counted_through: never move that mark back.
        counted = {
            topic: max(self.through.get(topic, 0), self.counted_through.get(topic, 0))
            for topic in {*self.through, *self.counted_through}
        }
        if all(self.through.get(t, 0) >= offset for t, offset in self.counted_through.items()):
            self.restoring.clear()  # the replay is over: every held ride has been read again
        return {
            "partition": self.partition,
            "counted_through": counted,
            "resume": self.resume_offsets(),
            "expired": self.expired,
            "waiting_rides": len(self.rides),
            "held": sorted(set(self.rides) | self.restoring),
            "figures": [
                {
                    **key._asdict(),
                    "count": s.count,
                    "sum_error": s.error,
                    "sum_abs_error": s.abs_error,
                    "sum_sq_error": s.sq_error,
                    "sum_fourth_error": s.fourth_error,
                }
                for key, s in sorted(self.sums.items())
            ],
        }

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any]) -> PartitionJoin:
        return cls(
            int(snapshot["partition"]),
            counted_through=snapshot.get("counted_through", {}),
            resume=snapshot.get("resume", {}),
            sums=figures_of(snapshot),
            expired=int(snapshot.get("expired", 0)),
            held=snapshot.get("held", ()),
        )


def figures_of(snapshot: Mapping[str, Any]) -> dict[FigureKey, Sums]:
    return {
        FigureKey(f["service"], f["model"], f["version"], f["segment"]): Sums(
            int(f["count"]),
            float(f["sum_error"]),
            float(f["sum_abs_error"]),
            float(f["sum_sq_error"]),
            float(f.get("sum_fourth_error", 0.0)),
        )
        for f in snapshot.get("figures", [])
    }


def fleet_figures(snapshots: Iterable[Mapping[str, Any]]) -> dict[FigureKey, Sums]:
    """The whole fleet's figures: the sums of every partition's latest snapshot."""
    total: dict[FigureKey, Sums] = {}
    for snapshot in snapshots:
        for key, sums in figures_of(snapshot).items():
            total.setdefault(key, Sums()).merge(sums)
    return total
