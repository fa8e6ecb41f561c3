"""A micro-batch of ride events decoded by msgspec, checked by the column; pydantic asked only about doubts.

    payloads ──► msgspec Structs (types, bounds, lengths: in C) ──► per kind: ids (one regex), time range
             │                                              (numpy), model validators' column rules ──► views
             └─ anything msgspec or a check doubts ──► `decode_event` (pydantic): its verdict

The pydantic models in schemas/ stay the one definition of the contract. The Structs are built from their
`model_fields` (every annotated_types bound becomes a msgspec `Meta` bound; an unknown piece of metadata or
an unknown validator fails the build, so a new rule cannot be skipped silently). The fast path only ever
*accepts*: a record it cannot prove valid goes to `decode_event`, so every refusal, its reason and its
detail are pydantic's own, and anything pydantic's lax mode accepts that msgspec's strict mode does not
("3" for an int, a missing `schema_version`) is still accepted. tests/unit/test_columnar_decode.py checks
the accepted events equal pydantic's, field by field, on valid, hostile and near-miss payloads.

Rules that live in validator functions, and how this module keeps them:
- `schemas.base._to_utc` (the years a ride can happen in): the same bounds (`EARLIEST`, `LATEST`, imported),
  compared with numpy on each time column's epoch seconds (exact: below 2**32 s every microsecond is its
  own double), then the same conversion to UTC for the few times not already in UTC.
- the models' `model_validator`s (`_not_before_pickup`, `_within_trip`, `_dropoff_after_pickup`): each has a
  column rule in `COLUMN_RULES`, numpy over the kind's numeric columns (times as epoch seconds), which
  `numeric_columns` gathers in one C pass (shared/_batch.c) for the rules and the time bounds alike.
  A validator with no rule stops the build, and the property test holds each rule to pydantic's verdict at
  its edges.
- the id `pattern`: one `re.fullmatch` over the batch's ids joined by a separator the pattern cannot match.

Where msgspec and pydantic read the same text differently, the record goes to pydantic: a time with more
than 6 fractional digits (msgspec rounds, pydantic truncates); and, as a precaution with no difference
found, any JSON escape (`\\`). `doubtful_rows` (shared/_batch.c) finds both, in C (an id like
"a1:23.4567890" only costs a slow path).

msgspec rather than a pydantic-core batch call: validating a whole batch as one `list[RideEvent]` JSON array
cost 11 µs an event against 15 µs one by one (its validators still run per event in Python), msgspec's
decode 1.5 µs (one run, side by side); and one bad record fails a whole array.

`RIDESTREAM_DECODER=pydantic` decodes every record with `decode_event` instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from itertools import compress, repeat
from operator import attrgetter
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
import msgspec
import numpy as np
from pydantic import AwareDatetime
from pydantic.fields import FieldInfo

from schemas.base import EARLIEST, LATEST, _to_utc
from schemas.events import PROGRESS_DISTANCE_SLACK, RideCompleted, RideProgress, RideStarted
from shared._batch import doubtful_rows
from shared._batch import numeric_columns as _numeric_columns
from shared.errors import ConfigError
from shared.serde import Rejected, RideEventModel, decode_event

DECODER_ENV = "RIDESTREAM_DECODER"
DECODERS: tuple[str, ...] = ("columnar", "pydantic")

EVENT_MODELS: tuple[type[RideEventModel], ...] = (RideStarted, RideProgress, RideCompleted)

# A valid event as `decode_batch(..., views=True)` hands it to the scorers: its Struct, which has the
# contract model's attribute names and (times in UTC) its values, `event_type` included. Dynamic classes,
# so typed by what reads them: attributes.
EventView = Any

# What a decoded record is: an event model (or its view), a refusal, or (for a valid event of a type the
# caller did not ask a model for) its event_type.
DecodedRecord = RideEventModel | Rejected | str | EventView

_ID_SEPARATOR = "\x00"

_BOUNDS: dict[type, str] = {
    annotated_types.Ge: "ge",
    annotated_types.Le: "le",
    annotated_types.Gt: "gt",
    annotated_types.Lt: "lt",
    annotated_types.MinLen: "min_length",
    annotated_types.MaxLen: "max_length",
}


class ContractDrift(TypeError):
    """The contract has a rule this decoder does not know how to keep: extend it (and its test) first."""


def decoder_kind() -> str:
    kind = os.environ.get(DECODER_ENV, DECODERS[0])
    if kind not in DECODERS:
        raise ConfigError(f"{DECODER_ENV}={kind!r}: expected one of {', '.join(DECODERS)}")
    return kind


class _Field:
    """How one contract field is decoded (its msgspec type) and which column checks it needs."""

    def __init__(self, name: str, info: FieldInfo) -> None:
        self.name = name
        self.pattern: str | None = None
        self.utc_time = False
        self.numeric = info.annotation in (int, float)
        bounds: dict[str, Any] = {}
        finite = False
        for item in info.metadata:
            if type(item) in _BOUNDS:
                bounds[_BOUNDS[type(item)]] = getattr(item, _BOUNDS[type(item)])
            elif getattr(item, "func", None) is _to_utc:
                self.utc_time = True
            else:
                # pydantic's own metadata (AllowInfNan, or a general one carrying `pattern`, depending on
                # the version): only the keys this decoder keeps, anything else is drift.
                unknown = set(vars(item)) - {"pattern", "allow_inf_nan"} if hasattr(item, "__dict__") else {0}
                if unknown or not vars(item):
                    raise ContractDrift(f"{name}: no columnar rule for {item!r}")
                self.pattern = getattr(item, "pattern", None) or self.pattern
                finite = finite or getattr(item, "allow_inf_nan", None) is False
        self.type = self._msgspec_type(name, info.annotation, bounds, finite)

    def _msgspec_type(self, name: str, annotation: Any, bounds: dict[str, Any], finite: bool) -> Any:
        if finite and not ({"ge", "gt"} & bounds.keys() and {"le", "lt"} & bounds.keys()):
            # msgspec's JSON reader never yields NaN and its bounds refuse ±inf; an unbounded side would not.
            raise ContractDrift(f"{name}: a finite float needs both bounds here")
        if self.utc_time != (annotation is AwareDatetime):
            raise ContractDrift(f"{name}: {annotation!r} with{'' if self.utc_time else 'out'} _to_utc")
        if annotation is AwareDatetime:
            return Annotated[datetime, msgspec.Meta(tz=True)]
        if get_origin(annotation) is Literal:
            return annotation
        if annotation in (int, float, str):
            return Annotated[annotation, msgspec.Meta(**bounds)] if bounds else annotation
        raise ContractDrift(f"{name}: no msgspec type for {annotation!r}")


class _EventKind:
    """One event model: its Struct, the fields its column checks look at, and its model validators."""

    def __init__(self, model: type[RideEventModel]) -> None:
        self.model = model
        tag_annotation = model.model_fields["event_type"].annotation
        (self.tag,) = get_args(tag_annotation)
        fields = [_Field(name, info) for name, info in model.model_fields.items() if name != "event_type"]
        decorators = model.__pydantic_decorators__
        if decorators.field_validators or decorators.field_serializers or decorators.root_validators:
            raise ContractDrift(f"{model.__name__}: field or root validators have no columnar rule")
        if any(info.info.mode != "after" for info in decorators.model_validators.values()):
            raise ContractDrift(f"{model.__name__}: only mode='after' model validators have column rules")
        self.rules: list[ColumnRule] = [
            column_rule(info.func) for info in decorators.model_validators.values()
        ]
        # Every field required, schema_version too: a payload leaning on a default goes to pydantic, so a
        # model built here has the same fields set as pydantic's.
        self.struct: type[msgspec.Struct] = msgspec.defstruct(
            f"{model.__name__}Struct",
            [(f.name, f.type) for f in fields],
            tag_field="event_type",
            tag=self.tag,
            forbid_unknown_fields=True,
            # The tag as a class attribute too: a view reads `event_type` like the model it stands for.
            namespace={"event_type": self.tag},
            # Only strings, numbers and times inside: no cycle is possible, so the collector need not
            # track (and traverse) the batch's thousands of Structs.
            gc=False,
        )
        self.names = tuple(f.name for f in fields)
        self.all_names = frozenset(("event_type", *self.names))
        if not all(name.isidentifier() for name in self.names):
            raise ContractDrift(f"{model.__name__}: a field name that is not an identifier")
        self.times = tuple(f.name for f in fields if f.utc_time)
        # What the rules read, gathered in one C pass per batch: times (as epoch seconds) and numbers.
        self.numeric = tuple(f.name for f in fields if f.utc_time or f.numeric)
        self._build = _model_builder(self)
        # (field, one value's pattern, the batch's joined values' pattern)
        self.patterns = tuple(
            (f.name, re.compile(_pattern_body(f.pattern)), _joined_pattern(f.pattern))
            for f in fields
            if f.pattern
        )

    def valid_rows(self, structs: Sequence[Any]) -> np.ndarray:
        """Which of `structs` (all of this kind) meet every rule beyond msgspec's; False: "ask pydantic"."""
        ok = np.ones(len(structs), dtype=bool)
        for name, single, joined in self.patterns:
            values = list(map(attrgetter(name), structs))
            if joined.fullmatch(_ID_SEPARATOR.join(values)) is None:
                ok &= np.array([single.fullmatch(v) is not None for v in values], dtype=bool)
        columns = dict(zip(self.numeric, numeric_columns(structs, self.numeric)))
        for name in self.times:
            epoch = columns[name]
            ok &= (epoch >= EARLIEST.timestamp()) & (epoch < LATEST.timestamp())
        for rule in self.rules:
            ok &= rule(structs, columns)
        return ok

    def views_of(self, structs: Sequence[Any]) -> list[EventView]:
        """`structs`, which passed `valid_rows`, as views: their times in UTC, as the model's would be."""
        for name in self.times:
            # (msgspec gives "Z" and "+00:00" in UTC already: the few others are converted)
            if set(map(attrgetter(f"{name}.tzinfo"), structs)) - {UTC}:
                for struct in structs:
                    if (time := getattr(struct, name)).tzinfo is not UTC:
                        setattr(struct, name, time.astimezone(UTC))
        return list(structs)

    def models_of(self, structs: Sequence[Any]) -> list[RideEventModel]:
        """The contract models of `structs`, which passed `valid_rows`: built, not validated again."""
        return self._build(structs)


