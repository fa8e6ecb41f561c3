"""Kernel files: a compiled model saved beside its artifact, so a scoring process never imports scikit-learn.

Training writes `<name>.kernel.npz` beside each compiled model's pickle and registers it with the version;
loading reads it back (after the artifact's passport checks) and, when it is missing, of another artifact
or damaged, compiles the pickle instead and saves a fresh one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from consumers.compiled import (
    CompiledBooster,
    compile_model,
    kernel_arrays,
    kernel_path,
    layout_of_arrays,
    layout_problem,
    load_compiled_model,
    read_kernel,
)
from consumers.features import PROGRESS_FEATURES, START_FEATURES, start_columns_from_trips, start_features
from consumers.training import progress_matrix, sample_progress, train_models
from producer.synthetic import synthesize_trips
from shared.errors import ModelArtifactError
from shared.models import MODEL_NAMES, artifact_path, metadata_path, read_metadata
from shared.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[2]
SERVED = tuple(name for name in MODEL_NAMES if name != "baseline")


def features_of(name: str) -> tuple[str, ...]:
    return PROGRESS_FEATURES if name == "dynamic_duration" else START_FEATURES


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kernel-models")
    train_models(synthesize_trips(4000, seed=8).trips, directory)
    return directory


@pytest.fixture(scope="module")
def rows() -> dict[str, np.ndarray]:
    trips = synthesize_trips(3000, seed=21).trips
    return {
        "start": start_features(start_columns_from_trips(trips)),
        "progress": progress_matrix(trips, sample_progress(trips, per_ride=2, seed=4)),
    }


def plain_copy(models_dir: Path, target: Path, name: str) -> Path:
    """The model's files in a folder without a registry (what `serving_folder` then serves from)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in (
        artifact_path(models_dir, name),
        metadata_path(models_dir, name),
        kernel_path(models_dir, name),
    ):
        shutil.copy2(path, target / path.name)
    return target


@pytest.mark.parametrize("name", SERVED)
def test_a_model_read_back_from_its_kernel_file_predicts_the_pickles_bits(
    name: str, models_dir: Path, rows: dict[str, np.ndarray]
) -> None:
    X = rows["progress"] if name == "dynamic_duration" else rows["start"]
    from_file = read_kernel(models_dir, name, read_metadata(models_dir, name))
    assert isinstance(from_file, CompiledBooster)
    compiled = compile_model(joblib.load(artifact_path(models_dir, name)))
    assert np.array_equal(from_file.predict(X), compiled.predict(X))
    assert np.array_equal(from_file.predict(X[:1]), compiled.predict(X[:1]))


def test_training_registers_each_compiled_models_kernel_file_with_its_version(models_dir: Path) -> None:
    registry = ModelRegistry(models_dir)
    for name in SERVED:
        folder = registry.local_copy(name)
        assert kernel_path(folder, name).is_file()
        assert isinstance(load_compiled_model(models_dir, name, features_of(name)).model, CompiledBooster)
    # The baseline is a LinearRegression: nothing to compile, so no kernel file, served by scikit-learn.
    assert not kernel_path(registry.local_copy("baseline"), "baseline").exists()


def test_a_kernel_file_of_another_artifact_is_ignored_and_replaced(models_dir: Path, tmp_path: Path) -> None:
    folder = plain_copy(models_dir, tmp_path / "plain", "tip")
    shutil.copy2(kernel_path(models_dir, "cost"), kernel_path(folder, "tip"))  # another model's layout
    metadata = read_metadata(folder, "tip")
    assert read_kernel(folder, "tip", metadata) is None
    loaded = load_compiled_model(folder, "tip", START_FEATURES)
    assert isinstance(loaded.model, CompiledBooster)
    # ...and the next load reads the file this one saved, made from the tip artifact.
    with np.load(kernel_path(folder, "tip")) as data:
        assert str(data["artifact_sha256"]) == metadata.artifact_sha256
    assert isinstance(read_kernel(folder, "tip", metadata), CompiledBooster)


def test_a_truncated_kernel_file_is_ignored_and_the_pickle_compiled(models_dir: Path, tmp_path: Path) -> None:
    folder = plain_copy(models_dir, tmp_path / "plain", "cost")
    path = kernel_path(folder, "cost")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert read_kernel(folder, "cost", read_metadata(folder, "cost")) is None
    assert isinstance(load_compiled_model(folder, "cost", START_FEATURES).model, CompiledBooster)


def test_indices_out_of_range_are_refused_before_the_kernel_walks_them(models_dir: Path) -> None:
    with np.load(kernel_path(models_dir, "duration")) as data:
        arrays = dict(data)
    assert layout_problem(layout_of_arrays(arrays)) is None
    for field, index, value in (("right", 0, 10**6), ("feature", 0, 99), ("roots", 0, -1)):
        broken = {**arrays, field: arrays[field].copy()}
        broken[field][index] = value
        assert layout_problem(layout_of_arrays(broken)) is not None, field
    layout = layout_of_arrays(arrays)
    assert kernel_arrays(layout, "x")["order"].tolist() == arrays["order"].tolist()


def test_a_corrupt_pickle_is_refused_even_with_an_intact_kernel_file(
    models_dir: Path, tmp_path: Path
) -> None:
    folder = plain_copy(models_dir, tmp_path / "plain", "tip")
    artifact_path(folder, "tip").write_bytes(b"not a pickle")
    with pytest.raises(ModelArtifactError, match="corrupt"):
        load_compiled_model(folder, "tip", START_FEATURES)


def test_a_scoring_process_serving_kernel_files_imports_neither_scikit_learn_nor_numba(
    models_dir: Path,
) -> None:
    program = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from consumers.registry import SERVICES\n"
        f"scorers = [spec.load_scorer(Path({str(models_dir)!r})) for spec in SERVICES]\n"
        "heavy = ('sklearn', 'numba', 'joblib')\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
