"""Bytes ⇄ contract models at the Kafka boundary, and why a payload was refused when it was."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ValidationError

from schemas.events import RIDE_EVENT, RideCompleted, RideProgress, RideStarted

RideEventModel = RideStarted | RideProgress | RideCompleted

# Why a payload could not become an event: the dead-letter `reason` header, and a metrics label.
RejectReason = Literal[
    "undecodable",  # not UTF-8 JSON at all: garbage bytes, truncated JSON, an empty value
    "unknown_event_type",  # JSON without a known event_type discriminator
    "unsupported_schema_version",  # a schema_version this build does not speak
    "schema_violation",  # right shape, wrong types or out-of-range values
    "unscoreable",  # valid, but the model could not produce a finite prediction
    "oversized",  # larger than the service accepts
]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A payload that did not decode, with the reason and a message a person can act on."""

    reason: RejectReason
    detail: str


def encode(model: BaseModel) -> bytes:
    return model.__pydantic_serializer__.to_json(model)


def classify(error: ValidationError) -> RejectReason:
    """Map pydantic's error types onto the few reasons an operator needs to tell apart."""
    kinds = {(e["type"], e["loc"][-1] if e["loc"] else None) for e in error.errors()}
    types = {kind for kind, _ in kinds}
    if types & {"json_invalid", "json_type", "model_attributes_type", "dict_type"}:
        return "undecodable"
    if types & {"union_tag_invalid", "union_tag_not_found"}:
        return "unknown_event_type"
    if any(kind == "literal_error" and field == "schema_version" for kind, field in kinds):
        return "unsupported_schema_version"
    return "schema_violation"


def short_detail(error: ValidationError, limit: int = 500) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in error.errors()[:5]]
    return "; ".join(parts)[:limit]


def decode_event(payload: bytes | None) -> RideEventModel | Rejected:
    """One Kafka value → a validated ride event, or the reason it is not one. Never raises."""
    if not payload:
        return Rejected("undecodable", "empty message value")
    try:
        return RIDE_EVENT.validate_json(payload)
    except ValidationError as error:
        return Rejected(classify(error), short_detail(error))
    except (
        UnicodeDecodeError,
        ValueError,
        RecursionError,
    ) as error:  # defensive: pydantic wraps most of these
        return Rejected("undecodable", f"{type(error).__name__}: {error}"[:500])