# A batch's numeric attributes (times as epoch seconds), one float64 column per name: what the column rules
# read, gathered once per kind by `numeric_columns`.
Columns = Mapping[str, np.ndarray]
# A model validator's rule over a kind's Structs and their numeric columns: True where it passes. Keyed by
# the validator's qualified name; a validator without one stops the decoder's build (ContractDrift), so none
# is skipped silently.
ColumnRule = Callable[[Sequence[Any], Columns], np.ndarray]


def numeric_columns(objects: Sequence[Any], names: tuple[str, ...]) -> np.ndarray:
    """Every object's attributes `names` as a (len(names), len(objects)) float64 array, in one C pass
    (shared/_batch.c): a number as `float(value)`, a time as `value.timestamp()`, the same doubles."""
    return np.frombuffer(_numeric_columns(objects, names)).reshape(len(names), len(objects))


def _holds(relation: Callable[[np.ndarray, np.ndarray], np.ndarray], left: str, right: str) -> ColumnRule:
    """`relation(struct.left, struct.right)` for every struct, on two time columns. Exact: below 2**32 s
    (`LATEST`) every microsecond is its own double, and a time outside the range fails already."""

    def rule(structs: Sequence[Any], columns: Columns) -> np.ndarray:
        return np.asarray(relation(columns[left], columns[right]))

    return rule


