"""The compiled predictor against scikit-learn: the same float64 for every row, bit for bit, on every model.

Rows come from real TLC rides (when ../shared/data has them), from the synthetic generator, and from
hypothesis: NaN and infinities in any column, zones never seen in training, negative and huge values.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression

from consumers import _treewalk
from consumers.compiled import (
    PREDICT_THREADS_ENV,
    PREDICTOR_ENV,
    SPLIT_FROM_ROWS,
    CompiledBooster,
    TreeArrays,
    _raw_predict,
    compile_model,
    flatten_trees,
    ordinal_codes,
    predict_threads,
)
from consumers.cost.scorer import load_scorer as load_cost
from consumers.duration.scorer import load_scorer as load_duration
from consumers.features import start_columns_from_trips, start_features
from consumers.scoring import openmp_threads
from consumers.training import progress_matrix, sample_progress, train_models
from producer.synthetic import synthesize_trips
from producer.trips import read_trips
from shared.errors import ConfigError
from shared.models import MODEL_NAMES, artifact_path

TLC_MONTH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "green_tripdata_2021-02.parquet"
SERVED = tuple(name for name in MODEL_NAMES if name != "baseline")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("compiled-models")
    train_models(synthesize_trips(6000, seed=5).trips, directory)
    return directory


@pytest.fixture(scope="module")
def pipelines(models_dir: Path) -> dict[str, object]:
    return {name: joblib.load(artifact_path(models_dir, name)) for name in SERVED}


@pytest.fixture(scope="module")
def rows() -> dict[str, np.ndarray]:
    """Start and progress feature rows of real rides when the TLC month is there, else of synthetic ones."""
    trips = read_trips(TLC_MONTH).trips if TLC_MONTH.is_file() else synthesize_trips(20_000, seed=9).trips
    trips = trips.sample(n=min(len(trips), 20_000), random_state=4)
    progress = progress_matrix(trips, sample_progress(trips, per_ride=2, seed=3))
    return {"start": start_features(start_columns_from_trips(trips)), "progress": progress}


def sklearn_predict(model: object, X: np.ndarray) -> np.ndarray:
    with openmp_threads():
        return np.asarray(model.predict(X), dtype=np.float64)  # type: ignore[attr-defined]


def feature_rows(name: str, rows: dict[str, np.ndarray]) -> np.ndarray:
    return rows["progress"] if name == "dynamic_duration" else rows["start"]


@pytest.mark.parametrize("name", SERVED)
def test_every_served_model_predicts_scikit_learns_numbers_bit_for_bit(
    name: str, pipelines: dict[str, object], rows: dict[str, np.ndarray]
) -> None:
    X = feature_rows(name, rows)
    compiled = compile_model(pipelines[name])
    assert isinstance(compiled, CompiledBooster)
    expected = sklearn_predict(pipelines[name], X)
    assert np.array_equal(compiled.predict(X), expected)
    # Batch size never changes a row's number (the estimate service scores one ride, the stream hundreds).
    assert np.array_equal(np.concatenate([compiled.predict(X[i : i + 1]) for i in range(50)]), expected[:50])


@settings(max_examples=40, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("name", SERVED)
def test_hostile_rows_take_scikit_learns_path_too(
    name: str, data: st.DataObject, pipelines: dict[str, object], rows: dict[str, np.ndarray]
) -> None:
    width = feature_rows(name, rows).shape[1]
    values = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True, width=64),
        st.integers(-5, 400).map(float),  # zones on either side of 1..265
        st.sampled_from([0.0, -0.0, 0.5, 254.0, 255.0, 256.0]),
    )
    X = data.draw(arrays(np.float64, st.tuples(st.integers(1, 30), st.just(width)), elements=values))
    # The zone step (shared by both paths) casts zones to integers; scikit-learn warns on NaN there.
    X[:, :2] = np.nan_to_num(X[:, :2], nan=-1.0, posinf=999.0, neginf=-999.0)
    compiled = compile_model(pipelines[name])
    assert np.array_equal(compiled.predict(X), sklearn_predict(pipelines[name], X), equal_nan=True)


def test_a_booster_without_categorical_features_is_compiled_too() -> None:
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(500, 4)), rng.normal(size=500)
    X[::7, 2] = np.nan
    booster = HistGradientBoostingRegressor(max_iter=20).fit(X, y)
    compiled = compile_model(booster)
    assert isinstance(compiled, CompiledBooster)
    assert np.array_equal(compiled.predict(X), sklearn_predict(booster, X))


def test_categories_seen_unseen_negative_and_missing_take_scikit_learns_side() -> None:
    """The kernel folds each categorical split's three tests into one table: seen, unseen, negative and
    missing categories, on splits that send missing values left and splits that send them right."""
    rng = np.random.default_rng(3)
    X = np.column_stack((rng.integers(0, 40, 3000).astype(float), rng.normal(size=3000)))
    y = np.sin(X[:, 0] % 7) + X[:, 1]
    booster = HistGradientBoostingRegressor(categorical_features=[0], max_iter=30, max_leaf_nodes=63)
    booster.fit(X, y)
    compiled = compile_model(booster)
    assert isinstance(compiled, CompiledBooster)
    categorical = compiled.trees.category_row >= 0
    assert set(compiled.trees.missing_left[categorical].tolist()) == {False, True}
    rows = np.column_stack((np.arange(-3.0, 60.0), np.linspace(-3, 3, 63)))
    rows[::5, 0] = np.nan
    rows = np.concatenate((rows, X[:500]))
    assert np.array_equal(compiled.predict(rows), sklearn_predict(booster, rows))


def test_a_tree_whose_left_child_is_not_the_next_node_is_left_to_scikit_learn() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 3))
    booster = HistGradientBoostingRegressor(max_iter=3).fit(X, X[:, 0])
    moved = copy.deepcopy(booster)
    nodes = moved._predictors[0][0].nodes
    nodes["left"][0] = nodes["right"][0]  # the walk assumes left = parent + 1: this tree breaks it
    assert compile_model(moved) is moved
    with pytest.raises(ValueError, match="left children"):
        flatten_trees(moved)
    assert isinstance(compile_model(booster), CompiledBooster)


def test_models_it_cannot_reproduce_are_served_unchanged() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 3))
    linear = LinearRegression().fit(X, X[:, 0])
    poisson = HistGradientBoostingRegressor(loss="poisson", max_iter=5).fit(X, np.abs(X[:, 0]))
    assert compile_model(linear) is linear
    assert compile_model(poisson) is poisson


def test_a_row_of_the_wrong_width_is_refused_naming_the_shape(pipelines: dict[str, object]) -> None:
    compiled = compile_model(pipelines["tip"])
    with pytest.raises(ValueError, match="features"):
        compiled.predict(np.zeros((2, 3)))


def read_only(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.flags.writeable = False
    return array


@pytest.mark.parametrize(
    ("argument", "spoil", "message"),
    [
        (0, lambda X: X.astype(np.float32), "X: expected a 2-D float64"),
        (0, lambda X: X[:, 0], "X: expected a 2-D float64"),
        (0, lambda X: X.tolist(), "X: expected a strided float64 array, got list"),
        (1, lambda feature: feature.astype(np.int64), "feature: expected a 1-D int32"),
        (2, lambda threshold: threshold[:-1], "threshold: .* items, feature has"),
        (4, lambda missing_left: missing_left.astype(np.int8), "missing_left: expected a 1-D bool"),
        (7, lambda roots: roots + 10**6, "roots: tree 0 starts at node"),
        (8, lambda categories: categories[:, :4].copy(), "categories: rows of 4 words"),
        (8, lambda categories: categories[:, ::2], "categories: expected a C-contiguous uint32"),
        (10, lambda out: out[:2], "out: 2 items for 3 rows"),
        (10, read_only, "out: expected a writable C-contiguous float64"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_the_kernel_refuses_a_wrong_buffer_with_a_value_error(
    argument: int, spoil: Callable[[np.ndarray], object], message: str
) -> None:
    """The C walk checks what it cheaply can (dtype, dimensions, lengths, roots) instead of reading past a
    buffer: a wrong argument is a ValueError naming it, never a crash."""
    rng = np.random.default_rng(6)
    X = np.column_stack((rng.integers(0, 9, 400).astype(float), rng.normal(size=400)))
    booster = HistGradientBoostingRegressor(categorical_features=[0], max_iter=5).fit(X, X[:, 1])
    flat = flatten_trees(booster)
    trees = tuple(getattr(flat, name) for name in TreeArrays.__dataclass_fields__)
    rows = np.array([[0.0, -1.0], [3.0, 0.5], [np.nan, 2.0]])
    arguments: list[Any] = [rows, *trees, np.empty(3)]
    arguments[argument] = spoil(arguments[argument])
    with pytest.raises(ValueError, match=message):
        _treewalk.walk(*arguments)
    assert np.array_equal(_raw_predict(rows, trees, np.empty(3)), sklearn_predict(booster, rows))


def test_rows_in_any_layout_predict_the_same_numbers(
    pipelines: dict[str, object], rows: dict[str, np.ndarray]
) -> None:
    X = rows["start"][:500]
    compiled = compile_model(pipelines["cost"])
    expected = compiled.predict(np.ascontiguousarray(X))
    assert np.array_equal(compiled.predict(np.asfortranarray(X)), expected)
    assert np.array_equal(compiled.predict(X[::-1])[::-1], expected)


def test_two_threads_predicting_at_once_get_one_threads_numbers(
    pipelines: dict[str, object], rows: dict[str, np.ndarray]
) -> None:
    """The batch job predicts from two threads (the walk releases the GIL): neither disturbs the other."""
    X = rows["start"]
    compiled = compile_model(pipelines["cost"])
    halves = (X[: len(X) // 2], X[len(X) // 2 :])
    expected = [compiled.predict(half) for half in halves]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            got = list(pool.map(compiled.predict, halves))
            assert all(np.array_equal(g, e) for g, e in zip(got, expected))
            both = list(pool.map(compiled.predict, (X, X)))
            assert np.array_equal(both[0], both[1])
            assert np.array_equal(both[0], np.concatenate(expected))


def test_a_big_batch_walked_on_two_threads_gets_one_threads_numbers(
    pipelines: dict[str, object], rows: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    X = rows["progress"][:5_001]
    assert len(X) >= SPLIT_FROM_ROWS
    compiled = compile_model(pipelines["dynamic_duration"])
    predictions = {}
    try:
        for threads in ("1", "2"):
            monkeypatch.setenv(PREDICT_THREADS_ENV, threads)
            predict_threads.cache_clear()
            predictions[threads] = compiled.predict(X)
        assert np.array_equal(predictions["1"], predictions["2"])
        assert np.array_equal(predictions["2"], sklearn_predict(pipelines["dynamic_duration"], X))
        monkeypatch.setenv(PREDICT_THREADS_ENV, "4")
        predict_threads.cache_clear()
        with pytest.raises(ConfigError, match=f"{PREDICT_THREADS_ENV}='4': expected 1 or 2"):
            compiled.predict(X)
    finally:
        predict_threads.cache_clear()


def test_the_services_score_with_the_compiled_models(models_dir: Path) -> None:
    duration = load_duration(models_dir)
    assert isinstance(duration.start_model, CompiledBooster)
    assert isinstance(duration.progress_model, CompiledBooster)


def test_the_switch_turns_it_off_and_a_bad_value_is_named(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PREDICTOR_ENV, "scikit-learn")
    assert not isinstance(load_cost(models_dir).model, CompiledBooster)
    monkeypatch.setenv(PREDICTOR_ENV, "fast")
    with pytest.raises(ConfigError, match=f"{PREDICTOR_ENV}='fast'.*compiled, scikit-learn"):
        load_cost(models_dir)


def test_ordinal_codes_match_the_encoder_on_known_unknown_and_missing_values() -> None:
    categories = np.array([0.0, 2.0, 5.0])
    codes = ordinal_codes(np.array([0.0, 1.0, 2.0, 5.0, 6.0, np.nan, -1.0]), categories)
    assert np.array_equal(codes, [0.0, np.nan, 1.0, 2.0, np.nan, np.nan, np.nan], equal_nan=True)
