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

The arrays are laid out for the walk (`flatten_trees`): int32 indices, a leaf marked by feature -1 (no
is_leaf array), no left array (scikit-learn numbers its nodes depth first, so a split's left child is the
node after it: checked, and a booster where it is not is left to scikit-learn), and one 256-bit table per
categorical split that already says where every category goes (left, right, or the missing side when
training never saw it), where the walk used to test the split's own bitset and then the feature's known
categories. Against the previous layout (7 arrays a node, int64, two bitsets), in the same run, on the
four served models fit on TLC green 2021-01 and rows of 2021-02: the kernel 1.2x (duration) to 1.27x
(cost) faster on 2,000 and 20,000 rows, ~53 → ~43 ns per tree per row, and 1.5-1.6x on one row; a whole
`predict` of all four models 1.15-1.25x on 2,000 and 20,000 rows and 1.27x on one (two runs on a loaded
2-core machine; results/scoring-costs.md has the duration service's view). Measured and dropped,
each against the same previous kernel: branchless lanes, 8 rows stepping through a tree together
(0.6-0.8x: a tree's deepest leaf is 9-12 levels down, the average training ride's 4.5-6.4, and stepping
every lane to the deepest costs more than the mispredicted branches it saves); one 32-byte numpy record a
node (0.64x: numba's record access costs more than the extra arrays' loads); one 16-byte node read through
int and float views of a buffer (1.04-1.11x, below separate arrays' 1.3x); blocks of 1,024 rows walked
through all trees (0.9x of walking the whole batch tree by tree).

What it cannot reproduce it leaves alone: `compile_model` returns any other model unchanged (another
estimator, a classifier, a non-identity link, NaN among the categories, a tree not numbered depth first)
and says why in the log.
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
    indices are positions in these arrays. A split's left child is the node after it."""

    feature: np.ndarray  # int32, the column a split reads (in the booster's own column order); -1: a leaf
    threshold: np.ndarray  # float64, numerical splits go left when value <= threshold
    right: np.ndarray  # int32
    missing_left: np.ndarray  # bool, where NaN (and negative or unknown categories) go
    category_row: np.ndarray  # int32, a categorical split's row in `categories`; -1: a numerical split
    value: np.ndarray  # float64, a leaf's contribution
    roots: np.ndarray  # int32
    categories: np.ndarray  # uint32 (categorical splits, 8): bit c set when category c goes left
    baseline: float


@njit(cache=True, nogil=True)
def _raw_predict(X: np.ndarray, trees: tuple[Any, ...], out: np.ndarray) -> np.ndarray:
    feature, threshold, right, missing_left, category_row, value, roots, categories, baseline = trees
    # Tree by tree over all rows, not row by row over all trees: one tree's nodes (a few KB) stay in the L1
    # cache for the whole batch, where a row's walk through all of them (~1 MB for cost) missed it at every
    # tree; 2x faster on 20,000 rows. Each row's sum still runs baseline, tree 1, tree 2, ...: the same order.
    n = X.shape[0]
    for i in range(n):
        out[i] = baseline
    for t in range(roots.shape[0]):
        root = roots[t]
        for i in range(n):
            node = root
            column = feature[node]
            while column >= 0:
                x = X[i, column]
                if np.isnan(x):
                    go_left = missing_left[node]
                elif category_row[node] >= 0:
                    if x < 0:
                        go_left = missing_left[node]
                    else:
                        # scikit-learn casts the category to its binned dtype, uint8, the same way.
                        category = np.uint8(x)
                        word = categories[category_row[node], category >> 5]
                        go_left = ((word >> (category & 31)) & 1) != 0
                else:
                    go_left = x <= threshold[node]
                # Depth-first numbering (checked by flatten_trees): the left child is the next node.
                node = node + 1 if go_left else right[node]
                column = feature[node]
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
    if not all(_left_follows_parent(predictors[0].nodes) for predictors in booster._predictors):
        return "a tree whose left children do not follow their parents"
    return None


def _left_follows_parent(nodes: np.ndarray) -> bool:
    """Whether every split's left child is the node right after it (scikit-learn's depth-first order)."""
    splits = np.flatnonzero(nodes["is_leaf"] == 0)
    return bool(np.array_equal(nodes["left"][splits], splits + 1))


def _category_encoder(booster: HistGradientBoostingRegressor) -> Any:
    """The OrdinalEncoder scikit-learn (>= 1.4) puts in front of categorical features, or None."""
    preprocessor = booster._preprocessor
    if preprocessor is None:
        return None
    named = {name: transformer for name, transformer, _columns in preprocessor.transformers_}
    return named.get("encoder")


def flatten_trees(booster: HistGradientBoostingRegressor) -> TreeArrays:
    trees = [predictors[0] for predictors in booster._predictors]
    if not all(_left_follows_parent(tree.nodes) for tree in trees):
        raise ValueError("a tree whose left children do not follow their parents")
    nodes = np.concatenate([tree.nodes for tree in trees])
    sizes = np.array([len(tree.nodes) for tree in trees], dtype=np.int64)
    roots = _starts(sizes)
    leaf = nodes["is_leaf"] != 0
    categorical = np.flatnonzero((nodes["is_categorical"] != 0) & ~leaf)
    category_row = np.full(len(nodes), -1, dtype=np.int32)
    category_row[categorical] = np.arange(len(categorical))
    return TreeArrays(
        feature=np.where(leaf, -1, nodes["feature_idx"]).astype(np.int32),
        threshold=nodes["num_threshold"].astype(np.float64),
        right=(np.repeat(roots, sizes) + nodes["right"]).astype(np.int32),
        missing_left=nodes["missing_go_to_left"].astype(np.bool_),
        category_row=category_row,
        value=nodes["value"].astype(np.float64),
        roots=roots.astype(np.int32),
        categories=_categories_left(booster, trees, sizes, nodes, categorical),
        baseline=float(np.asarray(booster._baseline_prediction).reshape(-1)[0]),
    )


def _categories_left(
    booster: HistGradientBoostingRegressor,
    trees: Sequence[Any],
    sizes: np.ndarray,
    nodes: np.ndarray,
    categorical: np.ndarray,
) -> np.ndarray:
    """Per categorical split (rows in `categorical`'s order), the 256 bits of where each category goes:
    scikit-learn's three tests (in the split's left set → left; else seen in training → right; else the
    missing side) folded into one, so the walk reads one word where it read two bitsets."""
    if len(categorical) == 0:
        return np.zeros((1, 8), np.uint32)  # Numba needs a 2-D array even for a booster without them.
    bitsets = [tree.raw_left_cat_bitsets for tree in trees]
    bitset_base = _starts(np.array([len(b) for b in bitsets], dtype=np.int64))
    tree_of = np.repeat(np.arange(len(trees)), sizes)[categorical]
    left = np.concatenate(bitsets).astype(np.uint32)[bitset_base[tree_of] + nodes["bitset_idx"][categorical]]
    known, known_row = booster._bin_mapper.make_known_categories_bitsets()
    seen = known.astype(np.uint32)[known_row[nodes["feature_idx"][categorical]]]
    unseen_left = np.where(nodes["missing_go_to_left"][categorical, None] != 0, ~seen, np.uint32(0))
    return np.ascontiguousarray(left | unseen_left)


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
