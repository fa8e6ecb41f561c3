"""Types of the C tree walk (consumers/_treewalk.c). It reads any buffer of the right dtype; numpy arrays are
what compiled.py passes (their stubs say Buffer only from Python 3.12)."""

import numpy as np

def walk(
    X: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    right: np.ndarray,
    missing_left: np.ndarray,
    category_row: np.ndarray,
    value: np.ndarray,
    roots: np.ndarray,
    categories: np.ndarray,
    baseline: float,
    out: np.ndarray,
    /,
) -> None: ...
