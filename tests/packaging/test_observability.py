"""The chart's alerting rules and Grafana dashboard as files: promtool's checks and unit tests of every alert, the
dashboard's structure, the metrics both use against the documented ones, the chart's templates that embed them,
and docs/observability.md listing every alert and panel.

Whether each panel's query returns data from real workers is tests/e2e/test_observability_live.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from avr_devcluster.binaries import MissingBinariesError, locate
from avr_devcluster.testing import in_ci

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "avr-operator"
RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
RULE_TESTS = Path(__file__).resolve().parent / "promtool" / "prometheus-rules.test.yaml"
DOC = ROOT / "docs" / "observability.md"
#: Labels an alert may carry: what bounds its series to pods, namespaces and a few fixed values.
ALERT_LABELS = {"alertname", "severity", "namespace", "pod", "reason", "provider", "horizontalpodautoscaler"}
#: Series the rules and panels may read besides the documented avr_* metrics.
FOREIGN = {
    "process_resident_memory_bytes",  # prometheus_client's process collector, in every worker
    "kube_horizontalpodautoscaler_status_current_replicas",  # kube-state-metrics
    "kube_horizontalpodautoscaler_status_desired_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed; run scripts/bootstrap (Debian package prometheus)"
        if in_ci():
            pytest.fail(f"the alerting rules must be tested in CI, but: {message}", pytrace=False)
        pytest.skip(message)
    return path


def _helm() -> Path:
    try:
        return locate() / "helm"
    except MissingBinariesError as error:
        if in_ci():
            pytest.fail(f"the chart's templates must be rendered in CI, but: {error}", pytrace=False)
        pytest.skip(str(error))


def _alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _metrics_in(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (every one here is avr_*, process_* or kube_*), histograms by name."""
    return {re.sub(r"_bucket$", "", name) for name in re.findall(r"\b(?:avr|process|kube)_[a-z0-9_]+", expr)}


def _documented_metrics() -> set[str]:
    documented = set()
    for doc in (ROOT / "docs" / "runtime.md", ROOT / "docs" / "operator.md"):
        for row in re.findall(r"^\| (`avr_[^|]*)\|", doc.read_text(), re.MULTILINE):
            documented |= set(re.findall(r"`(avr_[a-z_]+)", row))
    return documented


# --- promtool ---


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        [_tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = subprocess.run(
        [_tool("promtool"), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --- the rules ---


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [str(Path("..") / ".." / ".." / RULES.relative_to(ROOT))]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
            for alert in check["exp_alerts"]:
                assert set(alert["exp_labels"]) | {"alertname"} <= ALERT_LABELS, alert["exp_labels"]
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook"}
    assert firing == set(_alerts()), "every alert needs a case where it fires"
    assert silent == set(_alerts()), "every alert needs a case where it does not fire"


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    for name, rule in _alerts().items():
        assert re.fullmatch(r"AVR[A-Z][A-Za-z]+", name)
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, name
        assert all(len(text) > 40 for text in rule["annotations"].values()), name
        assert rule["for"], name


def test_every_alert_aggregates_to_bounded_labels() -> None:
    """Each alert's expression starts from aggregations by a few labels only: never per instance or job."""
    for name, rule in _alerts().items():
        groupings = re.findall(r"\bby \(([^)]*)\)", rule["expr"])
        assert groupings, f"{name}: aggregate by (namespace, ...) so that instance, job and container go"
        for grouping in groupings:
            labels = {label.strip() for label in grouping.split(",")}
            assert "namespace" in labels and labels <= ALERT_LABELS, (name, labels)


def test_rules_and_panels_read_only_known_metrics() -> None:
    known = _documented_metrics() | FOREIGN
    exprs = [rule["expr"] for rule in _alerts().values()]
    exprs += [target["expr"] for panel in _panels() for target in panel["targets"]]
    read = set().union(*(_metrics_in(e) for e in exprs))
    assert read - known == set(), "undocumented metrics (docs/runtime.md's Metrics table, docs/operator.md)"
    assert {"avr_call_utilization", "avr_calls_refused_total", "avr_operator_reconcile_errors_total"} <= read


# --- the dashboard ---


def test_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "avr-workers" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "pod"}
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in _panels()]
    assert len(titles) == len(set(titles))
    for panel in _panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            # every worker series is narrowed to the selected pods; rate windows follow Grafana's interval
            for selector in re.findall(r"\b(avr_(?!operator_)[a-z_]+|process_[a-z_]+)\{([^}]*)\}", expr):
                assert 'namespace=~"$namespace", pod=~"$pod"' in selector[1], (panel["title"], expr)
            assert "rate(" not in expr or "[$__rate_interval]" in expr, expr
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


# --- the chart ---


def _template(*args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(_helm()), "template", "avr", str(CHART), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_chart_ships_the_rules_and_the_dashboard_verbatim_when_asked() -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in _template()}
    assert ("PrometheusRule", "avr-avr-operator") not in kinds
    assert ("ConfigMap", "avr-avr-operator-dashboard") not in kinds
    sets = [
        "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.labels.release=kube-prometheus-stack",
        "--set", "grafanaDashboard.enabled=true", "--set", "grafanaDashboard.namespace=monitoring",
        "--set", "grafanaDashboard.annotations.grafana_folder=AVR",
    ]  # fmt: skip
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _template(*sets, "-n", "avr-system")}
    rule = objects["PrometheusRule", "avr-avr-operator"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "avr-system"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    dashboard = objects["ConfigMap", "avr-avr-operator-dashboard"]
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "AVR"}
    assert dashboard["data"] == {"avr.json": DASHBOARD.read_text().rstrip("\n")}


def test_chart_lints_with_both_on() -> None:
    result = subprocess.run(
        [str(_helm()), "lint", "--strict", str(CHART), "--set", "prometheusRule.enabled=true",
         "--set", "grafanaDashboard.enabled=true"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and "[WARNING]" not in result.stdout, result.stdout + result.stderr


# --- the docs ---


def test_docs_list_every_alert_and_panel() -> None:
    doc = DOC.read_text()
    alerts = re.findall(r"^\| `(AVR\w+)` \|", doc, re.MULTILINE)
    assert sorted(alerts) == sorted(_alerts()), "docs/observability.md: one row per alert"
    table = doc.split("\n## Dashboard", 1)[1]
    panels = re.findall(r"^\| [^|]+ \| ([^|]+?) \| [^|]+ \|$", table, re.MULTILINE)
    assert [p for p in panels if p not in ("Panel", "---")] == [p["title"] for p in _panels()]
    assert "(docs/observability.md)" in (ROOT / "README.md").read_text()
    assert "(observability.md)" in (ROOT / "docs" / "install.md").read_text()
