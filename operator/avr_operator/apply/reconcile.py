"""One level-based reconciliation of an AVRDeployment: read, check, render, apply what differs, prune, report.

Safe to run any number of times and from any trigger (watch event, child change, restart, resync): it derives
everything from the current state, and writes nothing when the cluster already matches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from avr_operator import metrics
from avr_operator.api.resource import AVRDeployment, InvalidResourceError
from avr_operator.apply.cache import ChildCache, ChildKey, status_summary
from avr_operator.apply.cluster import ApiError, Cluster, Obj
from avr_operator.apply.preconditions import missing_references
from avr_operator.apply.ssa import execute, plan, prune
from avr_operator.constants import API_VERSION, KIND
from avr_operator.render.bundle import CHILD_KINDS, OPTIONAL_KINDS, key, render
from avr_operator.render.components import components
from avr_operator.render.names import owned_selector
from avr_operator.render.references import references
from avr_operator.render.status import Observed, Problem, compute_status, merge_diff

log = logging.getLogger(__name__)

# Re-check sooner while something is settling or broken, rather than waiting for the periodic resync.
RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the resource."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Result:
    writes: int = 0
    status: Obj = field(default_factory=dict)
    status_written: bool = False
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    patched: Obj | None = None  # the resource as the status patch returned it


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(status: Obj, ctype: str) -> Obj:
    found: Obj = next((c for c in status.get("conditions") or [] if c.get("type") == ctype), {})
    return found


def _validation_message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()[:5])
    return str(exc)


async def _observed(cluster: Cluster, cache: ChildCache, key: ChildKey) -> Obj | None:
    child = cache.get(key)
    if child is not None:
        return child.summary
    if cache.complete:
        return None
    live = await cluster.get(*key)
    return status_summary(live) if live is not None else None


async def _observe(cluster: Cluster, cache: ChildCache, res: AVRDeployment) -> dict[str, Observed]:
    """Deployments and autoscalers as last seen (from the cache; read when it does not know them)."""
    observed: dict[str, Observed] = {}
    for c in components(res):
        dep = await _observed(cluster, cache, ("apps/v1", "Deployment", res.namespace, c.name))
        hpa = None
        if c.autoscaling is not None:
            hpa = await _observed(cluster, cache, ("autoscaling/v2", "HorizontalPodAutoscaler", res.namespace, c.name))
        observed[c.role] = Observed(dep, hpa)
    return observed


async def _realise(cluster: Cluster, cache: ChildCache, res: AVRDeployment) -> tuple[int, list[Problem]]:
    """Preconditions, then every write; returns (writes, problems). Any problem means nothing was written."""
    problems = await missing_references(cluster, res.namespace, references(res.spec))
    if problems:
        return 0, problems
    manifests = render(res)
    optional = sorted(
        {(m["apiVersion"], m["kind"]) for m in manifests if (m["apiVersion"], m["kind"]) in OPTIONAL_KINDS}
    )
    unserved = [kind for kind in optional if not await cluster.served(*kind)]
    if unserved:
        # Reported, retried every RETRY_SECONDS (the add-on may be installed later); nothing half-applied.
        message = "; ".join(
            f"the cluster does not serve {api} {kind}: {OPTIONAL_KINDS[api, kind]}" for api, kind in unserved
        )
        return 0, [Problem("MissingAPI", message)]
    try:
        todo = await plan(cluster, manifests, cache)
    except ApiError as exc:
        return 0, [Problem("Rejected", f"the API server refused the manifests: {exc.message}")]
    try:
        writes = await execute(cluster, todo, cache)
        writes += await prune(
            cluster,
            namespace=res.namespace,
            owner_uid=res.uid,
            selector=owned_selector(res),
            kinds=CHILD_KINDS,
            keep={key(m) for m in manifests},
            cache=cache,
        )
    except ApiError as exc:
        return 0, [Problem("ApplyFailed", exc.message)]
    return writes, []


async def reconcile(cluster: Cluster, body: Obj, now: str | None = None, cache: ChildCache | None = None) -> Result:
    """Bring the children of `body` (an AVRDeployment read from the cluster) to what its spec asks for.

    `cache` holds what is known of the children (see `ChildCache`); without one, every child is read.
    """
    cache = cache if cache is not None else ChildCache()
    started = time.perf_counter()
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    previous: Obj = dict(body.get("status") or {})
    result = Result()
    try:
        res = AVRDeployment.from_body(body)
    except (ValidationError, InvalidResourceError) as exc:
        problems = [Problem("InvalidSpec", _validation_message(exc))]
        observed: dict[str, Observed] = {}
        generation = int(meta.get("generation") or 0)
    else:
        generation = res.generation
        result.writes, problems = await _realise(cluster, cache, res)
        observed = await _observe(cluster, cache, res)

    status = compute_status(
        generation=generation, observed=observed, problems=problems, previous=previous, now=now or _now()
    )
    patch = merge_diff(previous, status)
    if patch is not None:
        result.patched = await cluster.patch_status(API_VERSION, KIND, namespace, name, patch)
        metrics.WRITES.labels(KIND, "status").inc()
        result.status_written = True
    result.status = status

    degraded, was = _condition(status, "Degraded"), _condition(previous, "Degraded")
    if degraded.get("status") == "True":
        if (degraded.get("message"), was.get("status")) != (was.get("message"), "True"):
            result.events.append(Event("Warning", str(degraded["reason"]), str(degraded["message"])))
        metrics.ERRORS.labels(str(degraded["reason"])).inc()
        result.requeue_after = RETRY_SECONDS
    elif was.get("status") == "True":
        result.events.append(Event("Normal", "Recovered", "the spec is realised again"))
    if result.writes:
        result.events.append(Event("Normal", "Applied", f"{result.writes} child object(s) created or updated"))
    if _condition(status, "Ready").get("status") != "True":
        result.requeue_after = RETRY_SECONDS

    metrics.RECONCILES.labels("degraded" if degraded.get("status") == "True" else "ok").inc()
    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    log.debug("reconciled %s/%s: %d writes", namespace, name, result.writes)
    return result


def describe(result: Result) -> dict[str, Any]:
    """Short summary for logs."""
    return {"writes": result.writes, "status_written": result.status_written, "events": len(result.events)}
