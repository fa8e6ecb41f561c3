"""Every metric the dashboard and the alert rules name is one the code exports, with the labels they use.

The exported names come from the code's own registries (ServiceMetrics, EvaluatorMetrics, WebMetrics),
filled through their hooks so each labelled metric shows its samples, and then written out the way
prometheus_client exposes them (`_total`, `_created`, `_bucket`, `_sum`, `_count`, `_info`). The names the
queries use come from a small PromQL scanner: the rules' `expr`, the dashboard's targets, its annotations
and its `label_values(...)` variable. A recorded series (`ridestream:...`) must be recorded by the rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from consumers.evaluator.join import FigureKey, Sums
from consumers.evaluator.service import EvaluatorMetrics
from consumers.web import WebMetrics
from shared.metrics import LATENCY_BUCKETS, BatchHistogram, ServiceMetrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "ridestream.json"
# Labels Prometheus itself puts on every scraped series.
TARGET_LABELS = {"job", "instance"}

AGGREGATORS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# Keywords followed by a parenthesized list of label names, not of expressions.
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')
      |(?P<range>\[[^\]]*\])
      |(?P<braces>\{(?:"(?:\\.|[^"\\])*"|[^}"])*\})
      |(?P<number>\d[\w.]*)
      |(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
      |(?P<other>\S)""",
    re.VERBOSE,
)
MATCHER = re.compile(r"""([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"(?:\\.|[^"\\])*\"""")


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric name, label names its matchers use) for each series selector in a PromQL expression."""
    tokens = [(m.lastgroup or "", m.group()) for m in TOKEN.finditer(expr)]
    skip_list = False
    for index, (kind, text) in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else ("", "")
        if skip_list:
            skip_list = text != ")"
            continue
        if kind != "name":
            continue
        if text in LABEL_LISTS:
            skip_list = following[1] == "("
            continue
        if text in KEYWORDS or text in AGGREGATORS or following[1] == "(":
            continue
        labels = set(MATCHER.findall(following[1])) if following[0] == "braces" else set()
        yield text, labels


def exported() -> dict[str, set[str]]:
    """Every sample name the code's registries can expose → the label names it carries."""
    service = ServiceMetrics("tip")
    service.on_event("ride_started")
    service.on_ignored("ride_progress")
    service.on_dead_letter("invalid_json")
    service.on_batch(1, 0.01, np.array([0.02]))
    service.on_predictions(1)
    service.on_lag("rides.events", 0, 10)
    service.on_model_swapped("tip", "abc", "tip=2")
    service.on_model_refused("tip", "def")
    evaluator = EvaluatorMetrics(ServiceMetrics("evaluator"))
    evaluator.publish({FigureKey("tip", "tip", "abc", "card"): Sums(1, 0.5, 0.5, 0.25, 0.0625)}, 3)
    evaluator.expired.inc()
    evaluator.ignored.inc()
    web = WebMetrics()
    web.requests.labels("/v1/estimates", "200").inc()
    web.latency.labels("/v1/estimates").observe(0.01)
    web.rides.inc()
    web.model_info.labels("tip", "tip", "abc").set(1)
    names: dict[str, set[str]] = {}
    for registry in (service.registry, evaluator.service.registry, web.registry):
        for name, labels in exposed_names(registry):
            names.setdefault(name, set()).update(labels)
    return names


def exposed_names(registry: CollectorRegistry) -> Iterator[tuple[str, set[str]]]:
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    for family in registry.collect():
        labels = {label for sample in family.samples for label in sample.labels}
        for suffix in suffixes.get(family.type, ("",)):
            yield family.name + suffix, labels - ({"le"} if suffix != "_bucket" else set())


def rule_exprs() -> Iterator[str]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]


def recorded() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def walk(node: Any, key: str) -> Iterator[Any]:
    """Every value stored under `key` anywhere in a JSON document."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key:
                yield value
            yield from walk(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)


def dashboard_exprs() -> Iterator[str]:
    document = json.loads(DASHBOARD.read_text())
    yield from (expr for expr in walk(document["panels"], "expr"))
    yield from (a["expr"] for a in document["annotations"]["list"])
    for variable in document["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            values = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query["query"])
            assert values is not None, f"variable {variable['name']}: not a label_values query"
            yield f"{values[1]}{{{values[2]}=~'.+'}}"


def queried() -> list[tuple[str, str, set[str]]]:
    """(where, metric, labels) for every selector of the rules and the dashboard."""
    return [
        (where, name, labels)
        for where, exprs in (("rules", rule_exprs()), ("dashboard", dashboard_exprs()))
        for expr in exprs
        for name, labels in selectors(expr)
    ]


def test_the_scanner_finds_names_and_matchers_and_skips_functions_and_label_lists() -> None:
    found = list(
        selectors(
            'sum by (service, le) (rate(a_total{x="}", y=~"$s"}[5m])) / on (service) group_left () '
            'b:rec offset 5m > 0.5 unless label_replace(c, "d", "$1", "e", "(.+)")'
        )
    )
    assert found == [("a_total", {"x", "y"}), ("b:rec", set()), ("c", set())]


def test_the_rules_and_the_dashboard_name_metrics_at_all() -> None:
    names = {name for _, name, _ in queried()}
    assert {"ridestream_consumer_lag", "ridestream_live_error"} <= names
    assert any(name.endswith("_bucket") for name in names)


def test_every_metric_the_rules_and_the_dashboard_name_is_exported_by_the_code() -> None:
    code = exported()
    missing = sorted(
        f"{where}: {name}"
        for where, name, _ in queried()
        if name not in code and not (":" in name and name in recorded())
    )
    assert missing == []


def test_every_label_they_select_on_is_one_the_metric_carries() -> None:
    code = exported()
    wrong = sorted(
        f"{where}: {name}{{{', '.join(sorted(labels - code[name] - TARGET_LABELS))}}}"
        for where, name, labels in queried()
        if name in code and labels - code[name] - TARGET_LABELS
    )
    assert wrong == []


@pytest.mark.parametrize(
    "expr", ["rate(ridestream_predictions_total[5m])", 'ridestream_consumer_lag{partiton="0"}']
)
def test_a_misspelt_name_or_label_is_caught(expr: str) -> None:
    code = exported()
    assert any(name not in code or labels - code[name] - TARGET_LABELS for name, labels in selectors(expr))


def test_a_batch_histogram_exports_what_prometheus_clients_histogram_exports_for_the_same_values() -> None:
    """Values on and around every bound, observed a batch at a time: the same `_bucket`, `_count` and `_sum`
    lines as prometheus_client's Histogram fed the values one by one."""
    bounds = np.array(LATENCY_BUCKETS)
    values = np.concatenate([bounds, np.nextafter(bounds, 0), np.nextafter(bounds, np.inf), [0.0, 1e6]])
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = BatchHistogram("latency_seconds", "doc", ("service", "tip"), LATENCY_BUCKETS, ours)
    reference = Histogram("latency_seconds", "doc", ["service"], buckets=LATENCY_BUCKETS, registry=theirs)
    for part in np.array_split(values, 4):
        batched.observe(part)
    for value in values.tolist():
        reference.labels("tip").observe(value)

    def series(registry: CollectorRegistry) -> list[str]:
        lines = generate_latest(registry).decode().splitlines()
        return [line for line in lines if line.startswith("latency_seconds_") and "_created" not in line]

    assert series(ours) == series(theirs) and len(series(ours)) == len(LATENCY_BUCKETS) + 3
