"""The registry of scoring services: one spec per service, the one list every other place reads.

A spec says everything the runtime and the stack need to know about a service: its name (topics, group and
metrics are named after it), its settings' environment prefix, the prediction contract it publishes, the
models it loads and how to build its scorer from a model directory. Adding a service is a folder with its
scorer (and a two-line `__main__.py` for `python -m consumers.<name>`) plus one entry in `SERVICES`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from consumers.cost.scorer import load_scorer as load_cost_scorer
from consumers.duration.scorer import PROGRESS_MODEL, START_MODEL
from consumers.duration.scorer import load_scorer as load_duration_scorer
from consumers.scoring import Prediction
from consumers.tip.scorer import load_scorer as load_tip_scorer
from schemas.predictions import CostPrediction, DurationPrediction, TipPrediction
from shared.errors import ConfigError
from shared.protocols import Scorer
from shared.service import ServiceSettings, settings_class


class ScorerLoader(Protocol):
    def __call__(self, models_dir: Path, versions: Mapping[str, str] | None = None) -> Scorer:
        """The scorer of the registry's champions, or of the registry versions `versions` names."""
        ...


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    env_prefix: str
    contract: type[Prediction]
    # The contract's field that carries the prediction (what the live view shows).
    value_field: str
    models: tuple[str, ...]
    load_scorer: ScorerLoader

    @property
    def settings_class(self) -> type[ServiceSettings]:
        return _settings_class(self.name, self.env_prefix)

    def settings(self, overrides: Mapping[str, Any] | None = None) -> ServiceSettings:
        """The service's settings: `overrides` (CLI flags) beat the environment, which beats the defaults."""
        return self.settings_class(**dict(overrides or {}))


# One class per service and process, so isinstance checks and pydantic's schema cache hold.
_settings_class = functools.cache(settings_class)


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "duration",
        "DURATION_",
        DurationPrediction,
        "predicted_duration_minutes",
        (START_MODEL, PROGRESS_MODEL),
        load_duration_scorer,
    ),
    ServiceSpec("tip", "TIP_", TipPrediction, "predicted_tip_usd", ("tip",), load_tip_scorer),
    ServiceSpec("cost", "COST_", CostPrediction, "predicted_total_usd", ("cost",), load_cost_scorer),
)
SERVICE_NAMES: tuple[str, ...] = tuple(spec.name for spec in SERVICES)


def service_spec(name: str, registry: tuple[ServiceSpec, ...] = SERVICES) -> ServiceSpec:
    for spec in registry:
        if spec.name == name:
            return spec
    raise ConfigError(f"unknown service {name!r} (known: {', '.join(s.name for s in registry)})")
