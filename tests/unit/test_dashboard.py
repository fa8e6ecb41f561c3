"""The Grafana dashboard (deploy/grafana/): its queries parse as PromQL (promtool, a real process), it shows
what issue 15 asks of it, and docker-compose provisions it only under the `ops` profile."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "ridestream.json").read_text())
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
# What Grafana puts in for its variables, so promtool can parse the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$service": ".*"}


def panels() -> list[dict[str, Any]]:
    return [panel for panel in DASHBOARD["panels"] if panel["type"] != "row"]


def exprs() -> list[str]:
    queries = [target["expr"] for panel in panels() for target in panel["targets"]]
    return queries + [annotation["expr"] for annotation in DASHBOARD["annotations"]["list"]]


def substituted(expr: str) -> str:
    return re.sub(r"\$__rate_interval|\$__range|\$service", lambda m: GRAFANA_VARIABLES[m.group()], expr)


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not found: install Debian's prometheus package")
        pytest.skip("promtool not found (apt-get install prometheus)")
    # promtool parses PromQL only inside rule files: each query becomes a recording rule.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": substituted(e)} for i, e in enumerate(exprs())
                ],
            }
        ]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    broken = {"groups": [{"name": "broken", "rules": [{"record": "x:y", "expr": "sum by (a (b)"}]}]}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    checked = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "dashboard.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    refused = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "broken.yml")], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0, "promtool accepts anything: this test proves nothing"


def test_no_variable_is_left_for_promql_to_choke_on() -> None:
    left = [expr for expr in map(substituted, exprs()) if "$" in expr.replace('"$1"', "")]
    assert left == []


@pytest.mark.parametrize(
    "metric",
    [
        "ridestream_events_in_total",  # throughput in
        "ridestream_predictions_out_total",  # throughput out
        "ridestream_consumer_lag",  # lag per partition
        "ridestream_event_to_prediction_seconds_bucket",  # latency p50/p99
        "ridestream_dead_lettered_total",  # dead letters by reason
        "ridestream_model_info",  # serving version, rollout state
        "ridestream_live_error",  # live error per version
    ],
)
def test_the_dashboard_shows(metric: str) -> None:
    assert any(metric in expr for expr in exprs())


def test_latency_panel_has_p50_and_p99_and_lag_is_per_partition() -> None:
    queries = " ".join(exprs())
    assert "histogram_quantile(0.5," in queries and "histogram_quantile(0.99," in queries
    assert "max by (service, topic, partition) (ridestream_consumer_lag" in queries
    assert "sum by (service, reason) (rate(ridestream_dead_lettered_total" in queries


def test_every_panel_queries_the_chosen_data_source_and_has_its_own_place() -> None:
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def test_compose_provisions_grafana_in_the_ops_profile_only() -> None:
    grafana = COMPOSE["services"]["grafana"]
    assert grafana["profiles"] == ["ops"]
    # container path → path in the repo
    mounts = {
        inside: host.removeprefix("./") for host, inside, *_ in (v.split(":") for v in grafana["volumes"])
    }
    provisioning = REPO / mounts["/etc/grafana/provisioning"]
    assert (provisioning / "datasources").is_dir() and (provisioning / "dashboards").is_dir()
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][
        0
    ]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in COMPOSE["services"]
    provider = yaml.safe_load((provisioning / "dashboards" / "ridestream.yml").read_text())["providers"][0]
    dashboards = REPO / mounts[provider["options"]["path"]]
    assert (dashboards / "ridestream.json").is_file()
    # Every other image-registry-only service stays out of the default `docker compose up` as before.
    assert "profiles" not in COMPOSE["services"]["prometheus"]


def test_prometheus_in_compose_mounts_the_rules_where_its_config_looks() -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    mounts = dict(volume.split(":")[:2] for volume in COMPOSE["services"]["prometheus"]["volumes"])
    inside = {mounted: host for host, mounted in mounts.items()}
    for rule_file in config["rule_files"]:
        host = inside[f"/etc/prometheus/{rule_file}"]
        assert (REPO / host.removeprefix("./")).is_file()
