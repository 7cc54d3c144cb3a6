"""The user documentation keeps up with the API: every spec field and every metric is documented."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from avr_operator import metrics
from avr_operator.api.crd import root_schema

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text()


def field_paths(node: dict[str, Any], path: str = "") -> Iterator[str]:
    for name, sub in (node.get("properties") or {}).items():
        p = f"{path}.{name}" if path else name
        if ".resources." in p or p.startswith(("providers.asr.", "providers.llm.", "providers.tts.")):
            continue
        yield p
        if sub.get("type") == "object":
            yield from field_paths(sub, p)


def test_every_spec_field_is_in_the_fields_table() -> None:
    paths = list(field_paths(root_schema()["properties"]["spec"]))
    assert len(paths) > 60
    missing = [p for p in paths if f"| `{p}` |" not in DOC]
    assert missing == []


def test_every_operator_metric_is_documented() -> None:
    names = {
        metric.name
        for collector in vars(metrics).values()
        if isinstance(collector, MetricWrapperBase)
        for metric in collector.describe()
    }
    assert names
    for name in names:
        assert name.removesuffix("_total") in DOC, name


def test_the_cli_commands_are_documented() -> None:
    for command in (
        "avr-operator run",
        "avr-operator crd",
        "avr-operator render",
        "--metrics-port",
        "--liveness",
    ):
        assert command in DOC
