"""The prometheus-operator PodMonitor of the core pods (monitoring.podMonitor.enabled)."""

from __future__ import annotations

from typing import Any

from avr_operator.api.resource import AVRDeployment
from avr_operator.render.components import Component
from avr_operator.render.names import CORE, metadata, selector_labels

Manifest = dict[str, Any]
API_VERSION = "monitoring.coreos.com/v1"


def pod_monitor(owner: AVRDeployment, c: Component) -> Manifest | None:
    """Scrapes /metrics on the core's `http` port in the resource's namespace; None unless asked for."""
    spec = owner.spec.monitoring.pod_monitor
    if not spec.enabled or c.role != CORE:
        return None
    meta = metadata(owner, c.role)
    # The operator's own labels win: pruning and the watches find children by them.
    meta["labels"] = {**spec.labels, **meta["labels"]}
    return {
        "apiVersion": API_VERSION,
        "kind": "PodMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": selector_labels(owner, CORE)},
            "podMetricsEndpoints": [
                {
                    "port": "http",
                    "path": "/metrics",
                    "interval": spec.interval,
                    "scrapeTimeout": spec.scrape_timeout,
                }
            ],
        },
    }
