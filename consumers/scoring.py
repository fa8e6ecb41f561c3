"""What every scorer shares: the result shape, the predictor seam, and the split into scored and failed rows.

A scorer turns one micro-batch of validated events into predictions with one `predict` call per model.
Rows whose prediction is not a finite number become failures (the runner dead-letters them as
"unscoreable"); the rest of the batch is still scored.

Predictions leave a scorer already encoded (`EncodedPrediction`): the contract's fields, in the contract's
order, serialised by pydantic-core's JSON encoder, byte for byte what the contract model would write. Building
the model first cost 4.4 µs per prediction (its validators re-checking what the scorer has just checked: ids
that came from a validated event, a finite non-negative number), this costs 1.3 µs; at ~90% of events that
was ~12% of a service's CPU. tests/unit/test_scorers.py decodes every output of every scorer with the
contract model and re-encodes it to the same bytes, so the contract stays the one definition of the wire.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from itertools import chain, compress, repeat
from operator import attrgetter
from typing import Annotated, Any, Protocol, TypeVar, runtime_checkable

import msgspec
import numpy as np
from pydantic import TypeAdapter
from pydantic_core import to_json
from threadpoolctl import ThreadpoolController

from consumers._rows import interleave
from consumers.compiled import CompiledBooster
from consumers.features import StartColumns, start_columns_from_events, start_features
from schemas.base import SCHEMA_VERSION
from schemas.events import RideCompleted, RideProgress, RideStarted
from schemas.predictions import CostPrediction, DurationPrediction, TipPrediction

Event = RideStarted | RideProgress | RideCompleted
T = TypeVar("T")
Prediction = DurationPrediction | TipPrediction | CostPrediction

# Payment types for which the TLC records a tip: card (1) and unknown (5, mostly rows whose codes the TLC
# left empty, card among them). Cash tips are never recorded (2), nor tips on no-charge (3), disputed (4)
# or voided (6) rides, so the prediction of the *recorded* tip is 0 there by construction.
TIP_RECORDED_PAYMENT_TYPES: tuple[int, ...] = (1, 5)
# OpenMP threads for HistGradientBoosting. Services scale out by processes (one per partition share), and
# OpenMP's spin-waiting threads collapse when processes outnumber cores: on this 2-core box at load 5, a
# fit took 22 s with 2 threads and 0.7 s with 1. One thread costs ~1.4x on an idle machine, never 30x.
OPENMP_THREADS = 1


class Predictor(Protocol):
    """A fitted model: one 2-D float matrix in, one prediction per row out."""

    def predict(self, X: np.ndarray) -> Any: ...


class EncodedPrediction(msgspec.Struct, frozen=True, gc=False):
    """One prediction as it goes on the wire: keyed by its ride, valued by the contract's JSON. (A msgspec
    Struct: one is built per prediction, and a frozen dataclass's __init__ (~1 µs) or a NamedTuple's Python
    `__new__` were a visible share of a process's time in the profile, results/service-profile.md.)"""

    ride_id: str
    key: bytes
    value: bytes
    contract: type[Prediction]
    headers: list[tuple[str, str | bytes | None]] | None = None
    shadow: bool = False

    def decoded(self) -> Prediction:
        """The contract model, validated from the bytes (for tests and tools; the hot path never needs it)."""
        return self.contract.model_validate_json(self.value)


# Each contract's `prediction_type` discriminator, read from the models so it is defined once.
PREDICTION_TYPES: dict[type[Prediction], str] = {
    contract: contract.model_fields["prediction_type"].default
    for contract in (DurationPrediction, TipPrediction, CostPrediction)
}


def check_labels(contract: type[Prediction], model_name: str, model_version: str) -> None:
    """The encoder stamps these on every prediction without validating them: check them against the contract
    once, when the scorer is built (a pydantic ValidationError names the field)."""
    for name, value in (("model_name", model_name), ("model_version", model_version)):
        # Named first, the Annotated form is an alias of str to mypy, which refuses it inline as TypeAdapter's
        # argument (typed TypeForm[T], read as type[T]); pydantic takes either.
        field_type = Annotated[str, contract.model_fields[name]]
        TypeAdapter(field_type).validate_python(value)