def _within_trip(structs: Sequence[Any], columns: Columns) -> np.ndarray:
    # RideProgress._within_trip's arithmetic, elementwise in float64: the same operations on the same
    # numbers, so the same verdict to the last bit (tests/unit/test_columnar_decode.py holds the edges).
    planned = columns["trip_distance_miles"]
    covered = columns["distance_covered_miles"]
    limit = np.maximum(planned * PROGRESS_DISTANCE_SLACK, planned + 0.1)
    return np.asarray(covered <= limit)


COLUMN_RULES: dict[str, ColumnRule] = {
    "_RideEvent._not_before_pickup": _holds(np.greater_equal, "event_time", "pickup_time"),
    "RideProgress._within_trip": _within_trip,
    "RideCompleted._dropoff_after_pickup": _holds(np.greater, "dropoff_time", "pickup_time"),
}


def column_rule(validator: Callable[..., Any]) -> ColumnRule:
    rule = COLUMN_RULES.get(validator.__qualname__)
    if rule is None:
        raise ContractDrift(f"model validator {validator.__qualname__}: no column rule")
    return rule


def _model_builder(kind: _EventKind) -> Callable[[Sequence[Any]], list[RideEventModel]]:
    """A function that turns `kind`'s Structs into its models, generated for its fields (as dataclasses
    generates __init__): one dict display in the model's field order per event (pydantic serialises in
    that order), times not in UTC converted as `_to_utc` does. ~1.8 µs an event, half the cost of a loop
    over the field names, a seventh of `model_construct`'s."""

    def value(name: str) -> str:
        if name in kind.times:  # msgspec gives "Z" and "+00:00" in UTC already
            return f"t if (t := s.{name}).tzinfo is UTC else t.astimezone(UTC)"
        return f"s.{name}"

    items = ", ".join([f'"event_type": {kind.tag!r}'] + [f'"{name}": {value(name)}' for name in kind.names])
    # What `model_construct` sets, without its per-field default handling (every field is there).
    source = f"""
def build(structs):
    models = []
    for s in structs:
        instance = new(model)
        setattr(instance, "__dict__", {{{items}}})
        setattr(instance, "__pydantic_fields_set__", set(fields_set))
        setattr(instance, "__pydantic_extra__", None)
        setattr(instance, "__pydantic_private__", None)
        models.append(instance)
    return models
"""
    namespace: dict[str, Any] = {
        "new": object.__new__,
        "setattr": object.__setattr__,
        "model": kind.model,
        "UTC": UTC,
        "fields_set": kind.all_names,
    }
    exec(source, namespace)  # noqa: S102  (the source is built above from the contract's field names)
    build: Callable[[Sequence[Any]], list[RideEventModel]] = namespace["build"]
    return build


