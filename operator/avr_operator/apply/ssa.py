"""Server-side apply that writes only when something would change, and pruning of children no longer wanted.

A reconcile that changes nothing must write nothing: the live object is compared with the desired manifest
first (cheap, exact when the API server kept our values verbatim), then with a dry-run apply (exact even when
the server canonicalised a value, e.g. a quantity, or when a field we set earlier must now be removed).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from avr_operator import metrics
from avr_operator.apply.cache import ChildCache, child_key
from avr_operator.apply.cluster import ApiError, Cluster, NotFoundError, Obj
from avr_operator.constants import ANNOTATION_SPEC_HASH, API_VERSION, FIELD_MANAGER, KIND

# Field manager used once to keep spec.replicas when the HPA takes over (see `needs_handover`).
HANDOVER_MANAGER = f"{FIELD_MANAGER}-handover"
# Field manager of the merge patch that replaces lists a hand edit made unappliable (see `plan`).
REPAIR_MANAGER = f"{FIELD_MANAGER}-repair"
_VOLATILE_META = ("managedFields", "resourceVersion")
T = TypeVar("T")
# A new RoleBinding cannot be dry-run before its Role exists: the API server resolves the roleRef to check that
# the operator holds what it grants (RBAC escalation prevention), and the Role is only created by this very
# plan. Its own content is fixed by the renderer; the Role it references is dry-run like everything else.
_UNPREVIEWABLE = frozenset({"RoleBinding"})
# Written before everything else: what other children refer to (a RoleBinding its Role, pods their account).
_FIRST_KINDS = frozenset({"ServiceAccount", "Role"})


def spec_hash(manifest: Obj) -> str:
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_hash(manifest: Obj) -> Obj:
    """The manifest annotated with its own hash: tells "unchanged since our last apply" without a diff."""
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**meta.get("annotations", {}), ANNOTATION_SPEC_HASH: spec_hash(manifest)}
    return {**manifest, "metadata": meta}


def is_subset(desired: Any, live: Any) -> bool:
    """Every value in `desired` is present, equal, in `live` (which may hold more: defaults, status)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and is_subset(v, live[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(map(is_subset, desired, live))
    return bool(desired == live)


def _comparable(obj: Obj) -> Obj:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in _VOLATILE_META}
    return {**obj, "metadata": meta}


def needs_handover(desired: Obj, live: Obj | None) -> bool:
    """True when we stop setting Deployment replicas (an HPA takes over) but still own the field.

    Applying without a field we solely own deletes it, and a Deployment without replicas defaults to 1: every
    pod but one would be stopped. Applying the current value once under a second manager keeps the field
    (Kubernetes docs, "Transferring ownership"); the HPA changes it from then on.
    """
    if live is None or desired["kind"] != "Deployment" or "replicas" in desired.get("spec", {}):
        return False
    for entry in live.get("metadata", {}).get("managedFields") or []:
        ours = entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply"
        if ours and "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {}):
            return True
    return False


@dataclass
class Plan:
    """What one reconcile will write: decided entirely before the first write."""

    writes: list[Obj]
    handovers: list[Obj]
    repairs: list[Obj] = field(default_factory=list)


@dataclass(frozen=True)
class _Change:
    desired: Obj
    handover: Obj | None = None
    repair: bool = False


def _spec_hash_of(desired: Obj) -> str:
    return str(desired["metadata"]["annotations"][ANNOTATION_SPEC_HASH])


async def _check(cluster: Cluster, cache: ChildCache, manifest: Obj) -> _Change | None:
    """None when the child already matches `manifest`; else what to write. Raises when the server refuses it."""
    desired = with_hash(manifest)
    key, wanted = child_key(desired), _spec_hash_of(desired)
    if cache.in_sync(key, wanted):
        return None
    live = await cluster.get(*key)
    if live is None:
        cache.remove(key)
        if desired["kind"] in _UNPREVIEWABLE:
            return _Change(desired)
    elif is_subset(desired, live):
        cache.verify(key, wanted, live)
        return None
    try:
        preview = await cluster.apply(desired, field_manager=FIELD_MANAGER, dry_run=True)
    except ApiError as exc:
        if live is None or exc.status != 422:
            raise
        # A list entry another manager owns can clash with ours, and applying never removes it: a Service
        # port changed by hand is a new entry whose name duplicates ours. A merge patch replaces such lists
        # whole; the apply then succeeds. Refused too: the manifest itself is invalid (raises).
        await cluster.merge_patch(desired, field_manager=REPAIR_MANAGER, dry_run=True)
        return _Change(desired, live if needs_handover(desired, live) else None, repair=True)
    if live is not None and _comparable(preview) == _comparable(live):
        cache.verify(key, wanted, live)
        return None
    return _Change(desired, live if needs_handover(desired, live) else None)


async def _gather(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently; every call finishes before the first failure is raised."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[T], results)


async def plan(cluster: Cluster, manifests: Iterable[Obj], cache: ChildCache | None = None) -> Plan:
    """Compare each manifest with the cluster; dry-runs also make the server validate everything up front.

    Children the cache confirms unchanged since they last matched cost nothing; the others cost a GET, and a
    dry-run apply when the live object differs. All children are checked concurrently.
    """
    cache = cache if cache is not None else ChildCache()
    result = Plan([], [])
    for change in await _gather(_check(cluster, cache, m) for m in manifests):
        if change is None:
            continue
        result.writes.append(change.desired)
        if change.handover is not None:
            result.handovers.append(change.handover)
        if change.repair:
            result.repairs.append(change.desired)
    return result


async def _apply(cluster: Cluster, cache: ChildCache, desired: Obj) -> None:
    applied = await cluster.apply(desired, field_manager=FIELD_MANAGER)
    metrics.WRITES.labels(desired["kind"], "apply").inc()
    cache.verify(child_key(desired), _spec_hash_of(desired), applied)


async def execute(cluster: Cluster, todo: Plan, cache: ChildCache | None = None) -> int:
    """Write the plan: handovers and repairs first, then the workers' account and Role, then configuration (and
    the RoleBinding), then the Deployments that read it."""
    cache = cache if cache is not None else ChildCache()
    for live in todo.handovers:
        meta = live["metadata"]
        keep = {
            "apiVersion": live["apiVersion"],
            "kind": live["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": live["spec"]["replicas"]},
        }
        await cluster.apply(keep, field_manager=HANDOVER_MANAGER)
        metrics.WRITES.labels(live["kind"], "handover").inc()
    for desired in todo.repairs:
        await cluster.merge_patch(desired, field_manager=REPAIR_MANAGER)
        metrics.WRITES.labels(desired["kind"], "apply").inc()
    first = [d for d in todo.writes if d["kind"] in _FIRST_KINDS]
    second = [d for d in todo.writes if d["kind"] not in _FIRST_KINDS and d["kind"] != "Deployment"]
    then = [d for d in todo.writes if d["kind"] == "Deployment"]
    for wave in (first, second, then):
        await _gather(_apply(cluster, cache, d) for d in wave)
    return len(todo.writes) + len(todo.handovers) + len(todo.repairs)


def _owned_by(obj: Obj, uid: str) -> bool:
    return any(
        ref.get("uid") == uid and ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION
        for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )


async def prune(
    cluster: Cluster,
    *,
    namespace: str,
    owner_uid: str,
    selector: str,
    kinds: Iterable[tuple[str, str]],
    keep: set[tuple[str, str, str]],
    cache: ChildCache | None = None,
) -> int:
    """Delete children of this owner the spec no longer produces (e.g. the HPA once autoscaling is off).

    A complete cache (fed by watches) knows every child: then no LIST is needed.
    """
    kinds = list(kinds)
    found: list[tuple[str, str, str, str]] = []  # apiVersion, kind, name, uid
    if cache is not None and cache.complete:
        found = [(k[0], k[1], k[3], uid) for k, uid in cache.owned(owner_uid) if k[2] == namespace]
        found = [f for f in found if f[:2] in kinds]
    else:
        for api_version, kind in kinds:
            try:
                listed = await cluster.list(api_version, kind, namespace, selector)
            except NotFoundError:  # an optional API the cluster does not serve: nothing of that kind exists
                continue
            for obj in listed:
                if _owned_by(obj, owner_uid):
                    found.append((api_version, kind, obj["metadata"]["name"], obj["metadata"]["uid"]))
    deleted = 0
    for api_version, kind, name, uid in found:
        if (api_version, kind, name) in keep:
            continue
        await cluster.delete(api_version, kind, namespace, name, uid)
        metrics.WRITES.labels(kind, "delete").inc()
        if cache is not None:
            cache.remove((api_version, kind, namespace, name))
        deleted += 1
    return deleted