def encode_prediction(
    contract: type[Prediction],
    event: Event,
    model_name: str,
    model_version: str,
    produced_at: datetime,
    **values: float,
) -> EncodedPrediction:
    """The prediction of `event` as `contract` serialises it: the common fields in the contract's order,
    then `values` (the contract's own fields, passed in its order)."""
    fields = {
        "schema_version": SCHEMA_VERSION,
        "ride_id": event.ride_id,
        "source_event_id": event.event_id,
        "source_event_type": event.event_type,
        "source_event_time": event.event_time,
        "model_name": model_name,
        "model_version": model_version,
        "produced_at": produced_at,
        "prediction_type": PREDICTION_TYPES[contract],
        **values,
    }
    return EncodedPrediction(event.ride_id, event.ride_id.encode(), to_json(fields), contract)


# The fields every prediction starts with, in the contract's order (`variant` is left out when None, and
# with_variant puts it in); the contract's own value fields follow `prediction_type`.
COMMON_FIELDS: tuple[str, ...] = (
    "schema_version",
    "ride_id",
    "source_event_id",
    "source_event_type",
    "source_event_time",
    "model_name",
    "model_version",
    "produced_at",
)
# pydantic-core writes a float's exponent as "e+16", msgspec as "e16"; below 1e16 both write the same
# shortest repr (tests/unit/test_scorers.py holds them byte for byte). Above it, pydantic encodes the row.
_SAME_FLOAT_TEXT_BELOW = 1e16


class ContractDrift(TypeError):
    """The prediction contract has fields this encoder does not know how to write: extend it first."""


class PredictionEncoder:
    """A contract's predictions, a batch at a time: the JSON every row of a batch shares is written once (by
    msgspec, from the contract's fields in its order), the values that differ per row are each column's
    JSON written in one msgspec call, and C (consumers/_rows.c) puts each row together. Byte for byte what
    the contract model writes (pydantic encodes any row whose text msgspec would spell differently: a float
    of 1e16 or more, an id JSON would escape): 1.13x less than a msgspec Struct per row and `encode_lines`,
    2.15x less than `encode_prediction` one at a time (results/scoring-costs.md)."""

    def __init__(self, contract: type[Prediction]) -> None:
        names = [name for name in contract.model_fields if name != "variant"]
        if (
            tuple(names[: len(COMMON_FIELDS)]) != COMMON_FIELDS
            or names[len(COMMON_FIELDS)] != "prediction_type"
        ):
            raise ContractDrift(
                f"{contract.__name__}: fields {names} are not the common ones, then the values"
            )
        self.value_fields = tuple(names[len(COMMON_FIELDS) + 1 :])
        if any(contract.model_fields[name].annotation is not float for name in self.value_fields):
            raise ContractDrift(f"{contract.__name__}: a value field that is not a float")
        self.contract = contract
        self.prediction_type = PREDICTION_TYPES[contract]
        self._encoder = msgspec.json.Encoder()

    def template(self, model_name: str, model_version: str, produced_at: datetime) -> tuple[bytes, ...]:
        """The text around a row's own values, in k + 1 parts: the text before its ride_id, between that and
        its source_event_id, ... (the common fields' order), after its last value field."""
        json = self._encoder.encode
        constants = {
            "schema_version": SCHEMA_VERSION,
            "model_name": model_name,
            "model_version": model_version,
            "produced_at": produced_at,
            "prediction_type": self.prediction_type,
        }
        parts, current = [], b""
        for position, name in enumerate((*COMMON_FIELDS, "prediction_type", *self.value_fields)):
            current += (b"," if position else b"{") + json(name) + b":"
            if name in constants:
                current += json(constants[name])
            elif name in _QUOTED_COLUMNS:  # (plain text, checked per batch: quoted as it is)
                parts.append(current + b'"')
                current = b'"'
            else:
                parts.append(current)
                current = b""
        return (*parts, current + b"}")

    def encode(
        self,
        events: Sequence[Any],
        model_name: str,
        model_version: str,
        produced_at: datetime,
        values: Sequence[np.ndarray],
    ) -> list[EncodedPrediction]:
        """One prediction per event; `values` holds one finite column per value field, in the contract's
        order."""
        if not events:
            return []
        ids = list(map(_RIDE_ID, events))
        texts = [ids, list(map(_EVENT_ID, events)), list(map(_EVENT_TYPE, events))]
        columns = [column.tolist() for column in values]
        lines = interleave(
            self.template(model_name, model_version, produced_at),
            (*texts, *map(self.json_items, [list(map(_EVENT_TIME, events)), *columns])),
        )
        encoded = list(map(EncodedPrediction, ids, map(str.encode, ids), lines, repeat(self.contract)))
        too_big = np.logical_or.reduce([np.abs(c) >= _SAME_FLOAT_TEXT_BELOW for c in values])
        for row in sorted({*np.flatnonzero(too_big).tolist(), *_escaped_rows(texts)}):
            fields = dict(zip(self.value_fields, (column[row] for column in columns)))
            encoded[row] = encode_prediction(
                self.contract, events[row], model_name, model_version, produced_at, **fields
            )
        return encoded

    def json_items(self, items: list[Any]) -> bytes:
        """The items' JSON texts, comma-separated (floats' and times' text has no comma): the inside of the
        list's JSON, which `interleave` splits."""
        return self._encoder.encode(items)[1:-1]


