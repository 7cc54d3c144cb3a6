"""The child cache: what counts as a change, resource-version order, verification, and the reconciler using it."""

from __future__ import annotations

import copy
from typing import Any

from avr_operator.apply.cache import BodyCache, ChildCache, child_key, content_digest, status_summary
from avr_operator.apply.reconcile import reconcile
from avr_operator.constants import API_VERSION, KIND
from avr_operator.testing import FakeCluster, mark_ready

OWNER = {"apiVersion": API_VERSION, "kind": KIND, "name": "demo", "uid": "u1", "controller": True}


def deployment(rv: str = "10", replicas: int = 2, ready: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "demo-core",
            "namespace": "calls",
            "uid": "d1",
            "resourceVersion": rv,
            "generation": 1,
            "ownerReferences": [OWNER],
            "managedFields": [{"manager": "x"}],
        },
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "core"}]}}},
        "status": {
            "observedGeneration": 1,
            "readyReplicas": ready,
            "conditions": [{"type": "Available", "lastUpdateTime": rv}],
        },
    }


def test_content_digest_ignores_status_and_volatile_metadata() -> None:
    a, b = deployment("10"), deployment("11", ready=2)
    b["metadata"]["managedFields"] = []
    b["metadata"]["generation"] = 7
    assert content_digest(a) == content_digest(b)
    c = deployment("12")
    c["metadata"]["labels"] = {"x": "y"}
    assert content_digest(c) != content_digest(a)
    assert content_digest(deployment("12", replicas=3)) != content_digest(a)


def test_summary_keeps_what_the_status_needs() -> None:
    summary = status_summary(deployment(ready=2))
    assert summary == {
        "metadata": {"name": "demo-core", "generation": 1},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 1, "readyReplicas": 2},
    }
    assert status_summary({"kind": "ConfigMap", "metadata": {"name": "x"}}) is None


def test_only_content_or_reported_status_counts_as_a_change() -> None:
    cache = ChildCache(complete=True)
    assert cache.put(deployment("10"))  # new
    assert not cache.put(deployment("11"))  # a timestamp in a condition: churn
    assert cache.put(deployment("12", ready=1))  # readiness moved: the status needs an update
    assert cache.put(deployment("13", replicas=5, ready=1))  # edited
    assert not cache.put(deployment("9", replicas=1))  # older than what is known: ignored
    assert cache.owned("u1") == [(child_key(deployment()), "d1")]
    cache.remove(child_key(deployment()))
    assert cache.owned("u1") == [] and len(cache) == 0


def test_entries_are_slim_and_share_common_strings() -> None:
    cache = ChildCache(complete=True)
    first, second = deployment("10", ready=1), deployment("11")
    second["metadata"].update(name="demo-sts", uid="d2")
    # Watch events decode fresh copies of every string: the cache keeps one of each shared value.
    for obj in (first, second):
        obj["metadata"]["namespace"] = "".join(["cal", "ls"])
        obj["metadata"]["ownerReferences"] = [{**OWNER, "uid": "".join(["u", "1"])}]
        cache.put(obj)
    one, two = child_key(first), child_key(second)
    assert one[2] is two[2] and one[1] is two[1]
    a, b = cache.get(one), cache.get(two)
    assert a is not None and b is not None and a.owner_uid is b.owner_uid
    assert a.summary == status_summary(first) and isinstance(a.packed_summary, bytes)


def test_verified_until_the_content_changes() -> None:
    cache = ChildCache(complete=True)
    key = child_key(deployment())
    cache.verify(key, "h1", deployment("10"))
    assert cache.in_sync(key, "h1") and not cache.in_sync(key, "h2")
    cache.put(deployment("11", ready=2))  # status only
    assert cache.in_sync(key, "h1")
    cache.put(deployment("12", replicas=9))  # a hand edit
    assert not cache.in_sync(key, "h1")
    recreated = deployment("13")
    recreated["metadata"]["uid"] = "d2"
    cache.put(recreated)
    assert not cache.in_sync(key, "h1")


