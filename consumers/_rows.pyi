"""Types of the prediction encoder's rows (consumers/_rows.c)."""

def interleave(
    parts: tuple[bytes, ...], columns: tuple[list[str] | list[bytes] | bytes, ...], /
) -> list[bytes]:
    """Row i is parts[0] + columns[0][i] + parts[1] + ... + parts[k]; a bytes column is comma-separated
    items (b"" is one empty item)."""
