"""deploy/k8s/, offline: the kustomization's resources, core kinds against the Kubernetes JSON schemas
(kubernetes-validate), KEDA and Strimzi kinds against their CRDs' openAPIV3Schema (deploy/k8s/crds/), and the
wiring held to the code: commands, environment names, probes, partitions, ACLs.

The resources are read from kustomization.yaml's list in Python (the kustomization has no patches, so that
is its rendering); where kubectl is on the machine its built-in kustomize renders the same set.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the test extra
import pytest
import yaml
from pydantic_settings import BaseSettings

from consumers.backend.service import BackendSettings
from consumers.estimate.service import EstimateSettings
from consumers.evaluator.service import EvaluatorSettings
from consumers.registry import SERVICES
from shared.runner import DEFAULT_FLUSH_TIMEOUT_S
from shared.settings import KafkaSettings
from stack.security import service_grants
from tests.unit.test_metric_names import TARGET_LABELS, exported, selectors

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31"
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "KafkaTopic", "KafkaUser"}
SETTINGS: dict[str, type[BaseSettings]] = {
    "KAFKA_": KafkaSettings,
    "EVALUATOR_": EvaluatorSettings,
    "ESTIMATE_": EstimateSettings,
    "BACKEND_": BackendSettings,
    **{spec.env_prefix: spec.settings_class for spec in SERVICES},
}
OTHER_VARIABLES = {"MLFLOW_TRACKING_URI"}  # read by MLflow's client, not by a settings class of ours


def resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [
        document
        for name in kustomization["resources"]
        for document in yaml.safe_load_all((K8S / name).read_text())
        if document
    ]


RESOURCES = resources()


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in RESOURCES if r["kind"] == kind}


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as the API server's strict field validation does (CRD
    schemas leave additionalProperties open and let the server prune): a misspelt field fails here too."""
    if isinstance(schema, dict):
        tightened = {key: strict(value) for key, value in schema.items()}
        if (
            tightened.get("type") == "object"
            and "properties" in tightened
            and "additionalProperties" not in tightened
            and not tightened.get("x-kubernetes-preserve-unknown-fields")
        ):
            tightened["additionalProperties"] = False
        return tightened
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def crd_schemas() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) → the served version's strict schema, from the CRDs kept in the repo."""
    schemas = {}
    for path in sorted((K8S / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            if version["served"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


CRD_SCHEMAS = crd_schemas()


def crd_errors(resource: dict[str, Any]) -> list[str]:
    schema = CRD_SCHEMAS[(resource["apiVersion"], resource["kind"])]
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(resource)]


def core_errors(resource: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path))}: {exc.message}"]
    return []


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, deployment in of_kind("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            yield name, pod, container


def test_the_kustomization_holds_every_manifest_and_renders_with_kubectl_when_there() -> None:
    listed = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    names = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(rendered) if d}
    assert names == {(r["kind"], r["metadata"]["name"]) for r in RESOURCES}


@pytest.mark.parametrize(
    "resource",
    [r for r in RESOURCES if r["kind"] not in CRD_KINDS],
    ids=lambda r: f"{r['kind']}/{r['metadata']['name']}",
)
def test_core_kinds_match_the_kubernetes_schemas(resource: dict[str, Any]) -> None:
    assert core_errors(resource) == []


@pytest.mark.parametrize(
    "resource",
    [r for r in RESOURCES if r["kind"] in CRD_KINDS],
    ids=lambda r: f"{r['kind']}/{r['metadata']['name']}",
)
def test_keda_and_strimzi_kinds_match_their_crds(resource: dict[str, Any]) -> None:
    assert crd_errors(resource) == []


