"""Types of the columnar decoder's C passes (shared/_batch.c)."""

from collections.abc import Sequence
from typing import Any

def numeric_columns(objects: Sequence[Any], names: tuple[str, ...], /) -> bytearray:
    """len(names) rows of len(objects) float64 values: row j holds every object's attribute names[j], a
    number as float(value), a time as value.timestamp()."""

def doubtful_rows(payloads: Sequence[bytes], /) -> list[int]:
    """The rows whose payload holds a backslash or a time with a 7th fractional digit."""
