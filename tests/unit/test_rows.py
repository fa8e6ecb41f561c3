"""The prediction encoder's C row builder (consumers/_rows.c): what it joins, and what it refuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers._rows import interleave

TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
NO_COMMA = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters=","), max_size=6)


def test_each_row_is_its_parts_around_its_values() -> None:
    rows = interleave((b"<", b"|", b">"), (["a", "bb"], [b"1", b"22"]))
    assert rows == [b"<a|1>", b"<bb|22>"]


def test_a_bytes_column_is_its_comma_separated_items() -> None:
    assert interleave((b"[", b":", b"]"), (["x", "y", "z"], b"1.5,,-2e-05")) == [
        b"[x:1.5]",
        b"[y:]",
        b"[z:-2e-05]",
    ]
    assert interleave((b"(", b")"), (b"",)) == [b"()"]  # an empty text is one empty item


@given(
    st.lists(st.tuples(TEXT, NO_COMMA, st.binary(max_size=6)), max_size=20),
    st.lists(st.binary(max_size=5), min_size=4, max_size=4),
)
def test_any_values_join_as_python_joins_them(rows: list[tuple[str, str, bytes]], parts: list[bytes]) -> None:
    columns = (
        [text for text, _, _ in rows],
        ",".join(item for _, item, _ in rows).encode() if rows else [],
        [data for _, _, data in rows],
    )
    expected = [
        parts[0] + text.encode() + parts[1] + item.encode() + parts[2] + data + parts[3]
        for text, item, data in rows
    ]
    assert interleave(tuple(parts), columns) == expected


def test_columns_of_different_lengths_are_refused_naming_the_column() -> None:
    with pytest.raises(ValueError, match=r"columns\[1\]: 1 rows, columns\[0\] has 2"):
        interleave((b"", b"", b""), (["a", "b"], ["c"]))
    with pytest.raises(ValueError, match=r"columns\[1\]: 3 rows"):
        interleave((b"", b"", b""), (["a", "b"], b"1,2,3"))


def test_parts_and_items_of_the_wrong_kind_are_refused() -> None:
    with pytest.raises(ValueError, match="2 columns need 3 parts, got 2"):
        interleave((b"", b""), (["a"], ["b"]))
    with pytest.raises(TypeError, match=r"parts\[0\]: expected bytes, got str"):
        interleave(("<", b">"), (["a"],))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected str or bytes, got int"):
        interleave((b"<", b">"), ([1],))  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"columns\[0\]: expected a list or bytes, got tuple"):
        interleave((b"<", b">"), (("a",),))  # type: ignore[arg-type]
