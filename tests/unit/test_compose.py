"""docker-compose.yml cannot run here (no Docker engine), so its wiring is checked against the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import typer.main
import yaml
from pydantic_settings import BaseSettings

from consumers.backend.service import BackendSettings
from consumers.estimate.service import EstimateSettings
from consumers.evaluator.service import EvaluatorSettings
from consumers.registry import SERVICES
from producer.settings import ProducerSettings
from shared.settings import KafkaSettings
from stack.cli import app

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
OURS = {
    name: spec
    for name, spec in COMPOSE["services"].items()
    if spec.get("image", "").startswith("ridestream:")
}
SETTINGS_BY_PREFIX: dict[str, type[BaseSettings]] = {
    "KAFKA_": KafkaSettings,
    "PRODUCER_": ProducerSettings,
    "EVALUATOR_": EvaluatorSettings,
    "ESTIMATE_": EstimateSettings,
    "BACKEND_": BackendSettings,
    **{spec.env_prefix: spec.settings_class for spec in SERVICES},
}


# MLflow's own client settings (read by MLflow, not by a settings class of ours).
MLFLOW_VARIABLES = {"MLFLOW_TRACKING_URI"}


def test_every_ridestream_process_shares_the_compose_mlflow_server() -> None:
    assert "mlflow" in COMPOSE["services"]
    for name, spec in OURS.items():
        assert spec["environment"].get("MLFLOW_TRACKING_URI") == "http://mlflow:5000", name


def cli_commands() -> set[str]:
    group = typer.main.get_command(app)
    return set(group.commands)  # type: ignore[attr-defined]


def test_compose_runs_kafka_in_kraft_mode_and_every_ridestream_process() -> None:
    assert COMPOSE["services"]["kafka"]["image"].startswith("apache/kafka:4")
    assert COMPOSE["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert {"producer", "duration", "tip", "cost", "estimate", "backend"} <= set(OURS)
    assert COMPOSE["services"]["duration"]["deploy"]["replicas"] >= 1


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_service_command_is_a_real_entry_point(name: str) -> None:
    command = OURS[name]["command"]
    if command[0] == "ridestream":
        assert command[1] in cli_commands(), f"{name}: `ridestream {command[1]}` is not a command"
    else:
        assert command[:2] == ["python", "-m"], f"{name}: unexpected command {command}"
        assert importlib.util.find_spec(command[2] + ".__main__") is not None, (
            f"{name}: no module {command[2]}"
        )


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_environment_name_is_a_field_of_a_settings_class(name: str) -> None:
    for variable in OURS[name].get("environment") or {}:
        if variable in MLFLOW_VARIABLES:
            continue
        prefix = next((p for p in SETTINGS_BY_PREFIX if variable.startswith(p)), None)
        assert prefix is not None, f"{name}: {variable} belongs to no settings class"
        field = variable.removeprefix(prefix).lower()
        assert field in SETTINGS_BY_PREFIX[prefix].model_fields, (
            f"{name}: {variable} is not a {SETTINGS_BY_PREFIX[prefix].__name__} field"
        )


def test_prometheus_scrapes_the_port_the_services_listen_on() -> None:
    prometheus = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "deploy" / "prometheus.yml").read_text()
    )
    port = prometheus["scrape_configs"][0]["dns_sd_configs"][0]["port"]
    for service in ("duration", "tip", "cost"):
        assert OURS[service]["environment"][f"{service.upper()}_METRICS_PORT"] == str(port)
