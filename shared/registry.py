"""The model registry: MLflow, with aliases saying which version serves.

    <models_dir>/mlflow.db        the SQLite tracking and registry store (the embedded default)
    <models_dir>/artifacts/       the artifact store: each version's `<name>.joblib` + `<name>.json`
    <models_dir>/.serving/        versions downloaded for serving, checked like any artifact on load

`MLFLOW_TRACKING_URI` points every process at a shared MLflow server instead (then the registry and the
artifacts are the server's). Each `ridestream train` logs one MLflow run per model (parameters, validation
metrics, the training-data fingerprint and the artifact's passport as tags) and registers a new version of
the registered model of the same name. The alias `champion` is what users see; `challenger` is the one a
rollout tries. An empty registry's first versions become champions; later ones only when promoted.

A registered version holds the very files `shared.models` writes and checks, so loading keeps its refusals
(missing, corrupt, incompatible) and their messages. MLflow's own model flavours are not used: the sklearn
flavour's serialisation differs across MLflow releases, and the passport is what this code checks.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from shared.errors import ConfigError, ModelArtifactError
from shared.models import ArtifactMetadata, LoadedModel, artifact_path, load_model, metadata_path

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)
EXPERIMENT = "ridestream"
DATABASE = "mlflow.db"
ARTIFACTS = "artifacts"
SERVING_CACHE = ".serving"
REFUSED_TAG = "ridestream.refused"
ALIASES_MOVED_TAG = "ridestream.aliases_moved_at"
# MLflow's own chatter (alembic migrations on a new store, the tracking URI it picked) is not the user's.
for _noisy in ("alembic", "mlflow"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


@dataclass(frozen=True)
class VersionInfo:
    """One registered version, as `ridestream models list` shows it."""

    model: str
    version: str
    aliases: tuple[str, ...]
    artifact_version: str  # the passport's content id (shared.models), also in every prediction
    metrics: dict[str, Any]
    trained_at: str
    run_id: str
    refused: str = ""  # why a service refused to serve it, when one did

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "aliases": list(self.aliases),
            "artifact_version": self.artifact_version,
            "metrics": self.metrics,
            "trained_at": self.trained_at,
            "run_id": self.run_id,
            "refused": self.refused,
        }


def tracking_uri(models_dir: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else the embedded SQLite store inside `models_dir`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(models_dir).resolve() / DATABASE}"


def registry_present(models_dir: Path) -> bool:
    """A registry to serve from: a shared server is configured, or `models_dir` holds the embedded one."""
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) or (Path(models_dir) / DATABASE).is_file()


def parse_reference(reference: str) -> tuple[str, str | None, str | None]:
    """`MODEL`, `MODEL@ALIAS` or `MODEL/VERSION` → (model, alias, version); a bare model means champion."""
    if "@" in reference:
        model, alias = reference.split("@", 1)
        return model, alias, None
    if "/" in reference:
        model, version = reference.split("/", 1)
        return model, None, version
    return reference, CHAMPION, None


@functools.cache
def _client(uri: str) -> Any:
    # One client per store and process: each new one checks the SQLite store's schema migrations, ~1.8 s,
    # and a scoring process used to build five (one per model loaded, one for the aliases).
    from mlflow.tracking import MlflowClient  # heavy: only processes that use the registry pay for it

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


class ModelRegistry:
    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.uri = tracking_uri(self.models_dir)
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            self.models_dir.mkdir(parents=True, exist_ok=True)
        self.client = _client(self.uri)

    # -- writing ---------------------------------------------------------------------------------------

    def experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return str(found.experiment_id)
        location = (
            None
            if os.environ.get("MLFLOW_TRACKING_URI")
            else (self.models_dir / ARTIFACTS).resolve().as_uri()
        )
        return str(self.client.create_experiment(EXPERIMENT, artifact_location=location))

    def register(self, staged_dir: Path, metadata: ArtifactMetadata, promote: bool = False) -> str:
        """Log `staged_dir` (the artifact and its passport) as a run and register it as a new version of
        `metadata.name`. It becomes champion when promoted or when the model has none yet. Returns the
        registered version number."""
        name = metadata.name
        run = self.client.create_run(
            self.experiment_id(),
            run_name=f"{name}-{metadata.version}",
            tags={
                "ridestream.model": name,
                "ridestream.artifact_version": metadata.version,
                "ridestream.sklearn_version": metadata.sklearn_version,
                "ridestream.features": json.dumps(metadata.features),
                "ridestream.artifact_sha256": metadata.artifact_sha256,
                "ridestream.training_data_sha256": str(metadata.training_data.get("sha256", "")),
                "ridestream.trained_at": metadata.trained_at,
            },
        )
        run_id = run.info.run_id
        for param, text in flat_params(metadata.params).items():
            self.client.log_param(run_id, param, text)
        for metric, number in flat_metrics(metadata.metrics).items():
            self.client.log_metric(run_id, metric, number)
        self.client.log_artifacts(run_id, str(staged_dir), artifact_path="model")
        self.client.set_terminated(run_id)
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name)
        created = self.client.create_model_version(
            name,
            source=f"runs:/{run_id}/model",
            run_id=run_id,
            tags={
                "ridestream.artifact_version": metadata.version,
                "ridestream.trained_at": metadata.trained_at,
            },
        )
        version = str(created.version)
        if promote or self.alias_version(name, CHAMPION) is None:
            self.set_alias(name, CHAMPION, version)
        return version

    def mark_refused(self, model: str, version: str, reason: str) -> None:
        """Record on the version that a service refused it (shown by `ridestream models list`)."""
        self.client.set_model_version_tag(model, version, REFUSED_TAG, reason[:4000])

    def set_alias(self, model: str, alias: str, version: str) -> None:
        if alias not in ALIASES:
            raise ConfigError(f"alias {alias!r} is not one of {', '.join(ALIASES)}")
        self.version_of(model, None, version)  # a clear error for an unknown model or version
        self.client.set_registered_model_alias(model, alias, version)
        stamp = datetime.now(UTC).isoformat()
        self.client.set_registered_model_tag(model, ALIASES_MOVED_TAG, stamp)

    def aliases_moved_at(self, model: str) -> datetime | None:
        """When an alias of `model` was last moved through ridestream (None if never or unknown)."""
        from mlflow.exceptions import MlflowException

        try:
            stamp = (self.client.get_registered_model(model).tags or {}).get(ALIASES_MOVED_TAG)
        except MlflowException:
            return None
        return datetime.fromisoformat(stamp) if stamp else None

    # -- reading ---------------------------------------------------------------------------------------

    def alias_version(self, model: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(model, alias).version)
        except MlflowException:
            return None

    def version_of(self, model: str, alias: str | None, version: str | None) -> Any:
        """The MLflow ModelVersion named by alias or number; ModelArtifactError when there is none."""
        from mlflow.exceptions import MlflowException

        try:
            if alias is not None:
                return self.client.get_model_version_by_alias(model, alias)
            return self.client.get_model_version(model, str(version))
        except MlflowException as exc:
            raise not_registered(
                model, alias, version, self.uri, self.models_dir, exc.message.splitlines()[0]
            ) from None

    def models(self) -> list[str]:
        return sorted(m.name for m in self.client.search_registered_models())

    def versions(self, models: Iterable[str] | None = None) -> list[VersionInfo]:
        infos = []
        for model in models or self.models():
            for found in self.client.search_model_versions(filter_string=f"name = '{model}'"):
                infos.append(self.describe(found))
        return sorted(infos, key=lambda v: (v.model, int(v.version)))

    def aliases(self, model: str) -> dict[str, str]:
        """alias → version of one registered model."""
        found = self.client.get_registered_model(model).aliases or {}
        return {alias: str(number) for alias, number in found.items()}

    def aliases_of(self, model: str, version: str) -> tuple[str, ...]:
        # The registered model holds the alias → version map (search results leave version aliases empty).
        aliases = self.client.get_registered_model(model).aliases or {}
        return tuple(sorted(alias for alias, number in aliases.items() if str(number) == version))

    def describe(self, found: Any) -> VersionInfo:
        run = self.client.get_run(found.run_id)
        return VersionInfo(
            model=found.name,
            version=str(found.version),
            aliases=self.aliases_of(found.name, str(found.version)),
            artifact_version=found.tags.get("ridestream.artifact_version", ""),
            metrics=dict(run.data.metrics),
            trained_at=found.tags.get("ridestream.trained_at", ""),
            run_id=found.run_id,
            refused=found.tags.get(REFUSED_TAG, ""),
        )

    def load(
        self, model: str, features: Sequence[str], alias: str | None = CHAMPION, version: str | None = None
    ) -> LoadedModel:
        """The registered version (by alias or number), downloaded and checked like any artifact."""
        return load_model(self.local_copy(model, alias, version), model, features)

    def local_copy(self, model: str, alias: str | None = CHAMPION, version: str | None = None) -> Path:
        """The folder of the registered version's files (by alias or number), downloaded once into the
        serving cache; its files are checked by whoever loads them."""
        found = self.version_of(model, alias, version)
        local = self.models_dir / SERVING_CACHE / model / str(found.version)
        if not complete(local, model):
            self.download(found.run_id, local, model)
        return local

    def download(self, run_id: str, target: Path, model: str | None = None) -> None:
        """The version's files into `target`, whole or not at all (see `install_copy`)."""
        install_copy(
            target, model, lambda staging: Path(self.client.download_artifacts(run_id, "model", str(staging)))
        )


