"""kopf wiring only: watch AVRDeployments and their children, and hand every change to the work queue.

Only event handlers are used: they keep no state on the objects (no annotations, no finalizers), so the
operator can restart at any time; kopf's initial listing then re-triggers every resource.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import kopf

from avr_operator import metrics
from avr_operator.apply.cluster import Cluster
from avr_operator.apply.kube import KubeCluster
from avr_operator.apply.reconcile import reconcile
from avr_operator.constants import API_VERSION, FIELD_MANAGER, GROUP, KIND, LABEL_MANAGED_BY, PLURAL, VERSION
from avr_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

DEFAULT_RESYNC_SECONDS = 300.0

CHILD_RESOURCES = (
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("apps", "v1", "deployments"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
)


def make_work(cluster: Cluster) -> Any:
    async def work(namespace: str, name: str) -> float | None:
        body = await cluster.get(API_VERSION, KIND, namespace, name)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return None
        result = await reconcile(cluster, body)
        for event in result.events:
            kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message)
        return result.requeue_after

    return work


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"  # never used: no handler needs one
    cluster = memo.get("cluster") or KubeCluster.from_environment()
    memo["cluster"] = cluster
    memo["queue"] = WorkQueue(
        make_work(cluster), resync_seconds=float(memo.get("resync_seconds", DEFAULT_RESYNC_SECONDS))
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    queue: WorkQueue | None = memo.get("queue")
    if queue is not None:
        await queue.stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def resource_changed(type: str, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    queue: WorkQueue = memo["queue"]
    if namespace is None:
        return
    if type == "DELETED":
        queue.forget(namespace, name)  # children go with it (garbage collection)
    else:
        queue.trigger(namespace, name)
    metrics.MANAGED.set(len(queue))


def _owner(body: kopf.Body) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("apiVersion") == API_VERSION and ref.get("kind") == KIND and ref.get("controller"):
            return str(ref["name"])
    return None


async def child_changed(body: kopf.Body, namespace: str | None, memo: Any, **_: Any) -> None:
    """A child was created, edited, deleted or its status moved: re-check its owner (restores hand edits)."""
    owner = _owner(body)
    if owner is not None and namespace is not None:
        memo["queue"].trigger(namespace, owner)


for _group, _version, _plural in CHILD_RESOURCES:
    kopf.on.event(_group, _version, _plural, labels={LABEL_MANAGED_BY: FIELD_MANAGER}, id=f"child-{_plural}")(
        child_changed
    )


@kopf.on.probe(id="resources")
def probe_resources(memo: kopf.Memo, **_: Any) -> int:
    queue: WorkQueue | None = memo.get("queue")
    return len(queue) if queue is not None else 0
