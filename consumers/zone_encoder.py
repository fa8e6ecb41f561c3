"""The one fitted step in front of the regressors: zone ids → the <= 255 categories that
HistGradientBoostingRegressor accepts. Training and the pickled pipelines use it; a service that serves
compiled kernels has its codes folded into the kernel file and never imports this (nor scikit-learn)."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from consumers.features import HIGHEST_ZONE_ID, ZONE_COLUMNS


class ZoneCategories(TransformerMixin, BaseEstimator):  # type: ignore[misc]  # untyped bases (no stubs)
    """Zone ids (1..265) → category codes HistGradientBoostingRegressor accepts (at most 255 per feature).

    Each zone column keeps its `max_categories - 1` most frequent zones as their own category; the rare
    and the never-seen share the last one. A month of green rides touches ~256 dropoff zones, one more
    than the booster allows, and the zones beyond the top 254 have a handful of rides each.
    """

    def __init__(self, columns: tuple[int, ...] = ZONE_COLUMNS, max_categories: int = 255) -> None:
        self.columns = columns
        self.max_categories = max_categories

    def fit(self, X: np.ndarray, y: Any = None) -> Self:
        other = self.max_categories - 1
        self.codes_: list[np.ndarray] = []
        for column in self.columns:
            zones = np.clip(X[:, column].astype(np.int64), 0, HIGHEST_ZONE_ID)
            counts = np.bincount(zones, minlength=HIGHEST_ZONE_ID + 1)
            by_frequency = np.argsort(-counts, kind="stable")
            kept = by_frequency[:other][counts[by_frequency[:other]] > 0]
            codes = np.full(HIGHEST_ZONE_ID + 1, float(other))
            codes[np.sort(kept)] = np.arange(len(kept), dtype=np.float64)
            self.codes_.append(codes)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        encoded = np.array(X, dtype=np.float64, copy=True)
        for column, codes in zip(self.columns, self.codes_):
            encoded[:, column] = codes[np.clip(encoded[:, column].astype(np.int64), 0, HIGHEST_ZONE_ID)]
        return encoded
