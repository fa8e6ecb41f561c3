"""The model registry on a real MLflow store (SQLite inside the models folder): versions, aliases, what
serves, and the artifact checks kept through the registry. Also the `ridestream models` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumers.features import START_FEATURES
from consumers.training import train_models
from producer.synthetic import synthesize_trips
from shared.errors import ConfigError, ModelArtifactError
from shared.models import artifact_path
from shared.registry import CHAMPION, SERVING_CACHE, ModelRegistry, load_serving_model, parse_reference
from tests.integration.topics import ridestream

SERVED = ("duration", "dynamic_duration", "tip", "cost")


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry after two trainings on different rides: version 1 of each model, then version 2."""
    models = tmp_path_factory.mktemp("registry")
    train_models(synthesize_trips(1500, seed=21).trips, models)
    train_models(synthesize_trips(1500, seed=22).trips, models)
    return models


def test_a_new_registry_makes_the_first_versions_champions_and_later_trains_do_not_move_them(
    registry_dir: Path,
) -> None:
    registry = ModelRegistry(registry_dir)
    for model in SERVED:
        assert registry.alias_version(model, CHAMPION) == "1"
        assert [v.version for v in registry.versions([model])] == ["1", "2"]
    first, second = registry.versions(["tip"])
    assert first.artifact_version != second.artifact_version and first.metrics["validation_rmse"] > 0
    served = load_serving_model(registry_dir, "tip", START_FEATURES)
    assert served.version == first.artifact_version  # the champion, not the newest fit in the folder


def test_moving_the_champion_changes_what_a_service_loads(registry_dir: Path) -> None:
    registry = ModelRegistry(registry_dir)
    newest = registry.versions(["cost"])[-1]
    registry.set_alias("cost", CHAMPION, newest.version)
    try:
        assert load_serving_model(registry_dir, "cost", START_FEATURES).version == newest.artifact_version
    finally:
        registry.set_alias("cost", CHAMPION, "1")


def test_unknown_versions_and_aliases_are_clear_errors(registry_dir: Path) -> None:
    registry = ModelRegistry(registry_dir)
    with pytest.raises(ModelArtifactError, match=r"tip/9 is not in the registry"):
        registry.load("tip", START_FEATURES, alias=None, version="9")
    with pytest.raises(ConfigError, match="not one of champion, challenger"):
        registry.set_alias("tip", "gold", "1")
    assert parse_reference("tip") == ("tip", CHAMPION, None)
    assert parse_reference("tip@challenger") == ("tip", "challenger", None)
    assert parse_reference("tip/2") == ("tip", None, "2")


def test_a_damaged_registered_artifact_is_refused_with_the_same_message(registry_dir: Path) -> None:
    registry = ModelRegistry(registry_dir)
    registry.load("tip", START_FEATURES)  # downloads the champion for serving
    cached = artifact_path(registry_dir / SERVING_CACHE / "tip" / "1", "tip")
    original = cached.read_bytes()
    cached.write_bytes(original[: len(original) // 2])
    try:
        with pytest.raises(ModelArtifactError, match="tip.joblib is corrupt: sha256"):
            registry.load("tip", START_FEATURES)
    finally:
        cached.write_bytes(original)


def test_the_models_commands_list_show_and_move_aliases(registry_dir: Path) -> None:
    listed = ridestream("models", "list", "--json", "--models", str(registry_dir))
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {(r["model"], r["version"]) for r in rows} >= {(m, v) for m in SERVED for v in ("1", "2")}
    assert all(CHAMPION in r["aliases"] for r in rows if r["version"] == "1" and r["model"] in SERVED)

    moved = ridestream("models", "alias", "duration", "challenger", "2", "--models", str(registry_dir))
    assert moved.returncode == 0 and moved.stdout.strip() == "duration@challenger -> 2", moved.stderr
    shown = json.loads(
        ridestream("models", "show", "duration@challenger", "--models", str(registry_dir)).stdout
    )
    assert shown["version"] == "2" and "challenger" in shown["aliases"]

    missing = ridestream("models", "show", "duration/7", "--models", str(registry_dir))
    assert missing.returncode == 1 and "duration/7 is not in the registry" in missing.stderr
    empty = ridestream("models", "list", "--models", str(registry_dir / "nothing-here"))
    assert empty.returncode == 1 and "no model registry" in empty.stderr
