"""The worker's documentation keeps up with the code: its metrics table names exactly what /metrics exposes, and
its configuration table every setting."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest

import avr_runtime.server.call  # noqa: F401  (registers what the call module adds to the metrics)
from avr_runtime.config import Settings
from avr_runtime.services import metrics

DOC = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(title: str) -> str:
    start = DOC.index(title)
    end = DOC.find("\n#", start + len(title))
    return DOC[start : end if end > 0 else None]


def documented_metrics() -> set[str]:
    names: set[str] = set()
    for line in section("### Metrics").splitlines():
        if line.startswith("| `avr_"):
            first = line.split("|")[1]
            names |= {re.sub(r"\{.*\}", "", n) for n in re.findall(r"`(avr_[^`]+)`", first)}
    return names


def exposed_metrics() -> set[str]:
    """The families /metrics shows, as a user reads them (counters with their _total)."""
    text = generate_latest(REGISTRY).decode()
    names = set()
    for m in re.finditer(r"^# TYPE (avr_\S+) (\S+)$", text, re.MULTILINE):
        name, kind = m.groups()
        if name.endswith("_created"):  # prometheus-client's creation-time series of each counter and histogram
            continue
        names.add(name if kind != "counter" or name.endswith("_total") else name + "_total")
    return names


def test_every_exposed_metric_is_documented_and_nothing_else() -> None:
    assert metrics.QUEUE_LENGTH  # the module is loaded: its metrics are registered
    exposed, documented = exposed_metrics(), documented_metrics()
    assert len(exposed) > 25
    assert sorted(exposed - documented) == [], "exposed but not in README's metrics table"
    assert sorted(documented - exposed) == [], "in README's metrics table but not exposed"


def test_every_setting_is_in_the_configuration_table() -> None:
    table = section("### Configuration")
    internal = {"service_account_dir", "pod_deletion_cost_interval"}  # described in the row of their feature
    missing = [
        name
        for name in Settings.model_fields
        if name not in internal and f"`{name.upper()}`" not in table and f"`{name.upper()}` /" not in table
    ]
    assert missing == []