def test_bodies_keep_the_newest_without_managed_fields() -> None:
    bodies = BodyCache()
    body = deployment("10")
    bodies.put(body)
    bodies.put(deployment("9", replicas=1))
    got = bodies.get("calls", "demo-core")
    assert got is not None and got["spec"]["replicas"] == 2 and "managedFields" not in got["metadata"]
    bodies.forget("calls", "demo-core")
    assert bodies.get("calls", "demo-core") is None


# --- the reconciler with a cache fed like the watches feed it ---

BODY: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": KIND,
    "metadata": {"name": "demo", "namespace": "calls"},
    "spec": {
        "core": {"image": "avr-runtime:test"},
        "providers": {"sts": {"image": "agentvoiceresponse/avr-sts-openai"}},
        "autoscaling": {"enabled": True, "minReplicas": 1},
    },
}


class CountingCluster(FakeCluster):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return await super().get(api_version, kind, namespace, name)

    async def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        self.reads += 1
        return await super().list(api_version, kind, namespace, label_selector)


def watch(cluster: FakeCluster, cache: ChildCache) -> None:
    """Deliver every child to the cache, as the watch events would."""
    for obj in cluster.objects.values():
        if obj["kind"] != KIND:
            obj["metadata"]["resourceVersion"] = str(int(obj["metadata"].get("resourceVersion", "0")) + 1)
            cache.put(copy.deepcopy(obj))


async def settled() -> tuple[CountingCluster, ChildCache]:
    cluster, cache = CountingCluster(), ChildCache(complete=True)
    cluster.add(BODY)
    await reconcile(cluster, cluster.resource(), now="t", cache=cache)
    mark_ready(cluster)
    watch(cluster, cache)
    await reconcile(cluster, cluster.resource(), now="t", cache=cache)
    watch(cluster, cache)
    return cluster, cache


async def test_a_settled_resource_costs_no_request() -> None:
    cluster, cache = await settled()
    cluster.reset_writes()
    cluster.reads = cluster.dry_runs = 0
    result = await reconcile(cluster, cluster.resource(), now="t", cache=cache)
    assert (result.writes, result.status_written, cluster.reads, cluster.dry_runs) == (0, False, 0, 0)
    assert result.status["conditions"][0]["status"] == "True"


async def test_a_hand_edit_seen_by_the_watch_is_repaired() -> None:
    cluster, cache = await settled()
    cm = cluster.find("ConfigMap", "demo-core")
    assert cm is not None
    cm["data"]["LOG_LEVEL"] = "debug"
    watch(cluster, cache)
    cluster.reset_writes()
    result = await reconcile(cluster, cluster.resource(), now="t", cache=cache)
    assert result.writes == 1 and cluster.writes == [("apply", "ConfigMap", "demo-core")]
    assert cm is not cluster.find("ConfigMap", "demo-core")


async def test_a_deleted_child_is_restored_and_pruning_uses_the_cache() -> None:
    cluster, cache = await settled()
    key = ("v1", "Service", "calls", "demo-sts")
    del cluster.objects[key]
    cache.remove(key)
    cluster.reset_writes()
    await reconcile(cluster, cluster.resource(), now="t", cache=cache)
    assert cluster.writes == [("apply", "Service", "demo-sts")]
    watch(cluster, cache)
    obj = cluster.objects[API_VERSION, KIND, "calls", "demo"]
    obj["spec"]["autoscaling"] = {"enabled": False}
    obj["metadata"]["generation"] += 1
    cluster.reset_writes()
    cluster.reads = 0
    await reconcile(cluster, cluster.resource(), now="t", cache=cache)
    assert ("delete", "HorizontalPodAutoscaler", "demo-core") in cluster.writes
    assert cluster.find("HorizontalPodAutoscaler", "demo-core") is None
    assert cache.get(("autoscaling/v2", "HorizontalPodAutoscaler", "calls", "demo-core")) is None
