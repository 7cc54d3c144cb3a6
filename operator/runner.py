"""Starts the operator: logging, the metrics endpoint, then kopf with the handlers."""

from __future__ import annotations

import logging

import kopf
from prometheus_client import start_http_server

import avr_operator.handlers  # noqa: F401  (registers the handlers)
from avr_operator import memory


def run(
    *, namespaces: list[str], liveness: str | None, metrics_port: int, resync_seconds: float, verbose: bool
) -> None:
    memory.limit_arenas()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # kopf logs every handled watch event ("Handler ... succeeded"): thousands of lines per minute at scale.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if metrics_port:
        start_http_server(metrics_port)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        standalone=True,
        memo=kopf.Memo(resync_seconds=resync_seconds),
    )
