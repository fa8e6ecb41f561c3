"""The served models' trees, walked by one compiled kernel: scikit-learn's answers, without its per-call cost.

A HistGradientBoostingRegressor predict costs ~2 ms before it looks at a row: its ColumnTransformer re-encodes
the categorical columns, then each tree starts its own OpenMP region. One ride's estimate went through three
such models, ~12 ms; a micro-batch paid it per model. `compile_model` flattens a fitted booster's trees into
arrays once, when the model is loaded, and `_raw_predict` (numba, compiled on first use and cached on disk)
walks them per row: ~40 µs for one ride, and 1.2-2.4x scikit-learn's speed on 1,000 rows
(results/scoring-costs.md).

The kernel is scikit-learn's own predictor, transcribed (sklearn/ensemble/_hist_gradient_boosting/
_predictor.pyx): the same comparisons (NaN and unknown categories take the node's missing-value side), the
same float64 sum in the same order (baseline, then tree 1, 2, ...), no fast-math. So its predictions are
scikit-learn's bit for bit, not approximately: tests/unit/test_compiled.py checks it on every model with
real rides and hypothesis-generated hostile rows, and a model version scores the same numbers in every
process whichever path it takes. (treelite/tl2cgen were measured first: their importer refuses
scikit-learn 1.9's boosters, sends unknown categories down the wrong side, differs by 1e-14, takes 10-80 s
of gcc per model and is slower than scikit-learn on 1,000 rows.)

What it cannot reproduce it leaves alone: `compile_model` returns any other model unchanged (another
estimator, a classifier, a non-identity link, NaN among the categories) and says why in the log.
`RIDESTREAM_PREDICTOR=scikit-learn` turns it off (benchmarks use it for their baseline).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline

from consumers.features import ZoneCategories
from shared.errors import ConfigError
from shared.models import LoadedModel
from shared.registry import load_serving_model

log = logging.getLogger(__name__)

PREDICTOR_ENV = "RIDESTREAM_PREDICTOR"
PREDICTORS: tuple[str, ...] = ("compiled", "scikit-learn")


@dataclass(frozen=True)
class TreeArrays:
    """Every tree of a booster, its nodes laid end to end; `roots[t]` is where tree t starts, and child
    indices stay relative to their tree's root (as scikit-learn stores them)."""

    feature: np.ndarray  # int64, the column a split reads (in the booster's own column order)
    threshold: np.ndarray  # float64, numerical splits go left when value <= threshold
    left: np.ndarray  # int64
    right: np.ndarray  # int64
    missing_left: np.ndarray  # bool, where NaN (and unknown categories) go
    is_leaf: np.ndarray  # bool
    is_categorical: np.ndarray  # bool
    bitset: np.ndarray  # int64, a categorical split's row in its tree's `left_categories`
    value: np.ndarray  # float64, a leaf's contribution
    roots: np.ndarray  # int64
    bitset_base: np.ndarray  # int64, where each tree's rows start in `left_categories`
    left_categories: np.ndarray  # uint32 (splits, 8): the categories a categorical split sends left
    known_categories: np.ndarray  # uint32 (categorical features, 8): the categories seen in training
    known_row: np.ndarray  # int64, feature → its row in `known_categories`
    baseline: float


@njit(cache=True, nogil=True)
def _raw_predict(X: np.ndarray, trees: tuple[Any, ...], out: np.ndarray) -> np.ndarray:
    (feature, threshold, left, right, missing_left, is_leaf, is_categorical, bitset, value, roots,
     bitset_base, left_categories, known_categories, known_row, baseline) = trees  # fmt: skip
    # Tree by tree over all rows, not row by row over all trees: one tree's nodes (a few KB) stay in the L1
    # cache for the whole batch, where a row's walk through all of them (~2 MB for cost) missed it at every
    # tree; 2x faster on 20,000 rows. Each row's sum still runs baseline, tree 1, tree 2, ...: the same order.
    n = X.shape[0]
    for i in range(n):
        out[i] = baseline
    for t in range(roots.shape[0]):
        root = roots[t]
        for i in range(n):
            node = root
            while not is_leaf[node]:
                x = X[i, feature[node]]
                if np.isnan(x):
                    go_left = missing_left[node]
                elif is_categorical[node]:
                    if x < 0:
                        go_left = missing_left[node]
                    else:
                        # scikit-learn casts the category to its binned dtype, uint8, the same way.
                        category = np.uint8(x)
                        word, bit = category >> 5, category & 31
                        if (left_categories[bitset_base[t] + bitset[node], word] >> bit) & 1:
                            go_left = True
                        elif (known_categories[known_row[feature[node]], word] >> bit) & 1:
                            go_left = False
                        else:
                            go_left = missing_left[node]
                else:
                    go_left = x <= threshold[node]
                node = root + (left[node] if go_left else right[node])
            out[i] += value[node]
    return out