def _pattern_body(pattern: str) -> str:
    """The contract's "^body$" without its anchors: matched with `fullmatch`, because Python's `$` also
    matches before a final "\\n" and the contract's rust-regex `$` does not."""
    if not (pattern.startswith("^") and pattern.endswith("$")) or pattern.endswith("\\$"):
        raise ContractDrift(f"pattern {pattern!r}: expected ^...$")
    return pattern[1:-1]


def _joined_pattern(pattern: str) -> re.Pattern[str]:
    """The pattern repeated over separator-joined values; refuses a body that could match the separator
    (two bad values could then pass as one good one)."""
    body = _pattern_body(pattern)
    if re.search(body, _ID_SEPARATOR):
        raise ContractDrift(f"pattern {pattern!r} matches the id separator")
    return re.compile(f"(?:(?:{body}){re.escape(_ID_SEPARATOR)})*(?:{body})")


KINDS: tuple[_EventKind, ...] = tuple(_EventKind(model) for model in EVENT_MODELS)
_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
    KINDS[0].struct | KINDS[1].struct | KINDS[2].struct
)
ALL_EVENT_TYPES: frozenset[str] = frozenset(kind.tag for kind in KINDS)
_KIND_CODES: dict[type, int] = {kind.struct: code for code, kind in enumerate(KINDS)}


@cache
def event_classes(event_types: frozenset[str]) -> frozenset[type]:
    """The classes `decode_batch` returns valid events of `event_types` as: their Structs (views) and their
    contract models (what pydantic decided, or views=False)."""
    return frozenset(cls for kind in KINDS if kind.tag in event_types for cls in (kind.struct, kind.model))


def _structs(payloads: Sequence[bytes | None]) -> list[Any]:
    """Each payload as a Struct, or None where msgspec refuses it or might read it otherwise than pydantic.
    (One `decode_lines` of the joined batch was no faster: checking that no payload holds a newline cost
    what it saved.)"""
    texts = [payload or b"" for payload in payloads]
    try:  # (a batch of good payloads in one pass; one bad payload sends the batch to the careful loop)
        structs = list(map(_DECODER.decode, texts))
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError, RecursionError):
        structs = [_struct(text) for text in texts]
    for row in doubtful_rows(texts):
        structs[row] = None
    return structs


def _struct(payload: bytes) -> Any:
    try:
        return _DECODER.decode(payload) if payload else None
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def decode_batch(
    payloads: Sequence[bytes | None], models_for: frozenset[str] = ALL_EVENT_TYPES, *, views: bool = False
) -> list[DecodedRecord]:
    """Each payload → what `decode_event` would return for it; valid events of a type not in `models_for`
    come back as their event_type only (no model is built for what the caller passes over).

    `views=True`: the valid events msgspec decoded come back as their Structs (`EventView`), not as models:
    what the scorers read, without the ~1.8 µs an event of building a model nobody needs. (Events pydantic
    decided are its models: both read alike.)"""
    if decoder_kind() == "pydantic":
        return [_oracle(payload, models_for) for payload in payloads]
    structs = _structs(payloads)
    # Views start out as the structs themselves: a batch of valid events needs no per-row placing at all.
    out: list[DecodedRecord | None] = list(structs) if views else [None] * len(payloads)
    # Each row's kind as a number (-1: no Struct), so each kind's rows are one numpy scan, not a Python loop.
    codes = np.fromiter(map(_KIND_CODES.get, map(type, structs), repeat(-1)), np.int8, count=len(structs))
    ask = codes < 0  # the rows pydantic decides
    for code, kind in enumerate(KINDS):
        rows = np.flatnonzero(codes == code)
        if not len(rows):
            continue
        group = list(map(structs.__getitem__, rows.tolist()))
        valid = kind.valid_rows(group)
        if not valid.all():
            ask[rows[~valid]] = True
            rows, group = rows[valid], list(compress(group, valid.tolist()))
        if kind.tag not in models_for:
            for row in rows.tolist():
                out[row] = kind.tag
        elif views:
            kind.views_of(group)
        else:
            for row, model in zip(rows.tolist(), kind.models_of(group)):
                out[row] = model
    for row in np.flatnonzero(ask).tolist():
        out[row] = _oracle(payloads[row], models_for)
    return out  # (every None was just replaced)


def _oracle(payload: bytes | None, models_for: frozenset[str]) -> DecodedRecord:
    decoded = decode_event(payload)
    if isinstance(decoded, Rejected) or decoded.event_type in models_for:
        return decoded
    return decoded.event_type
