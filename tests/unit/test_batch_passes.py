"""The columnar decoder's two C passes (shared/_batch.c) against what they stand for in Python:
`float(value)` / `datetime.timestamp()` per attribute, and the regex for a doubtful payload."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared._batch import doubtful_rows
from shared.columnar import numeric_columns

# What the decoder asked of every payload before the scan was C: a JSON escape, or a time whose seconds
# have a 7th fractional digit.
_SEVEN_DIGIT_SECONDS = re.compile(rb"\.\d{7}(?<=\d:\d\d\.\d{7})")


def _doubtful_by_regex(payload: bytes) -> bool:
    return b"\\" in payload or _SEVEN_DIGIT_SECONDS.search(payload) is not None


@dataclass
class Row:
    count: int
    distance: float
    at: datetime


class SlotRow(msgspec.Struct):
    """Read from its slots (the decoder's Structs): the C pass's other way of reading an attribute."""

    count: int
    distance: float
    at: datetime


class Slots:
    __slots__ = ("count",)


_OFFSETS = st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))])
_TIMES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_OFFSETS)


@given(st.lists(st.tuples(st.integers(-(2**40), 2**40), st.floats(allow_nan=False), _TIMES), max_size=50))
def test_numeric_columns_are_float_and_timestamp_of_every_attribute(
    values: list[tuple[int, float, datetime]],
) -> None:
    # Slots and instance dicts interleaved: every change of type looks its attributes up again.
    rows = [(SlotRow if position % 3 else Row)(*row) for position, row in enumerate(values)]
    columns = numeric_columns(rows, ("count", "distance", "at"))
    assert columns.shape == (3, len(rows)) and columns.dtype == np.float64
    assert columns[0].tolist() == [float(row.count) for row in rows]
    assert columns[1].tolist() == [row.distance for row in rows]
    # Bit for bit, the UTC ones computed in C and the others asked of the datetime.
    assert columns[2].tolist() == [row.at.timestamp() for row in rows]


def test_numeric_columns_name_what_they_cannot_read() -> None:
    with pytest.raises(AttributeError, match="missing"):
        numeric_columns([Row(1, 2.0, datetime.now(UTC))], ("missing",))
    with pytest.raises(TypeError):
        numeric_columns([Row("three", 2.0, datetime.now(UTC))], ("count",))  # type: ignore[arg-type]
    with pytest.raises(AttributeError, match="count"):
        numeric_columns([Slots()], ("count",))  # a slot never set
    assert numeric_columns([], ("count", "at")).shape == (2, 0)


_TEXT = st.binary(max_size=60).map(bytes) | st.lists(
    st.sampled_from([b"0", b"7", b":", b".", b"\\", b'"', b"a", b"12:34.", b"1234567"]), max_size=20
).map(b"".join)


@given(st.lists(_TEXT, max_size=30))
def test_doubtful_rows_are_the_rows_the_regex_finds(payloads: list[bytes]) -> None:
    assert doubtful_rows(payloads) == [row for row, text in enumerate(payloads) if _doubtful_by_regex(text)]


@pytest.mark.parametrize(
    ("payload", "doubtful"),
    [
        (b'{"t":"2024-01-01T00:00:00.1234567Z"}', True),
        (b'{"t":"2024-01-01T00:00:00.123456Z"}', False),
        (b'{"id":"r\\u0031"}', True),
        (b"1:23.4567890", True),  # at the very start
        (b"x1:23.456789", False),  # six digits at the very end
        (b"", False),
    ],
)
def test_doubtful_rows_edges(payload: bytes, doubtful: bool) -> None:
    assert doubtful_rows([payload]) == ([0] if doubtful else [])
    assert _doubtful_by_regex(payload) is doubtful


def test_doubtful_rows_refuse_what_is_not_bytes() -> None:
    with pytest.raises(TypeError, match=r"payloads\[1\]"):
        doubtful_rows([b"", "text"])  # type: ignore[list-item]


def _unused(_: Any) -> None: ...