# The per-row fields the encoder copies as text between quotes (ids the contract's pattern keeps plain, and
# the event type); the event time and the values are their JSON text.
_QUOTED_COLUMNS = frozenset({"ride_id", "source_event_id", "source_event_type"})
_RIDE_ID, _EVENT_ID, _EVENT_TYPE, _EVENT_TIME = map(
    attrgetter, ("ride_id", "event_id", "event_type", "event_time")
)
# Text JSON writes as it is: printable ASCII but '"' and '\\'.
_PLAIN_TEXT = re.compile(r"[ !#-\[\]-~]*")


def _escaped_rows(texts: Sequence[list[str]]) -> list[int]:
    """Rows with a text JSON would escape (the contract lets none through): one scan when there are none."""
    if _PLAIN_TEXT.fullmatch("".join(chain.from_iterable(texts))) is not None:
        return []
    return [
        row for row, row_texts in enumerate(zip(*texts)) if _PLAIN_TEXT.fullmatch("".join(row_texts)) is None
    ]


@cache
def prediction_encoder(contract: type[Prediction]) -> PredictionEncoder:
    return PredictionEncoder(contract)


@dataclass
class ScoreResult:
    """A scorer's answer: the predictions, and (position in the events it was handed, reason) of the events
    it could not score; positions, not the events, so the runner finds each failure's record directly."""

    predictions: list[EncodedPrediction] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)


@cache
def _threadpools() -> ThreadpoolController:
    # Built once, on first use (after scikit-learn has loaded its OpenMP runtime): building one scans
    # the process's libraries (~1.5 ms), while limiting through it costs ~50 µs.
    import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime the controller has to find)

    return ThreadpoolController()


@contextmanager
def openmp_threads(threads: int = OPENMP_THREADS) -> Iterator[None]:
    with _threadpools().limit(limits=threads, user_api="openmp"):
        yield


def predict_rows(model: Predictor, features: np.ndarray) -> np.ndarray:
    """One vectorized predict; an empty batch never reaches the model (scikit-learn refuses 0 rows)."""
    if len(features) == 0:
        return np.empty(0, dtype=np.float64)
    if isinstance(model, CompiledBooster):  # one thread by construction; limiting OpenMP costs ~50 µs
        return model.predict(features)
    with openmp_threads():
        return np.asarray(model.predict(features), dtype=np.float64).reshape(-1)


def unscoreable_reason(value: float, model_name: str) -> str:
    return f"model {model_name} returned {value!r} for this event; a finite number is required"


def tip_where_recorded(predicted_tip: np.ndarray, payment_type: np.ndarray) -> np.ndarray:
    """The recorded tip to expect: the model's tip (never negative) where tips are recorded, else 0.

    NaN stays NaN so that a broken prediction is still reported as unscoreable, not hidden as a 0.
    """
    # (two comparisons: np.isin sorts, ~50 µs even for the one ride of an estimate)
    recorded = np.logical_or.reduce([payment_type == code for code in TIP_RECORDED_PAYMENT_TYPES])
    tips = np.where(recorded, np.maximum(predicted_tip, 0.0), 0.0)
    return np.where(np.isnan(predicted_tip), np.nan, tips)


def positions_by_type(events: Sequence[Event], event_types: Sequence[str]) -> list[list[int]]:
    """Where the events of each of `event_types` are among `events`, then (last) where all the others are:
    one scan of the events' types, whatever the number of types."""
    codes = {event_type: code for code, event_type in enumerate(event_types)}
    kinds = np.fromiter(map(codes.get, map(_EVENT_TYPE, events), repeat(-1)), np.int8, count=len(events))
    return [np.flatnonzero(kinds == code).tolist() for code in (*range(len(event_types)), -1)]


