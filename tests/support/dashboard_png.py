"""Draw the Grafana dashboard's panels from a test's Prometheus: one small chart per panel, its queries over the
last minutes as lines, the variables substituted as Grafana would. A picture for docs/, not a Grafana render.

Needs matplotlib (not a dependency of the project: `pip install matplotlib`).
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avr_devcluster.prometheus import PrometheusServer

COLUMNS = 4


def _label(template: str, metric: Mapping[str, str]) -> str:
    for key, value in metric.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def render(
    prometheus: PrometheusServer,
    panels: list[dict[str, Any]],
    variables: Mapping[str, str],
    exempt: Mapping[str, str],
    path: Path,
    *,
    seconds: float = 60.0,
) -> None:
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    shown = [p for p in panels if p["title"] not in exempt]
    rows = math.ceil(len(shown) / COLUMNS)
    figure, axes = pyplot.subplots(rows, COLUMNS, figsize=(4.2 * COLUMNS, 2.6 * rows), squeeze=False)
    end = time.time()
    for axis, panel in zip(axes.flat, shown, strict=False):
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in variables.items():
                expr = expr.replace(name, value)
            data = prometheus.api("query_range", query=expr, start=str(end - seconds), end=str(end), step="1")
            for series in data["result"]:
                xs = [float(t) - end for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                axis.plot(xs, ys, linewidth=1.2, label=_label(target.get("legendFormat", ""), series["metric"]))
        axis.set_title(panel["title"], fontsize=9)
        axis.tick_params(labelsize=7)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        if unit not in ("", "short"):
            axis.set_ylabel(unit, fontsize=7)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=6, loc="upper left")
    for axis in list(axes.flat)[len(shown) :]:
        axis.axis("off")
    figure.suptitle(f"AVR workers dashboard: the last {seconds:.0f} s of the observability test (s before now)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    pyplot.close(figure)
