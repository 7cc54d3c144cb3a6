"""Status from what was observed: conditions Ready / Progressing / Degraded and per-component replicas.

Pure, so the rules (e.g. lastTransitionTime moves only when a condition's status does) are unit-tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from avr_operator.render.names import CORE

Obj = dict[str, Any]


@dataclass(frozen=True)
class Observed:
    """Live children of one component (None: absent)."""

    deployment: Obj | None
    autoscaler: Obj | None = None


@dataclass(frozen=True)
class Problem:
    """Why the spec could not be realised: `reason` is a CamelCase condition reason."""

    reason: str
    message: str


@dataclass
class Health:
    desired: int = 0
    ready: int = 0
    updated: int = 0
    rolling: bool = False
    stuck: str | None = None
    autoscaler: Obj | None = field(default=None)


def _health(obs: Observed) -> Health:
    dep = obs.deployment
    if dep is None:
        return Health(rolling=True)
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    h = Health(
        desired=int(spec.get("replicas", 1)),
        ready=int(status.get("readyReplicas", 0)),
        updated=int(status.get("updatedReplicas", 0)),
    )
    current = int(status.get("observedGeneration", 0)) >= int(dep.get("metadata", {}).get("generation", 0))
    h.rolling = not current or h.updated < h.desired or int(status.get("replicas", 0)) > h.updated
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            h.stuck = f"rollout exceeded its progress deadline: {cond.get('message', '')}".strip()
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            h.stuck = f"cannot create pods: {cond.get('message', '')}".strip()
    if obs.autoscaler is not None:
        h.autoscaler = _autoscaler(obs.autoscaler)
        # A new Deployment starts with 1 pod until the HPA first raises it to its minimum: not ready before.
        h.desired = max(h.desired, int((obs.autoscaler.get("spec") or {}).get("minReplicas", 1)))
    return h


def _metric_value(metric: Mapping[str, Any]) -> tuple[str, str] | None:
    kind = metric.get("type")
    if kind == "Pods":
        pods = metric.get("pods") or {}
        return str(pods.get("metric", {}).get("name", "pods")), str(pods.get("current", {}).get("averageValue", ""))
    if kind == "Resource":
        res = metric.get("resource") or {}
        current = res.get("current") or {}
        value = current.get("averageUtilization")
        shown = f"{value}%" if value is not None else str(current.get("averageValue", ""))
        return str(res.get("name", "resource")), shown
    return None


def _autoscaler(hpa: Obj) -> Obj:
    status = hpa.get("status") or {}
    out: Obj = {}
    if "currentReplicas" in status:
        out["currentReplicas"] = int(status["currentReplicas"])
    if "desiredReplicas" in status:
        out["desiredReplicas"] = int(status["desiredReplicas"])
    metrics = dict(m for m in map(_metric_value, status.get("currentMetrics") or []) if m is not None)
    if metrics:
        out["currentMetrics"] = metrics
    return out


def _condition(ctype: str, ok: bool, reason: str, message: str, *, previous: list[Obj], now: str) -> Obj:
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == ctype), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status and old.get("lastTransitionTime") else now
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }


def compute_status(
    *,
    generation: int,
    observed: Mapping[str, Observed],
    problems: list[Problem],
    previous: Mapping[str, Any] | None,
    now: str,
) -> Obj:
    """The full status object. `observed` is keyed by component (core first); empty for an invalid spec."""
    prev_conditions: list[Obj] = list((previous or {}).get("conditions") or [])
    health = {role: _health(obs) for role, obs in observed.items()}
    names = {role: (obs.deployment or {}).get("metadata", {}).get("name", "") for role, obs in observed.items()}

    not_ready = [f"{r} {h.ready}/{h.desired}" for r, h in health.items() if h.ready < h.desired or h.rolling]
    stuck = [Problem("RolloutStuck", f"{r}: {h.stuck}") for r, h in health.items() if h.stuck]
    missing = [r for r, obs in observed.items() if obs.deployment is None]
    failures = problems + stuck
    ready = bool(observed) and not not_ready and not missing
    rolling = [r for r, h in health.items() if h.rolling]

    if ready:
        ready_reason, ready_msg = "AllComponentsReady", "every component has its pods ready"
    elif not observed:
        ready_reason, ready_msg = failures[0].reason if failures else "Unknown", "nothing deployed"
    else:
        ready_reason, ready_msg = "ComponentsNotReady", "waiting for " + ", ".join(not_ready or missing)
    progressing = bool(rolling) and not problems
    conditions = [
        _condition("Ready", ready, ready_reason, ready_msg, previous=prev_conditions, now=now),
        _condition(
            "Progressing",
            progressing,
            "RollingOut" if progressing else "Stable",
            ("rolling out " + ", ".join(rolling)) if progressing else "",
            previous=prev_conditions,
            now=now,
        ),
        _condition(
            "Degraded",
            bool(failures),
            failures[0].reason if failures else "AsExpected",
            "; ".join(p.message for p in failures),
            previous=prev_conditions,
            now=now,
        ),
    ]
    for cond in conditions:
        cond["observedGeneration"] = generation
    components: Obj = {}
    for role, h in health.items():
        comp: Obj = {
            "deployment": names[role],
            "desiredReplicas": h.desired,
            "readyReplicas": h.ready,
            "updatedReplicas": h.updated,
        }
        if h.autoscaler is not None:
            comp["autoscaler"] = h.autoscaler
        components[role] = comp
    status: Obj = {"observedGeneration": generation, "conditions": conditions, "components": components}
    if CORE in health:
        status["replicas"] = f"{health[CORE].ready}/{health[CORE].desired}"
    return status


def merge_diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> Obj | None:
    """The JSON merge patch (RFC 7386) turning `old` into `new`, or None when they are equal.

    Only changed keys are sent, and keys that disappeared are set to null (a plain merge would keep them).
    """
    old = old or {}
    patch: Obj = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_diff(before, value)
            if sub is not None:
                patch[key] = sub
        elif before != value or key not in old:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch or None
