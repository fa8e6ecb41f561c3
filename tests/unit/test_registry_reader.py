"""The services' lean reader of the embedded registry against MLflow's own client, on a real MLflow store:
every answer a service takes from it must be the client's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from consumers.training import train_models
from producer.synthetic import synthesize_trips
from shared.errors import ModelArtifactError
from shared.registry import (
    CHALLENGER,
    CHAMPION,
    EmbeddedStore,
    ModelRegistry,
    serving_folder,
    serving_registry,
)

REPO = Path(__file__).resolve().parents[2]
MODELS = ("duration", "dynamic_duration", "tip", "cost", "baseline")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two trainings (versions 1 and 2 of each model), then tip's challenger set to version 2."""
    models = tmp_path_factory.mktemp("reader")
    train_models(synthesize_trips(1200, seed=31).trips, models)
    train_models(synthesize_trips(1200, seed=32).trips, models)
    ModelRegistry(models).set_alias("tip", CHALLENGER, "2")
    return models


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_embedded_store_is_read_without_mlflow_and_answers_as_its_client(store: Path) -> None:
    reader, client = serving_registry(store), ModelRegistry(store)
    assert isinstance(reader, EmbeddedStore)
    for model in (*MODELS, "no-such-model"):
        for alias in (CHAMPION, CHALLENGER, "nobody"):
            assert reader.alias_version(model, alias) == client.alias_version(model, alias), (model, alias)
        assert reader.aliases_moved_at(model) == client.aliases_moved_at(model), model
    assert reader.alias_version("tip", CHALLENGER) == "2"


def test_a_versions_files_are_the_clients_download_byte_for_byte(store: Path, tmp_path: Path) -> None:
    reader = EmbeddedStore(store)
    client = ModelRegistry(store)
    for model, alias, version in (("tip", None, "2"), ("cost", CHAMPION, None), ("tip", CHALLENGER, None)):
        folder = reader.local_copy(model, alias, version)
        found = client.version_of(model, alias, version)
        downloaded = tmp_path / f"{model}-{found.version}"
        client.download(found.run_id, downloaded, model)
        assert folder.name == str(found.version)
        assert files_of(folder) == files_of(downloaded), (model, alias, version)
    # A second ask serves the copy already made, and so does a service's serving path.
    made = (folder / "tip.joblib").stat().st_mtime_ns
    assert serving_folder(store, "tip", "2") == reader.local_copy("tip", None, "2") == folder
    assert (folder / "tip.joblib").stat().st_mtime_ns == made


def test_unknown_versions_and_aliases_are_refused_naming_them(store: Path) -> None:
    reader = EmbeddedStore(store)
    with pytest.raises(ModelArtifactError, match=r"tip/9 is not in the registry"):
        reader.local_copy("tip", None, "9")
    with pytest.raises(ModelArtifactError, match=r"nothing@champion is not in the registry"):
        reader.local_copy("nothing", CHAMPION, None)


def test_a_store_of_unknown_tables_is_left_to_mlflows_client(tmp_path: Path) -> None:
    import sqlite3

    (tmp_path / "mlflow.db").touch()
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        connection.execute("CREATE TABLE model_versions (name TEXT)")
    assert EmbeddedStore.opened(tmp_path) is None


def test_a_scoring_process_reads_its_registry_without_importing_mlflow(store: Path) -> None:
    program = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from consumers.registry import SERVICES\n"
        "from shared.registry import serving_registry\n"
        f"models = Path({str(store)!r})\n"
        "registry = serving_registry(models)\n"
        "versions = [registry.alias_version(m, 'champion') for s in SERVICES for m in s.models]\n"
        "scorers = [s.load_scorer(models) for s in SERVICES]\n"
        "heavy = ('mlflow', 'sklearn', 'numba', 'pandas', 'sqlalchemy')\n"
        "print(json.dumps({'versions': versions, 'heavy': [m for m in heavy if m in sys.modules]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"versions": ["1", "1", "1", "1"], "heavy": []}
