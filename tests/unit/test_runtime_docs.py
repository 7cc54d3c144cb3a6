"""The worker's documentation (docs/runtime.md) keeps up with the code: its metrics table names exactly what
/metrics exposes, and its two configuration tables (the settings a user needs, then advanced tuning) exactly the
settings there are."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest

import avr_runtime.server.call  # noqa: F401  (registers what the call module adds to the metrics)
from avr_runtime.config import Settings
from avr_runtime.services import metrics

DOC = (Path(__file__).resolve().parents[2] / "docs" / "runtime.md").read_text()


def section(title: str) -> str:
    """From the heading ``title`` to the next heading of the same level or above (its subsections included)."""
    level = title.split(" ", 1)[0]
    start = DOC.index(f"\n{title}\n")
    ends = [m.start() for m in re.finditer(r"\n(#+) ", DOC[start + 1 :]) if len(m.group(1)) <= len(level)]
    return DOC[start : start + 1 + ends[0] if ends else None]


def first_cells(text: str) -> list[str]:
    """The first cell of each row of the tables in ``text``, header and separator rows left out."""
    return [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]


def documented_metrics() -> set[str]:
    names: set[str] = set()
    for first in first_cells(section("## Metrics")):
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
        if name.startswith("avr_operator_"):  # the operator's, documented in docs/operator.md (same test process)
            continue
        names.add(name if kind != "counter" or name.endswith("_total") else name + "_total")
    return names


def documented_settings() -> tuple[list[str], list[str]]:
    """The variables each configuration table documents, a row's first cell naming one or more (`A` / `B`)."""
    configuration = section("## Configuration")
    advanced = section("### Advanced tuning")
    basic = configuration[: configuration.index("\n### Advanced tuning\n")]

    def names(text: str) -> list[str]:
        return [name for first in first_cells(text) for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", first)]

    return names(basic), names(advanced)


def test_every_exposed_metric_is_documented_and_nothing_else() -> None:
    assert metrics.QUEUE_LENGTH  # the module is loaded: its metrics are registered
    exposed, documented = exposed_metrics(), documented_metrics()
    assert len(exposed) > 25
    assert sorted(exposed - documented) == [], "exposed but not in docs/runtime.md's metrics table"
    assert sorted(documented - exposed) == [], "in docs/runtime.md's metrics table but not exposed"


def test_every_setting_is_in_one_configuration_table_and_nothing_else() -> None:
    basic, advanced = documented_settings()
    assert len(basic) > 15 and len(advanced) > 25  # both tiers were found
    documented = basic + advanced
    settings = {name.upper() for name in Settings.model_fields}
    assert sorted(settings - set(documented)) == [], "settings missing from docs/runtime.md's configuration tables"
    assert sorted(set(documented) - settings) == [], "in docs/runtime.md's configuration tables but not a setting"
    assert sorted(n for n in set(documented) if documented.count(n) > 1) == [], "documented in more than one row"
