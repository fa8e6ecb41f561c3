"""How every model is fit and measured: `ridestream train` and `ridestream evaluate` call this module.

    model             target                                  rows it learns from
    duration          trip minutes, at pickup                 rides of 1..60 min (the zoomcamp filter)
    dynamic_duration  minutes left, at a ride_progress event  3 simulated progress snapshots per such ride
    tip               recorded tip, USD                       card rides, recent ones weighted up
    cost              total_amount, USD                       all rides
    baseline          trip minutes (MLOps-zoomcamp)           rides of 1..60 min

Every model but the baseline is a scikit-learn Pipeline: `ZoneCategories` → HistGradientBoostingRegressor
with the zones as categorical features, fed by the same pure feature functions the scorers call
(consumers/features.py).

Validation, then refit: each model is first fit on the earliest 80% of the rides by pickup time and
measured on the latest 20%; those metrics go into its metadata. It is then fit again, with the same
parameters (a fixed number of boosting rounds, no early stopping, so nothing depends on the split), on all
the rides, because the newest rides say most about the rides to be scored next.

Evaluation (`evaluate_models`) loads the artifacts through the same checks as the services, measures every
model on any trip frame, and puts the baseline next to them. Duration models are measured on rides of
1..60 minutes, the zoomcamp filter, so the numbers compare with the course's ~7.5 min baseline. (Fit on
a trip frame, the baseline itself does better than in the course, ~6.6 min on green 2021-02: the trip
reader has already dropped zero-distance and impossible-speed rows, which a linear model suffers most.)
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline

from consumers.compiled import export_kernel
from consumers.features import (
    BASELINE_FEATURES,
    PROGRESS_FEATURES,
    START_FEATURES,
    ZONE_COLUMNS,
    baseline_dicts,
    epoch_seconds,
    progress_columns_from_trips,
    progress_features,
    start_columns_from_trips,
    start_features,
)
from consumers.scoring import openmp_threads, tip_where_recorded
from consumers.zone_encoder import ZoneCategories
from schemas.ride_path import covered_distance
from shared.errors import ConfigError, DataSourceError
from shared.models import (
    MODEL_NAMES,
    ArtifactMetadata,
    artifact_path,
    artifacts_present,
    fingerprint_frame,
    metadata_path,
    save_model,
)
from shared.registry import CHAMPION, ModelRegistry, load_serving_model, registry_present

Progress = Callable[[str], None]

# The MLOps-zoomcamp duration filter. Training duration models on it too: beyond an hour green rides are
# mostly meters left running, and a squared-error fit would bend towards them.
ZOOMCAMP_MINUTES = (1.0, 60.0)
HOLDOUT_SHARE = 0.2
# A few points on each ride's simulated path teach the dynamic model as much as every minute of it would,
# at a fraction of the rows (training time is bounded: all models on one TLC month in well under 60 s).
PROGRESS_SAMPLES_PER_RIDE = 3
EVALUATION_SAMPLES_PER_RIDE = 4
TRAINING_SEED = 7
EVALUATION_SEED = 2021
# Which tips the meter records drifts within weeks: from 2021-01-19 on, most long (8+ mile) card rides
# record no tip at all, against 3% before. Weighting rides by recency, halving every week, lets the tip
# model follow such shifts instead of averaging them away.
TIP_HALF_LIFE_DAYS = 7.0
CARD_PAYMENT = 1
# Shares of the trip's true duration already driven, for the dynamic model's error by stage of the ride.
PROGRESS_BUCKETS: tuple[tuple[float, float], ...] = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
# Fewer rows than this and a "model" would be noise; say so instead of saving one.
MIN_TRAINING_ROWS = 50

BOOSTER_DEFAULTS: dict[str, Any] = {"early_stopping": False, "random_state": 0}
# Predict cost is ~0.9 ms per call plus ~7 µs per tree, paid on every micro-batch: 60 trees at learning
# rate 0.2 predict 60 rows in 1.5 ms instead of 300 trees at 0.1 in 3.2 ms, for RMSE 5.25 instead of 5.18 on
# green 2021-02 (results/steps/duration-params-sweep.md: 36 settings; 40 trees saved 0.1 ms more and came
# within 0.02 of the 5.3 line).
DURATION_PARAMS: dict[str, Any] = {
    "loss": "squared_error",
    "max_iter": 60,
    "learning_rate": 0.2,
    "max_leaf_nodes": 31,
}
# Progress events are ~90% of what the duration service scores, so this model's predict cost is the
# service's throughput: 60 rounds at 0.25 predict in 3.3 ms per 1,000 rows against 7.7 ms for 200 at 0.1,
# for an RMSE of 2.48 instead of 2.45 min (green 2021-01 → 2021-02).
DYNAMIC_PARAMS: dict[str, Any] = {
    "loss": "squared_error",
    "max_iter": 60,
    "learning_rate": 0.25,
    "max_leaf_nodes": 31,
}
# Absolute error: the served number should be the typical tip (a median), and card tips are a mix of
# "nothing" and ~20%, whose mean is neither. At least 50 rides per leaf: ~20k card rides a month, and the
# recency weights leave fewer of them really counting.
TIP_PARAMS: dict[str, Any] = {
    "loss": "absolute_error",
    "max_iter": 200,
    "learning_rate": 0.3,
    "max_leaf_nodes": 31,
    "min_samples_leaf": 50,
}
COST_PARAMS: dict[str, Any] = {
    "loss": "squared_error",
    "max_iter": 300,
    "learning_rate": 0.1,
    "max_leaf_nodes": 63,
}


@dataclass(frozen=True)
class FitData:
    """What one estimator is fit on: a feature matrix (or the baseline's dicts), targets, optional weights."""

    X: Any
    y: np.ndarray
    weight: np.ndarray | None = None


@dataclass(frozen=True)
class ProgressSamples:
    """Snapshots of rides in progress: snapshot i is trip-frame row `ride_rows[i]` at `elapsed_seconds[i]`."""

    ride_rows: np.ndarray
    elapsed_seconds: np.ndarray
    distance_covered_miles: np.ndarray
    remaining_minutes: np.ndarray
    share_elapsed: np.ndarray


@dataclass(frozen=True)
class Recipe:
    """One model: its features, how to build and fit it, and how to measure it on a trip frame."""

    name: str
    target: str
    features: tuple[str, ...]
    params: dict[str, Any]
    build: Callable[[], Any]
    fit_data: Callable[[pd.DataFrame], FitData]
    measure: Callable[[Any, pd.DataFrame], dict[str, Any]]
    notes: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ trip facts


def ride_seconds(trips: pd.DataFrame) -> np.ndarray:
    seconds: np.ndarray = (
        (trips["dropoff_time"] - trips["pickup_time"]).dt.total_seconds().to_numpy(dtype=np.float64)
    )
    return seconds


def ride_minutes(trips: pd.DataFrame) -> np.ndarray:
    return ride_seconds(trips) / 60.0


def zoomcamp_rides(trips: pd.DataFrame) -> pd.DataFrame:
    """Rides of 1 to 60 minutes, the MLOps-zoomcamp duration filter."""
    minutes = ride_minutes(trips)
    low, high = ZOOMCAMP_MINUTES
    return trips.loc[(minutes >= low) & (minutes <= high)].reset_index(drop=True)


def card_rides(trips: pd.DataFrame) -> pd.DataFrame:
    card: np.ndarray = trips["payment_type"].to_numpy() == CARD_PAYMENT
    return trips.loc[card].reset_index(drop=True)


def holdout_split(trips: pd.DataFrame, share: float = HOLDOUT_SHARE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(earliest 1 - share, latest share) of the rides by pickup time: validation looks forward,
    as serving does."""
    ordered = trips.sort_values("pickup_time", kind="stable").reset_index(drop=True)
    cut = round(len(ordered) * (1.0 - share))
    return ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True)


def recency_weights(pickup_epoch_s: np.ndarray, half_life_days: float) -> np.ndarray:
    """1 for the latest ride, halving every `half_life_days` before it."""
    if len(pickup_epoch_s) == 0:
        return np.ones(0)
    age_days = (pickup_epoch_s.max() - pickup_epoch_s) / 86_400.0
    weights: np.ndarray = np.power(0.5, age_days / half_life_days)
    return weights


def sample_progress(trips: pd.DataFrame, per_ride: int, seed: int) -> ProgressSamples:
    """`per_ride` progress snapshots of each ride, at random times before dropoff, on its simulated path.

    The path comes from schemas.ride_path, the function the producer replays, so the dynamic model trains
    and is measured on the same kind of progress it is served.
    """
    rng = np.random.default_rng(seed)
    duration_s = ride_seconds(trips)
    distance = trips["trip_distance_miles"].to_numpy(dtype=np.float64)
    shares = np.sort(rng.random((len(trips), per_ride)), axis=1)
    elapsed = shares * duration_s[:, None]
    covered = np.empty_like(elapsed)
    for row in range(len(trips)):
        covered[row] = covered_distance(elapsed[row], duration_s[row], distance[row], rng)
    return ProgressSamples(
        ride_rows=np.repeat(np.arange(len(trips)), per_ride),
        elapsed_seconds=elapsed.reshape(-1),
        distance_covered_miles=covered.reshape(-1),
        remaining_minutes=((duration_s[:, None] - elapsed) / 60.0).reshape(-1),
        share_elapsed=shares.reshape(-1),
    )


def progress_matrix(trips: pd.DataFrame, samples: ProgressSamples) -> np.ndarray:
    columns = progress_columns_from_trips(
        trips, samples.ride_rows, samples.elapsed_seconds, samples.distance_covered_miles
    )
    return progress_features(columns)


def start_matrix(trips: pd.DataFrame) -> np.ndarray:
    return start_features(start_columns_from_trips(trips))


def baseline_input(trips: pd.DataFrame) -> list[dict[str, Any]]:
    return baseline_dicts(
        trips["pickup_zone"].to_numpy(),
        trips["dropoff_zone"].to_numpy(),
        trips["trip_distance_miles"].to_numpy(),
    )


# ------------------------------------------------------------------------------------------ estimators


def booster(params: dict[str, Any]) -> Pipeline:
    return Pipeline(
        [
            ("zones", ZoneCategories()),
            (
                "booster",
                HistGradientBoostingRegressor(
                    categorical_features=list(ZONE_COLUMNS), **BOOSTER_DEFAULTS, **params
                ),
            ),
        ]
    )


def zoomcamp_baseline() -> Pipeline:
    return Pipeline([("dict_vectorizer", DictVectorizer()), ("linear_regression", LinearRegression())])


# ------------------------------------------------------------------------------------------- fit data


def duration_fit_data(trips: pd.DataFrame) -> FitData:
    rides = zoomcamp_rides(trips)
    return FitData(start_matrix(rides), ride_minutes(rides))


def dynamic_fit_data(trips: pd.DataFrame) -> FitData:
    rides = zoomcamp_rides(trips)
    samples = sample_progress(rides, PROGRESS_SAMPLES_PER_RIDE, TRAINING_SEED)
    return FitData(progress_matrix(rides, samples), samples.remaining_minutes)


def tip_fit_data(trips: pd.DataFrame) -> FitData:
    # Only card rides show what people tip: cash tips are never recorded, so a 0 there says nothing.
    rides = card_rides(trips)
    columns = start_columns_from_trips(rides)
    return FitData(
        start_features(columns),
        rides["tip_amount_usd"].to_numpy(dtype=np.float64),
        recency_weights(columns.pickup_epoch_s, TIP_HALF_LIFE_DAYS),
    )


def cost_fit_data(trips: pd.DataFrame) -> FitData:
    return FitData(start_matrix(trips), trips["total_amount_usd"].to_numpy(dtype=np.float64))


def baseline_fit_data(trips: pd.DataFrame) -> FitData:
    rides = zoomcamp_rides(trips)
    return FitData(baseline_input(rides), ride_minutes(rides))


# -------------------------------------------------------------------------------------------- metrics


def error_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    if len(actual) == 0:
        return {"rmse": float("nan"), "mae": float("nan"), "n": 0}
    error = np.asarray(predicted, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return {"rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error))), "n": len(error)}


def predict(model: Any, X: Any) -> np.ndarray:
    if len(X) == 0:
        return np.empty(0)
    return np.asarray(model.predict(X), dtype=np.float64)


def measure_duration(model: Any, trips: pd.DataFrame) -> dict[str, Any]:
    rides = zoomcamp_rides(trips)
    return {
        **error_metrics(ride_minutes(rides), predict(model, start_matrix(rides))),
        "rides": "1..60 min (zoomcamp)",
    }


def measure_dynamic(model: Any, trips: pd.DataFrame) -> dict[str, Any]:
    """Error of the predicted minutes left, overall and by share of the ride already driven.

    The error of the total (elapsed + predicted left) is the same number: elapsed is known exactly.
    """
    rides = zoomcamp_rides(trips)
    samples = sample_progress(rides, EVALUATION_SAMPLES_PER_RIDE, EVALUATION_SEED)
    left = np.maximum(predict(model, progress_matrix(rides, samples)), 0.0)
    by_progress = {}
    for low, high in PROGRESS_BUCKETS:
        inside = (samples.share_elapsed >= low) & (samples.share_elapsed < high)
        by_progress[f"{low:.0%}-{high:.0%}"] = error_metrics(samples.remaining_minutes[inside], left[inside])
    return {
        **error_metrics(samples.remaining_minutes, left),
        "by_progress": by_progress,
        "target": "minutes left (= error of elapsed + predicted left, the total)",
        "rides": (
            f"1..60 min (zoomcamp), {EVALUATION_SAMPLES_PER_RIDE} snapshots per ride, seed {EVALUATION_SEED}"
        ),
    }


def measure_tip(model: Any, trips: pd.DataFrame) -> dict[str, Any]:
    payment = trips["payment_type"].to_numpy()
    predicted = tip_where_recorded(predict(model, start_matrix(trips)), payment)
    actual = trips["tip_amount_usd"].to_numpy(dtype=np.float64)
    card = payment == CARD_PAYMENT
    on_card = error_metrics(actual[card], predicted[card])
    return {
        **error_metrics(actual, predicted),
        "card_mae": on_card["mae"],
        "card_rmse": on_card["rmse"],
        "card_rides": on_card["n"],
        "rides": "all; predicted 0 where tips are not recorded (cash, no charge, dispute, voided)",
    }


def measure_cost(model: Any, trips: pd.DataFrame) -> dict[str, Any]:
    predicted = np.maximum(predict(model, start_matrix(trips)), 0.0)
    return {**error_metrics(trips["total_amount_usd"].to_numpy(dtype=np.float64), predicted), "rides": "all"}


def measure_baseline(model: Any, trips: pd.DataFrame) -> dict[str, Any]:
    rides = zoomcamp_rides(trips)
    return {
        **error_metrics(ride_minutes(rides), predict(model, baseline_input(rides))),
        "rides": "1..60 min (zoomcamp)",
    }


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "duration",
        "trip minutes",
        START_FEATURES,
        DURATION_PARAMS,
        lambda: booster(DURATION_PARAMS),
        duration_fit_data,
        measure_duration,
        {"train_rides": "1..60 min"},
    ),
    Recipe(
        "dynamic_duration",
        "minutes left at a progress event",
        PROGRESS_FEATURES,
        DYNAMIC_PARAMS,
        lambda: booster(DYNAMIC_PARAMS),
        dynamic_fit_data,
        measure_dynamic,
        {
            "train_rides": "1..60 min",
            "progress_samples_per_ride": PROGRESS_SAMPLES_PER_RIDE,
            "progress_seed": TRAINING_SEED,
        },
    ),
    Recipe(
        "tip",
        "recorded tip, USD",
        START_FEATURES,
        TIP_PARAMS,
        lambda: booster(TIP_PARAMS),
        tip_fit_data,
        measure_tip,
        {"train_rides": "card", "recency_half_life_days": TIP_HALF_LIFE_DAYS},
    ),
    Recipe(
        "cost",
        "total_amount, USD",
        START_FEATURES,
        COST_PARAMS,
        lambda: booster(COST_PARAMS),
        cost_fit_data,
        measure_cost,
        {"train_rides": "all"},
    ),
    Recipe(
        "baseline",
        "trip minutes (MLOps-zoomcamp baseline)",
        BASELINE_FEATURES,
        {"estimator": "DictVectorizer + LinearRegression"},
        zoomcamp_baseline,
        baseline_fit_data,
        measure_baseline,
        {"train_rides": "1..60 min"},
    ),
)
assert tuple(r.name for r in RECIPES) == MODEL_NAMES


# ---------------------------------------------------------------------------------------------- public


def models_present(models_dir: Path) -> bool:
    """Every model has a champion in the registry (the embedded one in `models_dir`, or the server
    MLFLOW_TRACKING_URI names), or, without a registry, every artifact and its metadata is in `models_dir`.
    Whether they load is checked when loading."""
    if registry_present(models_dir):
        registry = ModelRegistry(models_dir)
        return all(registry.alias_version(name, CHAMPION) is not None for name in MODEL_NAMES)
    return artifacts_present(Path(models_dir), MODEL_NAMES)


def fit(recipe: Recipe, trips: pd.DataFrame) -> Any:
    data = recipe.fit_data(trips)
    if len(data.y) < MIN_TRAINING_ROWS:
        raise DataSourceError(
            f"too few rides to train {recipe.name!r}: {len(data.y)} usable rows, "
            f"at least {MIN_TRAINING_ROWS} needed ({recipe.notes.get('train_rides', 'all')} rides); "
            "give more or other trip data"
        )
    model = recipe.build()
    if data.weight is None:
        return model.fit(data.X, data.y)
    return model.fit(data.X, data.y, **{f"{model.steps[-1][0]}__sample_weight": data.weight})


def rounded(metrics: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    return {
        key: rounded(value, digits)
        if isinstance(value, dict)
        else round(value, digits)
        if isinstance(value, float)
        else value
        for key, value in metrics.items()
    }


def train_models(
    trips: pd.DataFrame,
    models_dir: Path,
    progress: Progress | None = None,
    promote: bool = False,
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fit, validate and save every model (duration, dynamic_duration, tip, cost, baseline), and register
    each as a new version in the registry at `models_dir` (shared/registry.py).

    The newest fit's files are also left in `models_dir` itself (what a directory without a registry
    serves); with a registry, what serves is each model's `champion`: the first version of an empty
    registry, later ones only with `promote`. Returns what was learnt as a JSON-able dict: per model its
    version, registry version, validation metrics (fit on the earliest 80% of rides, measured on the
    latest 20%) and fit seconds. `progress` gets one line per model. `only` names the models to fit (all
    by default).
    """
    recipes = RECIPES if only is None else tuple(r for r in RECIPES if r.name in set(only))
    unknown = set(only or ()) - {r.name for r in RECIPES}
    if unknown:
        raise ConfigError(f"unknown models {sorted(unknown)} (known: {', '.join(MODEL_NAMES)})")
    with openmp_threads():
        return train_all(trips, Path(models_dir), progress or (lambda _line: None), promote, recipes)


def register_trained(
    registry: ModelRegistry,
    models_dir: Path,
    metadata: ArtifactMetadata,
    promote: bool,
    kernel: Path | None = None,
) -> str:
    """Register the files just saved in `models_dir` (and the model's kernel file, when it has one) as a
    new version of their model."""
    name = metadata.name
    files = [artifact_path(models_dir, name), metadata_path(models_dir, name), *([kernel] if kernel else [])]
    with tempfile.TemporaryDirectory(prefix=f"ridestream-register-{name}-") as staging:
        for path in files:
            shutil.copy2(path, Path(staging) / path.name)
        return registry.register(Path(staging), metadata, promote=promote)


def train_all(
    trips: pd.DataFrame,
    models_dir: Path,
    report: Progress,
    promote: bool = False,
    recipes: Sequence[Recipe] = RECIPES,
) -> dict[str, Any]:
    registry = ModelRegistry(models_dir)
    started = time.monotonic()
    fit_part, holdout = holdout_split(trips)
    fingerprint = fingerprint_frame(trips)
    span = epoch_seconds(trips["pickup_time"]) if len(trips) else np.zeros(1)
    fingerprint["pickup_from"] = pd.Timestamp(span.min(), unit="s", tz="UTC").isoformat()
    fingerprint["pickup_to"] = pd.Timestamp(span.max(), unit="s", tz="UTC").isoformat()
    results: dict[str, Any] = {}
    for recipe in recipes:
        began = time.monotonic()
        validation = rounded(recipe.measure(fit(recipe, fit_part), holdout))
        model = fit(recipe, trips)
        params = {"target": recipe.target, **recipe.params, **recipe.notes}
        metadata = save_model(
            models_dir,
            recipe.name,
            model,
            features=recipe.features,
            training_data=fingerprint,
            metrics={"validation": validation},
            params=params,
        )
        kernel = export_kernel(models_dir, recipe.name, model, metadata)
        registered = register_trained(registry, models_dir, metadata, promote, kernel)
        seconds = round(time.monotonic() - began, 2)
        results[recipe.name] = {
            "version": metadata.version,
            "registry_version": registered,
            "seconds": seconds,
            "validation": validation,
        }
        report(
            f"fitted {recipe.name} in {seconds:.1f}s (validation rmse {validation['rmse']:.3f}, "
            f"mae {validation['mae']:.3f})"
        )
    return {
        "rides": len(trips),
        "validation": f"fit on the earliest {1 - HOLDOUT_SHARE:.0%} of rides by pickup time, measured on the "
        f"latest {HOLDOUT_SHARE:.0%} ({len(fit_part)} / {len(holdout)} rides); then refit on all",
        "seconds": round(time.monotonic() - started, 2),
        "models": results,
    }


def evaluate_models(trips: pd.DataFrame, models_dir: Path) -> dict[str, Any]:
    """RMSE and MAE of every saved model on `trips`, and of the zoomcamp baseline beside them."""
    measured: dict[str, Any] = {}
    for recipe in RECIPES:
        loaded = load_serving_model(Path(models_dir), recipe.name, recipe.features)
        with openmp_threads():
            measured[recipe.name] = {
                **rounded(recipe.measure(loaded.model, trips)),
                "version": loaded.version,
            }
    baseline = measured.pop("baseline")
    return {
        "rides": len(trips),
        "models": measured,
        "baseline": baseline,
        "notes": "duration, dynamic_duration and baseline are measured on rides of 1..60 min "
        "(the MLOps-zoomcamp filter); dynamic_duration's error is of the minutes left, "
        "which equals the error of the total",
    }