def install_copy(target: Path, model: str | None, fetch: Callable[[Path], Path]) -> None:
    """A version's files into `target`, whole or not at all: `fetch` puts them in a staging folder (and
    returns where), which is renamed into place. Replicas sharing one cache may fetch the same version at
    once: whichever renames first wins, and a complete folder already there is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fetched = fetch(staging)
        if model is not None and complete(target, model):
            return
        shutil.rmtree(target, ignore_errors=True)
        try:
            fetched.rename(target)
        except OSError:
            if model is None or not complete(target, model):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def not_registered(
    model: str, alias: str | None, version: str | None, uri: str, models_dir: Path, detail: str
) -> ModelArtifactError:
    """The one refusal of a version the registry does not hold, whichever reader asked."""
    what = f"{model}@{alias}" if alias is not None else f"{model}/{version}"
    return ModelArtifactError(
        f"model {what} is not in the registry at {uri} ({detail}); train with "
        f"`ridestream train --models {models_dir}` or list versions with `ridestream models list`"
    )


def complete(folder: Path, model: str) -> bool:
    return metadata_path(folder, model).is_file() and artifact_path(folder, model).is_file()


def flat_params(params: dict[str, Any]) -> dict[str, str]:
    return {
        key: json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        for key, value in params.items()
    }


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numeric metrics as MLflow's flat names: {"validation": {"rmse": 1}} → validation_rmse."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        # MLflow allows alphanumerics and _ - . : / and space in names: "0%-25%" becomes "0pct-25pct".
        name = re.sub(r"[^\w\-.:/ ]", "_", f"{prefix}{key}".replace("%", "pct"))
        if isinstance(value, dict):
            flat.update(flat_metrics(value, f"{name}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


class EmbeddedStore:
    """What a scoring process reads from the embedded registry (the SQLite store in `models_dir`), through
    the standard library's sqlite3 instead of MLflow's client. The client's import alone is ~170 MB of RSS
    (pandas, pyarrow, scipy, SQLAlchemy...), more than half a service's budget, for the three questions a
    service asks: which version an alias names, when aliases were last moved, and where a version's files
    are. The queries name MLflow's own tables, opened read-only; tests/unit/test_registry_reader.py holds
    every answer to the client's on a real store. A store these queries do not fit (another schema, a
    workspace other than the default, artifacts that are not local files) is served by ModelRegistry, and
    so is the one write a service makes, tagging a version it refused (rare: MLflow is imported then)."""

    TABLES = {
        "registered_model_aliases": ("name", "alias", "version"),
        "registered_model_tags": ("name", "key", "value"),
        "model_versions": ("name", "version", "run_id", "source"),
        "runs": ("run_uuid", "artifact_uri"),
    }

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.database = self.models_dir / DATABASE
        self.uri = tracking_uri(self.models_dir)

    @classmethod
    def opened(cls, models_dir: Path) -> EmbeddedStore | None:
        """The reader of `models_dir`'s store, or None when its tables are not the ones it reads."""
        store = cls(models_dir)
        try:
            for table, columns in cls.TABLES.items():
                store.rows(f"SELECT {', '.join(columns)} FROM {table} LIMIT 0")
            if store.other_workspaces():
                return None
        except sqlite3.Error as exc:
            log.info("registry %s read through MLflow: %s", store.database, exc)
            return None
        return store

    def rows(self, query: str, *parameters: str) -> list[tuple[Any, ...]]:
        # Read-only, so a service never creates, migrates or locks the store for writing; the timeout
        # waits out a training or an alias move committing.
        location = f"{self.database.resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(location, uri=True, timeout=30.0)) as connection:
            return connection.execute(query, parameters).fetchall()

    def other_workspaces(self) -> bool:
        try:
            found = self.rows("SELECT 1 FROM registered_models WHERE workspace != 'default' LIMIT 1")
        except sqlite3.OperationalError:  # a store from before MLflow's workspaces
            return False
        return bool(found)

    def alias_version(self, model: str, alias: str) -> str | None:
        found = self.rows(
            "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?", model, alias
        )
        return str(found[0][0]) if found else None

    def aliases_moved_at(self, model: str) -> datetime | None:
        found = self.rows(
            "SELECT value FROM registered_model_tags WHERE name = ? AND key = ?", model, ALIASES_MOVED_TAG
        )
        return datetime.fromisoformat(found[0][0]) if found and found[0][0] else None

    def mark_refused(self, model: str, version: str, reason: str) -> None:
        ModelRegistry(self.models_dir).mark_refused(model, version, reason)

    def local_copy(self, model: str, alias: str | None = CHAMPION, version: str | None = None) -> Path:
        """As ModelRegistry.local_copy: the version's files, copied once into the serving cache."""
        number = self.alias_version(model, alias) if alias is not None else version
        found = self.rows(
            "SELECT run_id, source FROM model_versions WHERE name = ? AND version = ?", model, str(number)
        )
        if number is None or not found:
            raise not_registered(
                model, alias, version, self.uri, self.models_dir, "no such registered version"
            )
        local = self.models_dir / SERVING_CACHE / model / str(number)
        if complete(local, model):
            return local
        files = self.artifact_folder(*found[0])
        if files is None:
            return ModelRegistry(self.models_dir).local_copy(model, alias, version)
        install_copy(local, model, lambda staging: Path(shutil.copytree(files, staging / "model")))
        return local

    def artifact_folder(self, run_id: str, source: str) -> Path | None:
        """The local folder of a version registered from `runs:/<run>/model` (how `register` logs every
        version), or None for anything else."""
        if source != f"runs:/{run_id}/model":
            return None
        found = self.rows("SELECT artifact_uri FROM runs WHERE run_uuid = ?", run_id)
        if not found or not str(found[0][0]).startswith("file:"):
            return None
        folder = Path(url2pathname(unquote(urlparse(found[0][0]).path))) / "model"
        return folder if folder.is_dir() else None


def serving_registry(models_dir: Path) -> EmbeddedStore | ModelRegistry:
    """What a service reads its registry through: the lean reader of the embedded store when it fits,
    else MLflow's client (a tracking server, or a store the reader does not know)."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        store = EmbeddedStore.opened(models_dir)
        if store is not None:
            return store
    return ModelRegistry(models_dir)


def serving_folder(models_dir: Path, model: str, version: str | None = None) -> Path:
    """Where a service's model files are: the registry's `version` (its champion when None), downloaded,
    when `models_dir` has a registry (or a server is configured), else `models_dir` itself (a directory
    from before the registry, which has no versions to choose from)."""
    if registry_present(models_dir):
        registry = serving_registry(models_dir)
        if version is not None:
            return registry.local_copy(model, alias=None, version=version)
        return registry.local_copy(model)
    log.info("no registry in %s: serving the plain artifact files", models_dir)
    return Path(models_dir)


def load_serving_model(
    models_dir: Path, model: str, features: Sequence[str], version: str | None = None
) -> LoadedModel:
    """What a service scores with, unpickled: the model files of `serving_folder`, checked."""
    return load_model(serving_folder(models_dir, model, version), model, features)
