"""The served models' trees, walked by one compiled kernel: scikit-learn's answers, without its per-call cost.

A HistGradientBoostingRegressor predict costs ~2 ms before it looks at a row: its ColumnTransformer re-encodes
the categorical columns, then each tree starts its own OpenMP region. One ride's estimate went through three
such models, ~12 ms; a micro-batch paid it per model. `compile_model` flattens a fitted booster's trees into
arrays once, when the model is loaded, and `_raw_predict` (a C extension, consumers/_treewalk.c, built at
install) walks them per row: ~40 µs for one ride, and 1.2-2.4x scikit-learn's speed on 1,000 rows
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
import zipfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from consumers import _treewalk
from shared.errors import ConfigError
from shared.models import ArtifactMetadata, LoadedModel, checked_artifact, unpickle_model, write_atomically
from shared.registry import serving_folder

if TYPE_CHECKING:  # scikit-learn is imported only where a pickled model is compiled
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

PREDICTOR_ENV = "RIDESTREAM_PREDICTOR"
PREDICT_THREADS_ENV = "RIDESTREAM_PREDICT_THREADS"
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


# Rows from which a predict walks its second half on a worker thread, beside the caller (below it, the
# hand-over costs more than it saves).
SPLIT_FROM_ROWS = 1024


def _raw_predict(X: np.ndarray, trees: tuple[Any, ...], out: np.ndarray) -> np.ndarray:
    """Every row's prediction into `out`: the walk is C (consumers/_treewalk.c), without the GIL, so with
    `RIDESTREAM_PREDICT_THREADS=2` (the default) a big batch's second half is walked on a worker thread while
    the caller walks the first: the two cores a service shares with its client's threads. Each row's sum is
    the same either way."""
    feature, threshold, right, missing_left, category_row, value, roots, categories, baseline = trees

    def walk(rows: slice) -> None:
        _treewalk.walk(
            X[rows], feature, threshold, right, missing_left, category_row, value, roots, categories,
            baseline, out[rows],
        )  # fmt: skip

    half = len(X) // 2
    if len(X) < SPLIT_FROM_ROWS or predict_threads() == 1:
        walk(slice(None))
        return out
    second = _walker().submit(walk, slice(half, None))
    walk(slice(0, half))
    second.result()
    return out


@cache
def _walker() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="treewalk")


@cache
def predict_threads() -> int:
    """`RIDESTREAM_PREDICT_THREADS`: 2 (default) walks big batches on two threads, 1 on the caller's only."""
    text = os.environ.get(PREDICT_THREADS_ENV, "2")
    if text not in ("1", "2"):
        raise ConfigError(f"{PREDICT_THREADS_ENV}={text!r}: expected 1 or 2")
    return int(text)


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
        return np.zeros((1, 8), np.uint32)  # The walk takes an (n, 8) table even for a booster without them.
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


@dataclass(frozen=True)
class KernelLayout:
    """Everything a compiled predict reads, all numpy: made from a fitted pipeline (`kernel_layout`, which
    needs scikit-learn) or read back from its kernel file (`read_kernel`, which does not)."""

    n_features_in: int
    trees: TreeArrays
    # scikit-learn's encoder puts the categorical columns first; the trees index that order.
    order: np.ndarray  # int64, the booster's column → position in the rows the kernel walks
    # (position, column, code table): a zone column's ZoneCategories codes, already ordinal-encoded.
    zone_tables: tuple[tuple[int, int, np.ndarray], ...]
    # (position, known categories): the other categorical columns, encoded by `ordinal_codes`.
    encodings: tuple[tuple[int, np.ndarray], ...]


def kernel_layout(model: Pipeline | HistGradientBoostingRegressor) -> tuple[KernelLayout, list[Any]]:
    """The layout of a fitted pipeline ending in a booster, and the steps before the booster that are left
    to run as they are (none for the served pipelines)."""
    from sklearn.pipeline import Pipeline

    from consumers.zone_encoder import ZoneCategories

    booster = model[-1] if isinstance(model, Pipeline) else model
    before = [step for _name, step in model.steps[:-1]] if isinstance(model, Pipeline) else []
    categorical = np.zeros(booster.n_features_in_, dtype=bool)
    if booster.is_categorical_ is not None:
        categorical = np.asarray(booster.is_categorical_, dtype=bool)
    order = np.concatenate((np.flatnonzero(categorical), np.flatnonzero(~categorical)))

    def position(column: int) -> int:
        return int(np.flatnonzero(order == column)[0])

    encoder = _category_encoder(booster)
    categories = [np.asarray(c, dtype=np.float64) for c in encoder.categories_] if encoder else []
    encodings = dict(zip(np.flatnonzero(categorical).tolist(), categories))
    # The served pipelines' one step before the booster, ZoneCategories, and the encoder after it are two
    # table lookups in a row: folded into one table per zone column here, once. Any other steps are run as
    # they are (one by one: Pipeline.transform routes metadata first, ~50 µs a call).
    zones = before[0] if len(before) == 1 and isinstance(before[0], ZoneCategories) else None
    zone_tables = []
    if zones is not None:
        for column, codes in zip(zones.columns, zones.codes_):
            table = ordinal_codes(codes, encodings.pop(column)) if column in encodings else codes
            zone_tables.append((position(column), column, np.asarray(table, dtype=np.float64)))
    layout = KernelLayout(
        n_features_in=int(booster.n_features_in_),
        trees=flatten_trees(booster),
        order=order.astype(np.int64),
        zone_tables=tuple(zone_tables),
        encodings=tuple((position(column), known) for column, known in encodings.items()),
    )
    return layout, [] if zones is not None else before


