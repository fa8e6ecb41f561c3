"""Model artifacts on disk: `<models_dir>/<name>.joblib` and its metadata `<models_dir>/<name>.json`.

The metadata is the artifact's passport: name, version, the scikit-learn that fit it, the feature list it
expects, a fingerprint of its training data, when it was trained, its validation metrics and the sha256 of
the `.joblib` file. Loading checks the passport *before* unpickling and refuses, with a ModelArtifactError
that names the file and says what to do, an artifact that is

    missing        no metadata or no .joblib file
    corrupt        the file's sha256 differs from the metadata, or it does not unpickle into a model
    incompatible   fit by another scikit-learn major.minor, or expecting other features than this code builds

The hash catches damage (a truncated copy, a half-written file), not an attacker: joblib files are pickles,
so a models directory must be as trusted as the code that loads it.

Both files are written to a temporary name and renamed into place, metadata last, so a service starting
while `ridestream train` runs sees the old model or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import ModelArtifactError

if TYPE_CHECKING:
    import pandas as pd

MODEL_NAMES: tuple[str, ...] = ("duration", "dynamic_duration", "tip", "cost", "baseline")
ARTIFACT_SUFFIX = ".joblib"
METADATA_SUFFIX = ".json"
VERSION_LENGTH = 12
ARTIFACT_MODE = 0o644
RETRAIN_HINT = "retrain with `ridestream train --models {models_dir}`"


@dataclass(frozen=True)
class ArtifactMetadata:
    name: str
    version: str
    sklearn_version: str
    features: list[str]
    training_data: dict[str, Any]
    trained_at: str
    metrics: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    artifact_file: str = ""
    artifact_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    metadata: ArtifactMetadata

    @property
    def version(self) -> str:
        return self.metadata.version


def artifact_path(models_dir: Path, name: str) -> Path:
    return Path(models_dir) / f"{name}{ARTIFACT_SUFFIX}"


def metadata_path(models_dir: Path, name: str) -> Path:
    return Path(models_dir) / f"{name}{METADATA_SUFFIX}"


def artifacts_present(models_dir: Path, names: Iterable[str] = MODEL_NAMES) -> bool:
    """Both files of every named artifact exist (presence only: loading does the real checks)."""
    return all(
        artifact_path(models_dir, n).is_file() and metadata_path(models_dir, n).is_file() for n in names
    )


def fingerprint_frame(frame: pd.DataFrame) -> dict[str, Any]:
    """sha256 over the rows' values (row hashes of pandas, in order) plus the row count and columns."""
    import pandas as pd

    row_hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest = hashlib.sha256(row_hashes.tobytes())
    digest.update(json.dumps(list(map(str, frame.columns))).encode())
    return {"sha256": digest.hexdigest(), "rows": len(frame), "columns": [str(c) for c in frame.columns]}


def model_version(training_data: dict[str, Any], params: dict[str, Any], trained_at: str) -> str:
    """Short, stable id of one fit: the same data, parameters and time always give the same version."""
    payload = json.dumps(
        {"data": training_data.get("sha256"), "params": params, "at": trained_at}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:VERSION_LENGTH]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sklearn_minor(version: str) -> str:
    """ "1.9.1" → "1.9": pickles are only promised to load within a scikit-learn minor release."""
    return ".".join(version.split(".")[:2])


