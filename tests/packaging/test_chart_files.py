"""The chart's files against their sources of truth, without Helm: the CRD copy, versions, the values schema's
coverage and the values table of docs/install.md."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from avr_operator.api.crd import crd_yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "avr-operator"
CRD_FILE = "avrdeployments.avr.agentvoiceresponse.com.yaml"
MAPS = {"requests", "limits"}  # free-form maps documented as one row


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    paths: list[str] = []
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value and key not in MAPS:
            paths.extend(_leaves(value, path))
        else:
            paths.append(path)
    return paths


def test_chart_crd_is_the_generated_crd() -> None:
    generated = crd_yaml()
    assert (CHART / "files" / CRD_FILE).read_text() == generated, (
        f"the chart's CRD drifted: avr-operator crd -o charts/avr-operator/files/{CRD_FILE}"
    )
    assert (ROOT / "crds" / CRD_FILE).read_text() == generated


def test_chart_versions_follow_the_package() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == version
    values = _values()
    assert values["image"]["repository"].endswith("/avr-k8s-operator") and values["image"]["tag"] in ("", version)
    assert values["workerImage"]["repository"].endswith("/avr-k8s-runtime")


def test_schema_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False

    def covered(path: list[str], node: dict[str, Any]) -> bool:
        if not path:
            return True
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        properties = node.get("properties", {})
        return path[0] in properties and covered(path[1:], properties[path[0]])

    missing = [p for p in _leaves(_values()) if not covered(p.split("."), schema)]
    assert missing == []


def _cell(value: Any) -> str | None:
    """How docs/install.md shows a default; None for maps documented by their content."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return '`""`'
    if value in ([], {}):
        return f"`{json.dumps(value)}`"
    if isinstance(value, (str, int, float)):
        return f"`{value}`"
    return None


def test_install_doc_lists_every_value_with_its_default() -> None:
    doc = (ROOT / "docs" / "install.md").read_text()
    section = doc.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([\w.]+)` \| ([^|]*) \|", section, re.MULTILINE))
    values = _values()
    leaves = _leaves(values)
    assert sorted(rows) == sorted(leaves), "the values table and values.yaml must list the same values"
    for path in leaves:
        value: Any = values
        for part in path.split("."):
            value = value[part]
        expected = _cell(value)
        if expected is not None:
            assert rows[path].strip() == expected, f"{path}: docs say {rows[path].strip()}, values.yaml {value!r}"


@pytest.mark.parametrize("name", ["sts-openai", "sts-deepgram", "asr-llm-tts-local"])
def test_examples_are_documented(name: str) -> None:
    assert (ROOT / "examples" / f"{name}.yaml").is_file()
    assert f"`{name}.yaml`" in (ROOT / "examples" / "README.md").read_text()
    assert f"`{name}.yaml`" in (ROOT / "docs" / "operator.md").read_text()


ADAPTER_RULES = CHART / "files" / "prometheus-adapter-rules.yaml"


def test_prometheus_adapter_rules_serve_the_hpa_metric_per_pod() -> None:
    """The rules prometheus-adapter gets (from the chart's ConfigMap) must serve what the operator's HPA targets:
    a Pods metric named avr_queue_length, mapped from each series' namespace and pod labels."""
    rendered_hpa = (ROOT / "operator" / "render" / "components.py").read_text()
    assert '"metric": {"name": "avr_queue_length"}' in rendered_hpa, "the HPA's metric name changed: update the rules"
    config = yaml.safe_load(ADAPTER_RULES.read_text())
    assert set(config) == {"rules"}
    served = {}
    for rule in config["rules"]:
        assert rule["resources"] == {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
        assert rule["metricsQuery"] == "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"
        name = rule["name"]["as"]
        assert rule["seriesQuery"] == f'{name}{{namespace!="",pod!=""}}'
        assert rule["name"]["matches"] == f"^{name}$"
        served[name] = rule
    assert sorted(served) == ["avr_call_utilization", "avr_queue_length"]
    template = (CHART / "templates" / "prometheus-adapter-rules.yaml").read_text()
    assert '.Files.Get "files/prometheus-adapter-rules.yaml"' in template
