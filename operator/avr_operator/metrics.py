"""Prometheus metrics of the operator itself."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("avr_operator_reconciles_total", "Reconciliations, by result.", ["result"])
RECONCILE_SECONDS = Histogram(
    "avr_operator_reconcile_duration_seconds",
    "Time of one reconciliation.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ERRORS = Counter("avr_operator_reconcile_errors_total", "Failed reconciliations, by reason.", ["reason"])
WRITES = Counter("avr_operator_writes_total", "Writes to the API server, by kind and verb.", ["kind", "verb"])
MANAGED = Gauge("avr_operator_managed_resources", "AVRDeployments the operator currently manages.")
