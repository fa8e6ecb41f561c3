"""JSON Schema files for every wire model, so a client in any language can validate what it sends.

`python -m schemas` (or `ridestream schemas`) regenerates `schemas/json/`; a test fails when a committed
file drifts from its model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.events import RIDE_EVENT, RideCompleted, RideProgress, RideStarted
from schemas.predictions import CostPrediction, DurationPrediction, TipPrediction

JSON_SCHEMA_DIR = Path(__file__).parent / "json"
# The HTTP services' OpenAPI documents (generated from their apps by `ridestream schemas`).
OPENAPI_DIR = Path(__file__).parent / "openapi"

WIRE_MODELS: dict[str, type[BaseModel]] = {
    "ride_started": RideStarted,
    "ride_progress": RideProgress,
    "ride_completed": RideCompleted,
    "duration_prediction": DurationPrediction,
    "tip_prediction": TipPrediction,
    "cost_prediction": CostPrediction,
}


def schema_documents() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema document, for every wire model plus the ride-event union."""
    documents = {f"{name}.json": model.model_json_schema() for name, model in WIRE_MODELS.items()}
    documents["ride_event.json"] = RIDE_EVENT.json_schema()
    for name, document in documents.items():
        document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        document["$id"] = f"ridestream/{name}"
    return documents


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_schemas(
    out_dir: Path = JSON_SCHEMA_DIR, documents: Mapping[str, dict[str, Any]] | None = None
) -> list[Path]:
    """Write `documents` (default: the contract's JSON Schemas) into `out_dir`, one file per name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in (schema_documents() if documents is None else documents).items():
        path = out_dir / name
        path.write_text(render(document), encoding="utf-8")
        written.append(path)
    return written


def drifted_schemas(
    out_dir: Path = JSON_SCHEMA_DIR, documents: Mapping[str, dict[str, Any]] | None = None
) -> list[str]:
    """Names of schema files that are missing or differ from what the models generate."""
    return [
        name
        for name, document in (schema_documents() if documents is None else documents).items()
        if not (out_dir / name).is_file() or (out_dir / name).read_text(encoding="utf-8") != render(document)
    ]