def _unsupported(booster: HistGradientBoostingRegressor) -> str | None:
    if booster.n_trees_per_iteration_ != 1:
        return f"{booster.n_trees_per_iteration_} trees per iteration"
    if type(booster._loss.link).__name__ != "IdentityLink":
        return f"the {type(booster._loss.link).__name__} link"
    encoder = _category_encoder(booster)
    if encoder is not None and any(np.isnan(c.astype(np.float64)).any() for c in encoder.categories_):
        return "NaN among its categories"
    if (
        booster._preprocessor is None
        and booster.is_categorical_ is not None
        and booster.is_categorical_.any()
    ):
        return "categories without scikit-learn's encoder (scikit-learn < 1.4)"
    return None


def _category_encoder(booster: HistGradientBoostingRegressor) -> Any:
    """The OrdinalEncoder scikit-learn (>= 1.4) puts in front of categorical features, or None."""
    preprocessor = booster._preprocessor
    if preprocessor is None:
        return None
    named = {name: transformer for name, transformer, _columns in preprocessor.transformers_}
    return named.get("encoder")


def flatten_trees(booster: HistGradientBoostingRegressor) -> TreeArrays:
    trees = [predictors[0] for predictors in booster._predictors]
    nodes = np.concatenate([tree.nodes for tree in trees])
    sizes = np.array([len(tree.nodes) for tree in trees], dtype=np.int64)
    bitsets = [tree.raw_left_cat_bitsets for tree in trees]
    bitset_sizes = np.array([len(b) for b in bitsets], dtype=np.int64)
    known, known_row = booster._bin_mapper.make_known_categories_bitsets()
    return TreeArrays(
        feature=nodes["feature_idx"].astype(np.int64),
        threshold=nodes["num_threshold"].astype(np.float64),
        left=nodes["left"].astype(np.int64),
        right=nodes["right"].astype(np.int64),
        missing_left=nodes["missing_go_to_left"].astype(np.bool_),
        is_leaf=nodes["is_leaf"].astype(np.bool_),
        is_categorical=nodes["is_categorical"].astype(np.bool_),
        bitset=nodes["bitset_idx"].astype(np.int64),
        value=nodes["value"].astype(np.float64),
        roots=_starts(sizes),
        bitset_base=_starts(bitset_sizes),
        left_categories=_bitsets(np.concatenate(bitsets)),
        known_categories=_bitsets(known),
        known_row=known_row.astype(np.int64),
        baseline=float(np.asarray(booster._baseline_prediction).reshape(-1)[0]),
    )


def _bitsets(rows: np.ndarray) -> np.ndarray:
    # Numba needs a 2-D array even for a booster without categorical splits.
    return rows.astype(np.uint32) if len(rows) else np.zeros((1, 8), np.uint32)


def _starts(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)


