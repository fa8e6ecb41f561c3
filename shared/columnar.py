"""A micro-batch of ride events decoded by msgspec, checked by the column; pydantic asked only about doubts.

    payloads ──► msgspec Structs (types, bounds, lengths: in C) ──► per kind: ids (one regex), time range
             │                                                   (numpy), model validators ──► models
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
  own float), then the same conversion to UTC for the few times not already in UTC.
- the models' `model_validator`s (`_not_before_pickup`, `_within_trip`, `_dropoff_after_pickup`): called as
  they are, on the Structs (same attribute names): the very code pydantic runs, ~0.2 µs each an event.
- the id `pattern`: one `re.fullmatch` over the batch's ids joined by a separator the pattern cannot match.

Where msgspec and pydantic read the same text differently, the record goes to pydantic: a time with more
than 6 fractional digits (msgspec rounds, pydantic truncates); and, as a precaution with no difference
found, any JSON escape (`\\`). One scan of the joined batch finds both when a batch has none.

msgspec rather than a pydantic-core batch call: validating a whole batch as one `list[RideEvent]` JSON array
cost 11 µs an event against 15 µs one by one (its validators still run per event in Python), msgspec's
decode 1.5 µs (one run, side by side); and one bad record fails a whole array.

`RIDESTREAM_DECODER=pydantic` decodes every record with `decode_event` instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import compress
from operator import attrgetter
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
import msgspec
import numpy as np
from pydantic import AwareDatetime
from pydantic.fields import FieldInfo

from schemas.base import EARLIEST, LATEST, _to_utc
from schemas.events import RideCompleted, RideProgress, RideStarted
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

# msgspec rounds a 7th fractional digit of a time, pydantic truncates it; JSON escapes are read by two
# different parsers. A hit sends that record to pydantic (ids like "a1:23.4567890" only cost a slow path).
# (The lookbehind comes last so that re's fast scan for the literal "." leads; a leading class or an
# alternation made the scan ~2.5 µs an event.)
_SEVEN_DIGIT_SECONDS = re.compile(rb"\.\d{7}(?<=\d:\d\d\.\d{7})")
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
        self.validators: list[Callable[[Any], Any]] = [
            info.func for info in decorators.model_validators.values() if info.info.mode == "after"
        ]
        if len(self.validators) != len(decorators.model_validators):
            raise ContractDrift(f"{model.__name__}: only mode='after' model validators run on Structs")
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
        for name in self.times:
            times = list(map(attrgetter(name), structs))
            # (a batch's earliest and latest, in C; row by row only when one of them is out of range)
            if times and (min(times) < EARLIEST or max(times) >= LATEST):
                epoch = np.array([t.timestamp() for t in times], dtype=np.float64)
                ok &= (epoch >= EARLIEST.timestamp()) & (epoch < LATEST.timestamp())
        candidates = np.flatnonzero(ok)
        ok[candidates] = [self.passes_validators(structs[row]) for row in candidates.tolist()]
        return ok

    def passes_validators(self, struct: Any) -> bool:
        try:
            for validator in self.validators:
                validator(struct)
        except (ValueError, AssertionError):  # what pydantic turns into a validation error
            return False
        return True

    def views_of(self, structs: Sequence[Any]) -> list[EventView]:
        """`structs`, which passed `valid_rows`, as views: their times in UTC, as the model's would be."""
        for name in self.times:
            for struct in structs:
                # (msgspec gives "Z" and "+00:00" in UTC already: the few others are converted)
                if (time := getattr(struct, name)).tzinfo is not UTC:
                    setattr(struct, name, time.astimezone(UTC))
        return list(structs)

    def models_of(self, structs: Sequence[Any]) -> list[RideEventModel]:
        """The contract models of `structs`, which passed `valid_rows`: built, not validated again."""
        return self._build(structs)


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


def _doubtful(payload: bytes) -> bool:
    return b"\\" in payload or _SEVEN_DIGIT_SECONDS.search(payload) is not None


def _doubtful_rows(payloads: Sequence[bytes], joined: bytes) -> set[int]:
    """Rows whose text msgspec and pydantic might read differently; one scan of the batch when none are."""
    if not _doubtful(joined):
        return set()
    return {row for row, payload in enumerate(payloads) if _doubtful(payload)}


def _structs(payloads: Sequence[bytes | None]) -> list[Any]:
    """Each payload as a Struct, or None where msgspec refuses it or might read it otherwise than pydantic.
    (One `decode_lines` of the joined batch was no faster: checking that no payload holds a newline cost
    what it saved.)"""
    texts = [payload or b"" for payload in payloads]
    structs = [_struct(text) for text in texts]
    for row in _doubtful_rows(texts, b"\n".join(texts)):
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
    types = list(map(type, structs))
    for kind in KINDS:
        rows = [row for row, of in enumerate(types) if of is kind.struct]
        if not rows:
            continue
        group = [structs[row] for row in rows]
        valid = kind.valid_rows(group)
        if kind.tag not in models_for:
            for row, ok in zip(rows, valid.tolist()):
                out[row] = kind.tag if ok else None
            continue
        if not valid.all():
            for row in compress(rows, (~valid).tolist()):
                out[row] = None
            rows, group = list(compress(rows, valid.tolist())), list(compress(group, valid.tolist()))
        if views:
            kind.views_of(group)
        else:
            for row, model in zip(rows, kind.models_of(group)):
                out[row] = model
    for row in [row for row, decoded in enumerate(out) if decoded is None]:
        out[row] = _oracle(payloads[row], models_for)
    return out  # (every None was just replaced)


def _oracle(payload: bytes | None, models_for: frozenset[str]) -> DecodedRecord:
    decoded = decode_event(payload)
    if isinstance(decoded, Rejected) or decoded.event_type in models_for:
        return decoded
    return decoded.event_type