def installed_sklearn_version() -> str:
    # From the package's metadata: a scoring process that serves compiled kernels never imports scikit-learn
    # (~80 MB of RSS with scipy), yet still refuses an artifact fit by another minor release.
    return importlib.metadata.version("scikit-learn")


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        # mkstemp creates 0600; services may run as another user than the one who trained.
        os.chmod(temporary, ARTIFACT_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_model(
    models_dir: Path,
    name: str,
    model: Any,
    *,
    features: Sequence[str],
    training_data: dict[str, Any],
    metrics: dict[str, Any],
    params: dict[str, Any],
    trained_at: datetime | None = None,
) -> ArtifactMetadata:
    """Write `<name>.joblib`, then `<name>.json` with its sha256; return the metadata written."""
    import joblib

    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    stamp = (trained_at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    target = artifact_path(models_dir, name)
    write_atomically(target, lambda tmp: joblib.dump(model, tmp))
    metadata = ArtifactMetadata(
        name=name,
        version=model_version(training_data, params, stamp),
        sklearn_version=installed_sklearn_version(),
        features=list(features),
        training_data=training_data,
        trained_at=stamp,
        metrics=metrics,
        params=params,
        artifact_file=target.name,
        artifact_sha256=file_sha256(target),
    )
    write_atomically(metadata_path(models_dir, name), lambda tmp: tmp.write_text(metadata.to_json()))
    return metadata


def read_metadata(models_dir: Path, name: str) -> ArtifactMetadata:
    """The metadata of one artifact, or a ModelArtifactError saying why it cannot be read."""
    path = metadata_path(models_dir, name)
    hint = RETRAIN_HINT.format(models_dir=models_dir)
    if not path.is_file():
        raise ModelArtifactError(f"model {name!r} is missing: {path} not found; {hint}")
    try:
        raw = json.loads(path.read_text())
        return ArtifactMetadata(**raw)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(f"model metadata {path} is unreadable ({exc}); {hint}") from exc


def check_compatible(
    metadata: ArtifactMetadata, path: Path, expected_features: Sequence[str], hint: str
) -> None:
    installed = installed_sklearn_version()
    if sklearn_minor(metadata.sklearn_version) != sklearn_minor(installed):
        raise ModelArtifactError(
            f"model {path} is incompatible: fit with scikit-learn {metadata.sklearn_version}, this is "
            f"{installed} (pickles only load within one minor release); {hint}"
        )
    if list(metadata.features) != list(expected_features):
        raise ModelArtifactError(
            f"model {path} is incompatible: it expects features {metadata.features}, this code builds "
            f"{list(expected_features)}; {hint}"
        )


def checked_artifact(models_dir: Path, name: str, expected_features: Sequence[str]) -> ArtifactMetadata:
    """The metadata of the artifact `name`, after checking it is present, intact and fit for the features
    this code builds; a ModelArtifactError saying which and what to do otherwise."""
    models_dir = Path(models_dir)
    hint = RETRAIN_HINT.format(models_dir=models_dir)
    metadata = read_metadata(models_dir, name)
    path = artifact_path(models_dir, name)
    if not path.is_file():
        raise ModelArtifactError(
            f"model {name!r} is missing: {path} not found (its metadata is there); {hint}"
        )
    actual = file_sha256(path)
    if actual != metadata.artifact_sha256:
        raise ModelArtifactError(
            f"model {path} is corrupt: sha256 {actual[:16]}… differs from {metadata.artifact_sha256[:16]}… "
            f"recorded at training time; {hint}"
        )
    check_compatible(metadata, path, expected_features, hint)
    return metadata


def unpickle_model(models_dir: Path, name: str, metadata: ArtifactMetadata) -> LoadedModel:
    """The checked artifact's model itself (scikit-learn and all it imports)."""
    import joblib

    path = artifact_path(models_dir, name)
    hint = RETRAIN_HINT.format(models_dir=models_dir)
    try:
        model = joblib.load(path)
    except Exception as exc:  # unpickling raises anything from EOFError to ModuleNotFoundError
        raise ModelArtifactError(f"model {path} is corrupt: it does not unpickle ({exc!r}); {hint}") from exc
    if not callable(getattr(model, "predict", None)):
        raise ModelArtifactError(
            f"model {path} is corrupt: it holds a {type(model).__name__}, not a model; {hint}"
        )
    return LoadedModel(model=model, metadata=metadata)


def load_model(models_dir: Path, name: str, expected_features: Sequence[str]) -> LoadedModel:
    """The artifact `name`, after checking it is present, intact and fit for the features this code builds."""
    return unpickle_model(models_dir, name, checked_artifact(models_dir, name, expected_features))
