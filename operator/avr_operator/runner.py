"""Starts the operator: logging, the metrics endpoint, then kopf with the handlers."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

import avr_operator.handlers  # noqa: F401  (registers the handlers)
from avr_operator import memory

try:  # kopf's own class; not part of its documented API, hence the fallback to kopf's default
    from kopf._core.reactor.inventory import ResourceMemories, ResourceMemory
except ImportError:  # pragma: no cover
    ResourceMemories = None  # type: ignore[assignment,misc]


if ResourceMemories is not None:

    class EventOnlyMemories(ResourceMemories):
        """kopf's per-object memory, kept for no object.

        kopf remembers every object it has seen until it is deleted (a copy of the memo, an error throttler,
        daemon and indexing state), children included, so it grows with every child of every resource. That state serves
        change handlers, daemons, timers and indexes; this operator has only event handlers, which keep
        nothing between events, so each event gets a fresh memory that is dropped once it is handled. (kopf's
        back-off after its own, non-handler errors on an object therefore starts afresh with each event.)
        """

        async def recall(self, raw_body: Any, **kwargs: Any) -> ResourceMemory:
            return await super().recall(raw_body, **{**kwargs, "ephemeral": True})


def memories() -> Any:
    """The memories to give kopf (None: kopf's default)."""
    return EventOnlyMemories() if ResourceMemories is not None else None


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
        memories=memories(),
    )