def test_broken_manifests_are_rejected() -> None:
    deployment = copy.deepcopy(of_kind("Deployment")["tip"])
    deployment["spec"]["replicas"] = "two"
    assert core_errors(deployment)
    deployment = copy.deepcopy(of_kind("Deployment")["tip"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    assert core_errors(deployment)
    scaled = copy.deepcopy(of_kind("ScaledObject")["tip"])
    scaled["spec"]["maxReplicas"] = 6
    assert crd_errors(scaled)
    user = copy.deepcopy(of_kind("KafkaUser")["tip"])
    user["spec"]["authentication"]["type"] = "scram-sha-256"
    assert crd_errors(user)


def test_every_service_has_a_deployment_a_disruption_budget_and_a_scaler() -> None:
    expected = {spec.name for spec in SERVICES} | {"evaluator", "estimate", "backend"}
    assert set(of_kind("Deployment")) == expected
    budgets = of_kind("PodDisruptionBudget")
    scalers = of_kind("ScaledObject")
    for name, deployment in of_kind("Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = budgets[name]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), name
        assert scalers[name]["spec"]["scaleTargetRef"]["name"] == name


def test_commands_are_real_entry_points_and_env_names_are_settings_fields() -> None:
    from tests.unit.test_manifests import command_of

    for name, _, container in containers():
        command = container["command"]
        if command[0] == "ridestream":
            command_of(command[1:])
        else:
            assert command[:2] == ["python", "-m"], name
            assert importlib.util.find_spec(command[2] + ".__main__") is not None, name
        config = of_kind("ConfigMap")["ridestream-kafka"]["data"]
        for variable in [*config, *(e["name"] for e in container["env"])]:
            if variable in OTHER_VARIABLES:
                continue
            prefix = next((p for p in SETTINGS if variable.startswith(p)), None)
            assert prefix is not None, f"{name}: {variable} belongs to no settings class"
            assert variable.removeprefix(prefix).lower() in SETTINGS[prefix].model_fields, (
                f"{name}: {variable}"
            )


def test_readiness_is_on_readyz_at_the_port_the_process_serves() -> None:
    for name, _, container in containers():
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        probe = container["readinessProbe"]["httpGet"]
        assert probe["path"] == "/readyz", name
        env = {e["name"]: e.get("value") for e in container["env"]}
        served = next(value for key, value in env.items() if key.endswith("_PORT"))
        assert str(ports[probe["port"]]) == served, name


def test_consumers_get_the_time_to_flush_and_commit_before_the_kill() -> None:
    for name, pod, container in containers():
        pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
        if container["command"][:2] == ["python", "-m"]:  # the Kafka consumers
            # preStop + the producer flush + a commit and the group leave
            assert pod["terminationGracePeriodSeconds"] >= pre_stop + DEFAULT_FLUSH_TIMEOUT_S + 15, name
        assert pod["terminationGracePeriodSeconds"] > pre_stop, name
        assert "memory" in container["resources"]["requests"], name


def partitions() -> dict[str, int]:
    return {t["spec"]["topicName"]: t["spec"]["partitions"] for t in of_kind("KafkaTopic").values()}


def test_no_scaler_goes_past_the_input_partitions_and_scalers_watch_the_real_groups() -> None:
    for name, scaled in of_kind("ScaledObject").items():
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] == "kafka":
                spec = next(s for s in SERVICES if s.name == name)
                settings = spec.settings()
                assert trigger["metadata"]["consumerGroup"] == settings.group_id
                assert trigger["metadata"]["topic"] == settings.input_topic
                assert scaled["spec"]["maxReplicaCount"] <= partitions()[settings.input_topic], name
                assert trigger["metadata"]["allowIdleConsumers"] == "false"
        if name == "evaluator":
            assert scaled["spec"]["maxReplicaCount"] <= partitions()[EvaluatorSettings().input_topic]


def test_the_prometheus_scaler_queries_a_metric_the_code_exports() -> None:
    code = exported()
    queries = [
        t["metadata"]["query"]
        for s in of_kind("ScaledObject").values()
        for t in s["spec"]["triggers"]
        if t["type"] == "prometheus"
    ]
    assert queries
    for query in queries:
        for metric, labels in selectors(query):
            assert metric in code and labels - TARGET_LABELS <= code[metric], query


def test_every_topic_the_services_use_is_a_kafka_topic_co_partitioned_with_the_input() -> None:
    found = partitions()
    for spec in SERVICES:
        settings = spec.settings()
        for topic in (settings.input_topic, settings.output_topic, settings.dlq_topic):
            assert topic in found, topic
        assert found[settings.resolved_shadow_topic] == found[settings.input_topic]
    for topic in EvaluatorSettings().topics():
        assert found[topic] == found[EvaluatorSettings().input_topic], topic
    assert found[EvaluatorSettings().evaluations_topic] == 1 and found[settings.control_topic] == 1


def kafka_user_acls() -> dict[str, set[tuple[str, str, str, str]]]:
    """user → {(operation, resource type, name, pattern)} in the AdminClient's words."""
    kinds = {"topic": "topic", "group": "group", "transactionalId": "transactional_id"}
    patterns = {"literal": "literal", "prefix": "prefixed"}
    return {
        name: {
            (
                operation.lower(),
                kinds[acl["resource"]["type"]],
                acl["resource"]["name"],
                patterns[acl["resource"]["patternType"]],
            )
            for acl in user["spec"]["authorization"]["acls"]
            for operation in acl["operations"]
        }
        for name, user in of_kind("KafkaUser").items()
    }


def test_every_user_authenticates_with_scram_and_every_deployment_uses_its_own() -> None:
    users = of_kind("KafkaUser")
    for user in users.values():
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    for name, _, container in containers():
        env = {e["name"]: e for e in container["env"]}
        assert env["KAFKA_SASL_USERNAME"]["value"] == name and name in users
        assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": "password"}


def test_kafka_users_carry_the_secured_broker_s_acl_plan() -> None:
    plan = {
        user: {(g.operation, g.resource, g.name, g.pattern) for g in grants}
        for user, grants in service_grants().items()
        if user != "producer"  # the replay tool: not deployed here (the backend publishes the rides)
    }
    assert kafka_user_acls() == plan