def not_scored_failures(
    events: Sequence[Event], positions: Sequence[int], scored_types: frozenset[str]
) -> list[tuple[int, str]]:
    """The events at `positions`, which a scorer was handed but does not score (the runner filters them;
    this keeps the scorer total)."""
    return [
        (
            position,
            f"{events[position].event_type} events are not scored here "
            f"(scores {', '.join(sorted(scored_types))})",
        )
        for position in positions
    ]


def at(items: Sequence[T], positions: Sequence[int]) -> list[T]:
    return list(map(items.__getitem__, positions))


def in_event_order(parts: Sequence[tuple[Sequence[int], list[T]]]) -> list[T]:
    """The items of every (positions, items) part, each at its position among the events, in their order:
    so a ride's start estimate never follows its updates."""
    positions = np.concatenate([np.asarray(where, dtype=np.int64) for where, _items in parts])
    items = [item for _where, part in parts for item in part]
    return at(items, np.argsort(positions, kind="stable").tolist())


def finite_rows(
    result: ScoreResult, positions: Sequence[int], numbers: np.ndarray, model_name: str
) -> np.ndarray:
    """Which rows the model gave a finite number (a mask); each other row becomes a failure at its position
    among the events the scorer was handed."""
    finite: np.ndarray = np.isfinite(numbers)
    for row in np.flatnonzero(~finite).tolist():
        result.failures.append((positions[row], unscoreable_reason(float(numbers[row]), model_name)))
    return finite


def kept(items: Sequence[T], mask: np.ndarray) -> list[T]:
    return list(items) if mask.all() else list(compress(items, mask.tolist()))


PostProcess = Callable[[np.ndarray, StartColumns], np.ndarray]


@runtime_checkable
class PickupScorer(Protocol):
    """A scorer's number for rides at pickup, straight from columns: what the batch job stores and what the
    scorer's own `score` puts in each ride_started prediction, so the two cannot differ."""

    @property
    def pickup_model(self) -> tuple[str, str]:
        """(model name, version) of the model that scores a ride at pickup."""
        ...

    def at_pickup(self, columns: StartColumns, features: np.ndarray) -> np.ndarray:
        """One number per ride, in the contract's units (NaN where the model gave no finite number), from the
        rides' columns and their `start_features` (computed once for every model that scores them)."""
        ...


class StartScorer:
    """One model, scored at pickup: ride_started events → one value field of `contract` (tip, cost).

    `post_process` turns the model's raw numbers into what the contract promises (never below 0, 0 where
    tips go unrecorded); it must keep NaN, so that a broken row is still reported as unscoreable.
    """

    scored_event_types: frozenset[str] = frozenset({"ride_started"})

    def __init__(
        self,
        contract: type[Prediction],
        model_name: str,
        value_field: str,
        post_process: PostProcess,
        model: Predictor,
        model_version: str,
    ) -> None:
        self.contract = contract
        self.model_name = model_name
        self.value_field = value_field
        self.post_process = post_process
        self.model = model
        self.model_version = model_version
        check_labels(contract, model_name, model_version)
        self.encoder = prediction_encoder(contract)
        if self.encoder.value_fields != (value_field,):
            raise ContractDrift(
                f"{contract.__name__}: value fields {self.encoder.value_fields}, not {value_field}"
            )

    @property
    def pickup_model(self) -> tuple[str, str]:
        return self.model_name, self.model_version

    def at_pickup(self, columns: StartColumns, features: np.ndarray) -> np.ndarray:
        return self.post_process(predict_rows(self.model, features), columns)

    def score(self, events: Sequence[Event], produced_at: datetime) -> ScoreResult:
        positions, others = positions_by_type(events, ("ride_started",))
        result = ScoreResult(failures=not_scored_failures(events, others, self.scored_event_types))
        started = at(events, positions)
        columns = start_columns_from_events(started)  # type: ignore[arg-type]
        values = self.at_pickup(columns, start_features(columns))
        finite = finite_rows(result, positions, values, self.model_name)
        result.predictions = self.encoder.encode(
            kept(started, finite), self.model_name, self.model_version, produced_at, [values[finite]]
        )
        return result