class CompiledBooster:
    """A fitted pipeline ending in a HistGradientBoostingRegressor, predicting through `_raw_predict`."""

    def __init__(self, layout: KernelLayout, before: Sequence[Any] = ()) -> None:
        self.layout = layout
        self._arrays = tuple(getattr(layout.trees, name) for name in TreeArrays.__dataclass_fields__)
        self.before = list(before)
        # One walk at load: the C kernel's checks of every array (dtype, lengths, roots) refuse a bad layout
        # here, not on the first ride.
        _raw_predict(np.zeros((1, self.n_features_in)), self._arrays, np.empty(1))

    @property
    def n_features_in(self) -> int:
        return self.layout.n_features_in

    @property
    def trees(self) -> TreeArrays:
        return self.layout.trees

    @classmethod
    def of(cls, model: Pipeline | HistGradientBoostingRegressor) -> CompiledBooster:
        layout, before = kernel_layout(model)
        return cls(layout, before)

    def predict(self, X: np.ndarray) -> np.ndarray:
        for step in self.before:
            X = step.transform(X)
        rows = np.asarray(X, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.n_features_in:
            raise ValueError(f"expected rows of {self.n_features_in} features, got shape {rows.shape}")
        layout = self.layout
        ordered = rows[:, layout.order]  # (a fresh copy, Fortran-ordered: the walk reads it by strides)
        for position, column, table in layout.zone_tables:
            # ZoneCategories' own indexing: cast, then clip to the table (np.clip itself costs ~8 µs a call).
            zone = np.minimum(np.maximum(rows[:, column].astype(np.int64), 0), len(table) - 1)
            ordered[:, position] = table[zone]
        for position, known in layout.encodings:
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
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline

    booster = model[-1] if isinstance(model, Pipeline) else model
    if not isinstance(booster, HistGradientBoostingRegressor):
        log.info("%s: served by scikit-learn (%s is not compiled)", name, type(booster).__name__)
        return model
    reason = _unsupported(booster)
    if reason is not None:
        log.warning("%s: served by scikit-learn, the compiled predictor does not handle %s", name, reason)
        return model
    return CompiledBooster.of(model)


# ------------------------------------------------------------------------------------------ kernel files
# A compiled model's layout is saved beside its artifact as `<name>.kernel.npz` (by training, or by the
# first process that compiles the pickle), so a service reads numpy arrays and never imports scikit-learn:
# ~80 MB less RSS. The file names the artifact it was made from (its sha256); a file of another artifact, of
# another format or that does not read back whole (zip CRCs) is ignored and the pickle compiled again.

KERNEL_SUFFIX = ".kernel.npz"
KERNEL_FORMAT = 1
_TREE_FIELDS = tuple(f for f in TreeArrays.__dataclass_fields__ if f != "baseline")
_TREE_DTYPES = {
    "feature": np.int32,
    "threshold": np.float64,
    "right": np.int32,
    "missing_left": np.bool_,
    "category_row": np.int32,
    "value": np.float64,
    "roots": np.int32,
    "categories": np.uint32,
}


def kernel_path(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}{KERNEL_SUFFIX}"


def kernel_arrays(layout: KernelLayout, artifact_sha256: str) -> dict[str, np.ndarray]:
    """The layout as named arrays (np.savez's shape of it; no pickled objects)."""
    arrays = {name: getattr(layout.trees, name) for name in _TREE_FIELDS}
    arrays |= {
        "format": np.array(KERNEL_FORMAT),
        "artifact_sha256": np.array(artifact_sha256),
        "baseline": np.array(layout.trees.baseline),
        "n_features_in": np.array(layout.n_features_in),
        "order": layout.order,
        "zone_positions": np.array([p for p, _c, _t in layout.zone_tables], dtype=np.int64),
        "zone_columns": np.array([c for _p, c, _t in layout.zone_tables], dtype=np.int64),
        "encoding_positions": np.array([p for p, _k in layout.encodings], dtype=np.int64),
    }
    arrays |= {f"zone_table_{i}": table for i, (_p, _c, table) in enumerate(layout.zone_tables)}
    arrays |= {f"encoding_{i}": known for i, (_p, known) in enumerate(layout.encodings)}
    return arrays


def layout_of_arrays(data: Mapping[str, np.ndarray]) -> KernelLayout:
    trees = TreeArrays(
        **{name: np.ascontiguousarray(data[name], dtype=_TREE_DTYPES[name]) for name in _TREE_FIELDS},
        baseline=float(data["baseline"]),
    )
    zones = zip(data["zone_positions"].tolist(), data["zone_columns"].tolist())
    return KernelLayout(
        n_features_in=int(data["n_features_in"]),
        trees=trees,
        order=np.asarray(data["order"], dtype=np.int64),
        zone_tables=tuple(
            (p, c, np.asarray(data[f"zone_table_{i}"], dtype=np.float64)) for i, (p, c) in enumerate(zones)
        ),
        encodings=tuple(
            (p, np.asarray(data[f"encoding_{i}"], dtype=np.float64))
            for i, p in enumerate(data["encoding_positions"].tolist())
        ),
    )


def layout_problem(layout: KernelLayout) -> str | None:
    """What makes a layout unsafe to walk (an index out of its array), or None. The kernel trusts the
    indices, so a file's are checked once, here."""
    t = layout.trees
    nodes = len(t.feature)
    if not all(len(a) == nodes for a in (t.threshold, t.right, t.missing_left, t.category_row, t.value)):
        return "node arrays of different lengths"
    if nodes == 0 or len(t.roots) == 0 or t.categories.ndim != 2 or t.categories.shape[1] != 8:
        return "no trees, or a category table not 256 bits wide"
    splits = np.flatnonzero(t.feature >= 0)
    checks = {
        "a root": bool(((t.roots >= 0) & (t.roots < nodes)).all()),
        "a split's column": bool((t.feature < layout.n_features_in).all()),
        "a split's children": bool(
            ((splits + 1 < nodes) & (t.right[splits] > splits) & (t.right[splits] < nodes)).all()
        ),
        "a category row": bool((t.category_row < len(t.categories)).all()),
        "the column order": bool(np.array_equal(np.sort(layout.order), np.arange(layout.n_features_in))),
        "a table's position": all(
            0 <= p < layout.n_features_in
            for p in [p for p, _c, _t in layout.zone_tables] + [p for p, _k in layout.encodings]
        ),
    }
    broken = [what for what, fine in checks.items() if not fine]
    return f"{broken[0]} out of range" if broken else None


def write_kernel(
    folder: Path, name: str, booster: CompiledBooster, metadata: ArtifactMetadata
) -> Path | None:
    """Save `booster`'s layout beside the artifact it was compiled from; None when it has steps that the
    file cannot hold (they run as scikit-learn objects)."""
    if booster.before:
        return None
    path = kernel_path(folder, name)
    # (Any: numpy's stub types the keyword arguments as its own `allow_pickle` flag)
    arrays: dict[str, Any] = kernel_arrays(booster.layout, metadata.artifact_sha256)

    def save(temporary: Path) -> None:
        with temporary.open("wb") as handle:  # (a path not ending in .npz would get one appended)
            np.savez(handle, **arrays)

    write_atomically(path, save)
    return path


def read_kernel(folder: Path, name: str, metadata: ArtifactMetadata) -> CompiledBooster | None:
    """The compiled model saved beside the checked artifact `metadata` describes, or None when there is no
    usable file (then the pickle is compiled)."""
    path = kernel_path(folder, name)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            made_from = str(data["artifact_sha256"])
            if int(data["format"]) != KERNEL_FORMAT or made_from != metadata.artifact_sha256:
                log.info("%s: made from another artifact or format; compiling the pickle", path)
                return None
            layout = layout_of_arrays(data)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        log.warning("%s is unreadable (%s); compiling the pickle instead", path, exc)
        return None
    problem = layout_problem(layout)
    if problem is not None:
        log.warning("%s is damaged (%s); compiling the pickle instead", path, problem)
        return None
    return CompiledBooster(layout)


def save_kernel(folder: Path, name: str, booster: CompiledBooster, metadata: ArtifactMetadata) -> None:
    """`write_kernel` where it is only a cache: a folder this process may not write is logged, not fatal."""
    try:
        write_kernel(folder, name, booster, metadata)
    except OSError as exc:
        log.warning("could not save %s's kernel file in %s (%s): compiled at each load", name, folder, exc)


def export_kernel(folder: Path, name: str, model: Any, metadata: ArtifactMetadata) -> Path | None:
    """At training: the kernel file of a just-saved model, when the compiled predictor serves it."""
    compiled = compile_model(model, name)
    return write_kernel(folder, name, compiled, metadata) if isinstance(compiled, CompiledBooster) else None


def load_compiled_model(
    models_dir: Path, model: str, features: Sequence[str], version: str | None = None
) -> LoadedModel:
    """What every scorer scores with: the checked artifact (shared.models) of `serving_folder`, served by
    its kernel file when it has a current one (scikit-learn is never imported then), else its pickle,
    compiled (and the kernel file saved for the next load) or, when the kernel does not reproduce it, as
    scikit-learn's."""
    folder = serving_folder(models_dir, model, version)
    metadata = checked_artifact(folder, model, features)
    if predictor_kind() == "compiled":
        booster = read_kernel(folder, model, metadata)
        if booster is not None:
            return LoadedModel(model=booster, metadata=metadata)
    loaded = unpickle_model(folder, model, metadata)
    served = compile_model(loaded.model, f"{model} {metadata.version}")
    if isinstance(served, CompiledBooster):
        save_kernel(folder, model, served, metadata)
    return dataclasses.replace(loaded, model=served)
