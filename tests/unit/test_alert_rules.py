"""The alert rules (deploy/prometheus/alerts.yml) through Prometheus's own promtool, as real processes: the
rules and the config load, the unit tests in deploy/prometheus/tests/ pass, each alert has a case that fires
it and one that does not, and a rule made wrong is caught by those tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = sorted((REPO / "deploy" / "prometheus" / "tests").glob("*.yml"))
CONFIG = REPO / "deploy" / "prometheus.yml"
PROMTOOL_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        # CI installs Debian's prometheus package (.ci/run); elsewhere a missing tool is a skip, not a pass.
        if os.environ.get("CI"):
            pytest.fail("promtool not found: install Debian's prometheus package")
        pytest.skip("promtool not found (apt-get install prometheus)")
    return found


def run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S, check=False
    )


def alert_names() -> set[str]:
    document = yaml.safe_load(RULES.read_text())
    return {rule["alert"] for group in document["groups"] for rule in group["rules"] if "alert" in rule}


def alert_cases() -> list[dict[str, Any]]:
    return [
        case
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def test_promtool_accepts_the_rules(promtool: str) -> None:
    checked = run(promtool, "check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_prometheus_config_loads_the_rules(promtool: str) -> None:
    checked = run(promtool, "check", "config", CONFIG)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert str(RULES.relative_to(CONFIG.parent)) in checked.stdout, "the config names no rule file of ours"


def test_the_rule_unit_tests_pass(promtool: str) -> None:
    assert RULE_TESTS, "no promtool test files"
    tested = run(promtool, "test", "rules", *RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing = {case["alertname"] for case in alert_cases() if case.get("exp_alerts")}
    silent = {case["alertname"] for case in alert_cases() if not case.get("exp_alerts")}
    assert alert_names(), "no alert rules"
    assert alert_names() - firing == set(), "alerts never tested firing"
    assert alert_names() - silent == set(), "alerts never tested silent"


def test_a_wrong_rule_fails_the_rule_tests(promtool: str, tmp_path: Path) -> None:
    # A dead-letter alert on any dead letter at all: the half-percent case must notice. (One mutation
    # only, for CI time; by hand each threshold and filter of the rules was changed once and caught.)
    correct, wrong = "> 0.01", "> 0.001"
    (tmp_path / "tests").mkdir()
    rules = RULES.read_text()
    assert correct in rules
    (tmp_path / "alerts.yml").write_text(rules.replace(correct, wrong, 1))
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    tested = run(promtool, "test", "rules", *sorted((tmp_path / "tests").glob("*.yml")))
    assert tested.returncode != 0, "the rule tests pass a wrong rule"
    assert "FAILED" in tested.stdout + tested.stderr


def test_a_rule_that_does_not_parse_is_refused(promtool: str, tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yml"
    broken.write_text(RULES.read_text().replace("sum by (service, topic) (", "sum by (service, topic (", 1))
    checked = run(promtool, "check", "rules", broken)
    assert checked.returncode != 0