class CompiledBooster:
    """A fitted pipeline ending in a HistGradientBoostingRegressor, predicting through `_raw_predict`."""

    def __init__(self, model: Pipeline | HistGradientBoostingRegressor) -> None:
        booster = model[-1] if isinstance(model, Pipeline) else model
        before = [step for _name, step in model.steps[:-1]] if isinstance(model, Pipeline) else []
        self.n_features_in: int = booster.n_features_in_
        self.trees = flatten_trees(booster)
        self._arrays = tuple(getattr(self.trees, name) for name in TreeArrays.__dataclass_fields__)
        categorical = np.zeros(booster.n_features_in_, dtype=bool)
        if booster.is_categorical_ is not None:
            categorical = np.asarray(booster.is_categorical_, dtype=bool)
        # scikit-learn's encoder puts the categorical columns first; the trees index that order.
        self.order = np.concatenate((np.flatnonzero(categorical), np.flatnonzero(~categorical)))
        encoder = _category_encoder(booster)
        categories = [np.asarray(c, dtype=np.float64) for c in encoder.categories_] if encoder else []
        encodings = dict(zip(np.flatnonzero(categorical).tolist(), categories))
        # The served pipelines' one step before the booster, ZoneCategories, and the encoder after it are
        # two table lookups in a row: folded into one table per zone column here, once. Any other steps are
        # run as they are (one by one: Pipeline.transform routes metadata first, ~50 µs a call).
        zones = before[0] if len(before) == 1 and isinstance(before[0], ZoneCategories) else None
        self.before = [] if zones is not None else before
        self.zone_tables: list[tuple[int, int, np.ndarray]] = []
        if zones is not None:
            for column, codes in zip(zones.columns, zones.codes_):
                table = ordinal_codes(codes, encodings.pop(column)) if column in encodings else codes
                self.zone_tables.append((self.position(column), column, table))
        self.encodings = [(self.position(column), known) for column, known in encodings.items()]
        # Numba loads (or compiles) the kernel on its first call, ~0.5 s: paid here, not by the first ride.
        _raw_predict(np.zeros((1, self.n_features_in)), self._arrays, np.empty(1))

    def position(self, column: int) -> int:
        return int(np.flatnonzero(self.order == column)[0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        for step in self.before:
            X = step.transform(X)
        rows = np.asarray(X, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.n_features_in:
            raise ValueError(f"expected rows of {self.n_features_in} features, got shape {rows.shape}")
        ordered = rows[:, self.order]  # (a fresh C-ordered copy)
        for position, column, table in self.zone_tables:
            # ZoneCategories' own indexing: cast, then clip to the table (np.clip itself costs ~8 µs a call).
            zone = np.minimum(np.maximum(rows[:, column].astype(np.int64), 0), len(table) - 1)
            ordered[:, position] = table[zone]
        for position, known in self.encodings:
            ordered[:, position] = ordinal_codes(ordered[:, position], known)
        out = np.empty(len(ordered), dtype=np.float64)
        return _raw_predict(ordered, self._arrays, out)


def ordinal_codes(values: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """What scikit-learn's OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=NaN) returns:
    each value's position among the (sorted) categories, NaN for a value it never saw."""
    if len(categories) == 0:
        return np.full(len(values), np.nan)
    position = np.minimum(np.searchsorted(categories, values), len(categories) - 1)
    return np.where(categories[position] == values, position.astype(np.float64), np.nan)


def predictor_kind() -> str:
    kind = os.environ.get(PREDICTOR_ENV, PREDICTORS[0])
    if kind not in PREDICTORS:
        raise ConfigError(f"{PREDICTOR_ENV}={kind!r}: expected one of {', '.join(PREDICTORS)}")
    return kind


def compile_model(model: Any, name: str = "model") -> Any:
    """The model as the services serve it: compiled when `_raw_predict` reproduces it, else unchanged."""
    if predictor_kind() != "compiled":
        return model
    booster = model[-1] if isinstance(model, Pipeline) else model
    if not isinstance(booster, HistGradientBoostingRegressor):
        log.info("%s: served by scikit-learn (%s is not compiled)", name, type(booster).__name__)
        return model
    reason = _unsupported(booster)
    if reason is not None:
        log.warning("%s: served by scikit-learn, the compiled predictor does not handle %s", name, reason)
        return model
    return CompiledBooster(model)


def load_compiled_model(
    models_dir: Path, model: str, features: Sequence[str], version: str | None = None
) -> LoadedModel:
    """`load_serving_model`, compiled: what every scorer scores with."""
    loaded = load_serving_model(models_dir, model, features, version)
    return dataclasses.replace(loaded, model=compile_model(loaded.model, f"{model} {loaded.version}"))
