"""The models: quality on real TLC data against the zoomcamp baseline, and the artifact contract on disk."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn
from sklearn.linear_model import LinearRegression

from consumers.features import PROGRESS_FEATURES, START_FEATURES, start_columns_from_trips, start_features
from consumers.training import evaluate_models, models_present, train_models
from producer.synthetic import synthesize_trips
from producer.trips import read_trips
from shared.errors import ModelArtifactError
from shared.models import MODEL_NAMES, artifact_path, file_sha256, load_model, metadata_path, save_model

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TRAIN_FILE = DATA_DIR / "green_tripdata_2021-01.parquet"
EVAL_FILE = DATA_DIR / "green_tripdata_2021-02.parquet"
needs_tlc = pytest.mark.skipif(
    not (TRAIN_FILE.is_file() and EVAL_FILE.is_file()),
    reason=f"real TLC data not found in {DATA_DIR} (green 2021-01 and 2021-02 parquet files)",
)

# The quality bar (train on green 2021-01, evaluate on 2021-02).
DURATION_RMSE_MAX = 5.5  # minutes, rides of 1..60 min; the zoomcamp baseline is ~7.5
TIP_CARD_MAE_MAX = 1.2  # USD, card rides
COST_RMSE_MAX = 4.7  # USD
# The target is 60 s on an idle 2-core machine; shared CI boxes run other jobs beside this one.
TRAINING_SECONDS_MAX = 90.0


@dataclass(frozen=True)
class Trained:
    models_dir: Path
    report: dict[str, Any]
    lines: list[str]
    seconds: float
    rides: int


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    if not (TRAIN_FILE.is_file() and EVAL_FILE.is_file()):
        pytest.skip(f"real TLC data not found in {DATA_DIR}")
    trips = read_trips(TRAIN_FILE).trips
    models_dir = tmp_path_factory.mktemp("tlc-models")
    lines: list[str] = []
    started = time.monotonic()
    report = train_models(trips, models_dir, progress=lines.append)
    return Trained(models_dir, report, lines, time.monotonic() - started, len(trips))


@pytest.fixture(scope="module")
def evaluation(trained: Trained) -> dict[str, Any]:
    return evaluate_models(read_trips(EVAL_FILE).trips, trained.models_dir)


@needs_tlc
def test_initial_duration_meets_the_bar_and_beats_the_zoomcamp_baseline_by_a_wide_margin(
    evaluation: dict[str, Any],
) -> None:
    duration, baseline = evaluation["models"]["duration"], evaluation["baseline"]
    assert duration["rmse"] <= DURATION_RMSE_MAX, duration
    assert duration["rmse"] < baseline["rmse"] - 1.0, (duration, baseline)
    assert duration["mae"] < baseline["mae"]
    assert "1..60" in duration["rides"] and "1..60" in baseline["rides"]  # measured on the zoomcamp filter


@needs_tlc
def test_tip_error_on_card_rides_meets_the_bar(evaluation: dict[str, Any]) -> None:
    tip = evaluation["models"]["tip"]
    assert tip["card_mae"] <= TIP_CARD_MAE_MAX, tip
    assert tip["card_rides"] > 10_000


@needs_tlc
def test_total_cost_meets_the_bar(evaluation: dict[str, Any]) -> None:
    assert evaluation["models"]["cost"]["rmse"] <= COST_RMSE_MAX, evaluation["models"]["cost"]


@needs_tlc
def test_dynamic_duration_error_falls_as_the_ride_progresses(evaluation: dict[str, Any]) -> None:
    dynamic = evaluation["models"]["dynamic_duration"]
    rmse = [bucket["rmse"] for bucket in dynamic["by_progress"].values()]
    assert list(dynamic["by_progress"]) == ["0%-25%", "25%-50%", "50%-75%", "75%-100%"]
    assert rmse == sorted(rmse, reverse=True), rmse
    assert rmse[-1] < 0.4 * rmse[0], rmse
    # Near the end of a ride, it knows far more than the initial estimate did.
    assert rmse[-1] < 0.25 * evaluation["models"]["duration"]["rmse"]


@needs_tlc
def test_every_model_has_the_top_level_metrics_the_cli_prints(evaluation: dict[str, Any]) -> None:
    assert set(evaluation["models"]) == {"duration", "dynamic_duration", "tip", "cost"}
    for values in [*evaluation["models"].values(), evaluation["baseline"]]:
        assert np.isfinite(values["rmse"]) and np.isfinite(values["mae"])
    json.dumps(evaluation)


@needs_tlc
def test_training_one_month_is_quick_and_reports_one_line_per_model(trained: Trained) -> None:
    assert trained.seconds < TRAINING_SECONDS_MAX, f"training took {trained.seconds:.1f}s"
    assert len(trained.lines) == len(MODEL_NAMES)
    assert [line.split()[1] for line in trained.lines] == list(MODEL_NAMES)
    json.dumps(trained.report)


@needs_tlc
def test_every_artifact_carries_its_metadata(trained: Trained) -> None:
    expected_features = {
        "duration": START_FEATURES,
        "tip": START_FEATURES,
        "cost": START_FEATURES,
        "dynamic_duration": PROGRESS_FEATURES,
        "baseline": ("PU_DO", "trip_distance"),
    }
    versions = set()
    for name in MODEL_NAMES:
        metadata = json.loads(metadata_path(trained.models_dir, name).read_text())
        assert metadata["name"] == name
        assert metadata["features"] == list(expected_features[name])
        assert metadata["sklearn_version"] == sklearn.__version__
        assert (
            metadata["training_data"]["rows"] == trained.rides
            and len(metadata["training_data"]["sha256"]) == 64
        )
        assert metadata["trained_at"] and "validation" in metadata["metrics"]
        assert metadata["artifact_sha256"] == file_sha256(artifact_path(trained.models_dir, name))
        assert metadata["version"] == trained.report["models"][name]["version"]
        versions.add(metadata["version"])
    assert len(versions) == len(MODEL_NAMES) and all(len(v) <= 16 for v in versions)
    assert models_present(trained.models_dir)


# ------------------------------------------------------------------ artifacts (no real data needed)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, LinearRegression, np.ndarray]:
    trips = synthesize_trips(300, seed=2).trips
    X = start_features(start_columns_from_trips(trips))
    model = LinearRegression().fit(X, trips["total_amount_usd"].to_numpy())
    save_model(
        tmp_path,
        "cost",
        model,
        features=START_FEATURES,
        training_data={"sha256": "0" * 64, "rows": 300},
        metrics={"validation": {"rmse": 1.0}},
        params={"estimator": "LinearRegression"},
    )
    return tmp_path, model, X


def edit_metadata(models_dir: Path, name: str, **changes: Any) -> None:
    path = metadata_path(models_dir, name)
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_saved_model_loads_back_and_predicts_the_same(
    saved: tuple[Path, LinearRegression, np.ndarray],
) -> None:
    models_dir, model, X = saved
    loaded = load_model(models_dir, "cost", START_FEATURES)
    np.testing.assert_array_equal(loaded.model.predict(X), model.predict(X))
    assert loaded.metadata.name == "cost" and loaded.version == loaded.metadata.version
    assert loaded.metadata.metrics == {"validation": {"rmse": 1.0}}


def test_each_save_gets_its_own_short_version(saved: tuple[Path, LinearRegression, np.ndarray]) -> None:
    models_dir, model, _ = saved
    first = load_model(models_dir, "cost", START_FEATURES).version
    later = datetime.now(UTC) + timedelta(minutes=1)  # same data and parameters, another fit
    save_model(
        models_dir,
        "cost",
        model,
        features=START_FEATURES,
        training_data={"sha256": "0" * 64, "rows": 300},
        metrics={},
        params={"estimator": "LinearRegression"},
        trained_at=later,
    )
    second = load_model(models_dir, "cost", START_FEATURES).version
    assert first != second and len(first) == len(second) == 12


def test_a_missing_artifact_is_refused_naming_the_file_and_the_fix(
    saved: tuple[Path, LinearRegression, np.ndarray],
) -> None:
    models_dir, _, _ = saved
    with pytest.raises(ModelArtifactError, match="missing") as error:
        load_model(models_dir, "tip", START_FEATURES)
    assert str(metadata_path(models_dir, "tip")) in str(error.value) and "ridestream train" in str(
        error.value
    )

    artifact_path(models_dir, "cost").unlink()
    with pytest.raises(ModelArtifactError, match="missing") as error:
        load_model(models_dir, "cost", START_FEATURES)
    assert str(artifact_path(models_dir, "cost")) in str(error.value)
    assert not models_present(models_dir)


def test_a_corrupt_artifact_is_refused(saved: tuple[Path, LinearRegression, np.ndarray]) -> None:
    models_dir, _, _ = saved
    path = artifact_path(models_dir, "cost")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelArtifactError, match="corrupt: sha256") as error:
        load_model(models_dir, "cost", START_FEATURES)
    assert str(path) in str(error.value) and "ridestream train" in str(error.value)


def test_an_artifact_that_does_not_unpickle_is_refused_even_with_a_matching_hash(
    saved: tuple[Path, LinearRegression, np.ndarray],
) -> None:
    models_dir, _, _ = saved
    path = artifact_path(models_dir, "cost")
    path.write_bytes(b"not a pickle at all")
    edit_metadata(models_dir, "cost", artifact_sha256=file_sha256(path))
    with pytest.raises(ModelArtifactError, match="does not unpickle"):
        load_model(models_dir, "cost", START_FEATURES)


def test_an_artifact_from_another_scikit_learn_minor_release_is_refused(
    saved: tuple[Path, LinearRegression, np.ndarray],
) -> None:
    models_dir, _, _ = saved
    edit_metadata(models_dir, "cost", sklearn_version="1.5.2")
    with pytest.raises(ModelArtifactError, match=r"incompatible: fit with scikit-learn 1\.5\.2") as error:
        load_model(models_dir, "cost", START_FEATURES)
    assert "ridestream train" in str(error.value)


def test_an_artifact_expecting_other_features_is_refused(
    saved: tuple[Path, LinearRegression, np.ndarray],
) -> None:
    models_dir, _, _ = saved
    with pytest.raises(ModelArtifactError, match="incompatible: it expects features"):
        load_model(models_dir, "cost", PROGRESS_FEATURES)


def test_unreadable_metadata_is_refused(saved: tuple[Path, LinearRegression, np.ndarray]) -> None:
    models_dir, _, _ = saved
    metadata_path(models_dir, "cost").write_text("{ truncated")
    with pytest.raises(ModelArtifactError, match="unreadable"):
        load_model(models_dir, "cost", START_FEATURES)
