"""kopf wiring only: watch AVRDeployments and their children, and hand every change to the work queue.

Only event handlers are used: they keep no state on the objects (no annotations, no finalizers), so the
operator can restart at any time; kopf's initial listing then re-triggers every resource.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import kopf

from avr_operator import memory, metrics
from avr_operator.apply.cache import BodyCache, ChildCache, child_key
from avr_operator.apply.cluster import Cluster, Obj
from avr_operator.apply.kube import KubeCluster
from avr_operator.apply.reconcile import reconcile
from avr_operator.constants import API_VERSION, FIELD_MANAGER, GROUP, KIND, LABEL_MANAGED_BY, PLURAL, VERSION
from avr_operator.workqueue import GoneError, WorkQueue

log = logging.getLogger(__name__)

DEFAULT_RESYNC_SECONDS = 300.0
IDLE_WORKER_SECONDS = 0.5

CHILD_RESOURCES = (
    ("", "v1", "serviceaccounts"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("apps", "v1", "deployments"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    # Watched once KEDA's CRD exists (kopf notices CRDs appearing); without it, nothing to watch.
    ("keda.sh", "v1alpha1", "scaledobjects"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    # Likewise once prometheus-operator's CRDs exist.
    ("monitoring.coreos.com", "v1", "podmonitors"),
)


def make_work(cluster: Cluster, children: ChildCache, bodies: BodyCache) -> Any:
    async def work(namespace: str, name: str) -> float | None:
        body = bodies.get(namespace, name) or await cluster.get(API_VERSION, KIND, namespace, name)
        if body is None:
            raise GoneError
        if body.get("metadata", {}).get("deletionTimestamp"):
            return None
        result = await reconcile(cluster, body, cache=children)
        if result.patched is not None:
            bodies.put(result.patched)
        for event in result.events:
            kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message)
        return result.requeue_after

    return work


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    # kopf keeps a worker task per object for this long after its last event (default 5 s). Creating hundreds
    # of resources at once touches thousands of children within seconds: short-lived workers keep that burst,
    # and the memory it leaves behind, small.
    settings.queueing.idle_timeout = IDLE_WORKER_SECONDS
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"  # never used: no handler needs one
    cluster = memo.get("cluster") or KubeCluster.from_environment()
    memo["cluster"] = cluster
    memo["children"] = children = ChildCache(complete=True)
    memo["bodies"] = bodies = BodyCache()
    memo["trimmer"] = asyncio.create_task(memory.trim_periodically(), name="avr-malloc-trim")
    memo["queue"] = WorkQueue(
        make_work(cluster, children, bodies),
        resync_seconds=float(memo.get("resync_seconds", DEFAULT_RESYNC_SECONDS)),
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    queue: WorkQueue | None = memo.get("queue")
    if queue is not None:
        await queue.stop()
    trimmer: asyncio.Task[None] | None = memo.get("trimmer")
    if trimmer is not None:
        trimmer.cancel()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def resource_changed(
    event: kopf.RawEvent, type: str, name: str, namespace: str | None, memo: Any, **_: Any
) -> None:
    queue: WorkQueue = memo["queue"]
    if namespace is None:
        return
    if type == "DELETED":
        queue.forget(namespace, name)  # children go with it (garbage collection)
        memo["bodies"].forget(namespace, name)
    else:
        memo["bodies"].put(event["object"])
        queue.trigger(namespace, name)
    metrics.MANAGED.set(len(queue))


def _owner(body: kopf.Body) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("apiVersion") == API_VERSION and ref.get("kind") == KIND and ref.get("controller"):
            return str(ref["name"])
    return None


async def child_changed(
    event: kopf.RawEvent, type: str, body: kopf.Body, namespace: str | None, memo: Any, **_: Any
) -> None:
    """Record the child; re-check its owner when the child was created, edited or deleted (restores hand edits),
    or when a status field the owner reports moved. Other status churn (conditions' timestamps, PDB counts)
    costs no reconcile."""
    children: ChildCache = memo["children"]
    raw = cast(Obj, event["object"])
    if type == "DELETED":
        children.remove(child_key(raw))
        changed = True
    else:
        changed = children.put(raw)
    owner = _owner(body)
    if changed and owner is not None and namespace is not None:
        memo["queue"].trigger(namespace, owner)


for _group, _version, _plural in CHILD_RESOURCES:
    kopf.on.event(_group, _version, _plural, labels={LABEL_MANAGED_BY: FIELD_MANAGER}, id=f"child-{_plural}")(
        child_changed
    )


@kopf.on.probe(id="resources")
def probe_resources(memo: kopf.Memo, **_: Any) -> int:
    queue: WorkQueue | None = memo.get("queue")
    return len(queue) if queue is not None else 0
