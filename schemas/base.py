"""Building blocks of the wire contract shared by events and predictions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class Contract(BaseModel):
    """Every message on the wire: immutable, and unknown fields are an error rather than silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# The years a ride can happen in. Beyond them a time is a broken clock, and it would break the features too
# (calendar and time-zone arithmetic overflows near year 1 and 9999: a poison pill for every consumer).
EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def _to_utc(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 pushed off the calendar by its offset: refused, not a crash
        raise ValueError(f"{value.isoformat()} is outside {EARLIEST.year}..{LATEST.year - 1}") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"{utc.isoformat()} is outside {EARLIEST.year}..{LATEST.year - 1}")
    return utc


# Timestamps must carry an offset ("2021-01-01T00:15:56Z"); naive local times are rejected, then normalised
# to UTC so every consumer compares like with like, and must fall in the years a ride can happen in.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]

# TLC taxi zones are numbered 1..265 (taxi_zone_lookup.csv); 264/265 are the "Unknown" zones.
ZoneId = Annotated[int, Field(ge=1, le=265, description="TLC taxi zone id (taxi_zone_lookup.csv)")]

# No metered NYC taxi ride is longer than this; beyond it the record is a meter error.
MAX_TRIP_MILES = 200.0
Miles = Annotated[float, Field(ge=0.0, le=MAX_TRIP_MILES, allow_inf_nan=False)]
Usd = Annotated[float, Field(ge=-1000.0, le=10_000.0, allow_inf_nan=False)]

Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]
