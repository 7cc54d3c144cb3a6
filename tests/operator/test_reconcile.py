"""The reconciler against an in-memory API server: idempotence, drift repair, preconditions, pruning."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from avr_operator.apply.reconcile import reconcile
from avr_operator.constants import API_VERSION, KIND
from avr_operator.testing import FakeCluster, mark_ready

BODY: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": KIND,
    "metadata": {"name": "demo", "namespace": "calls"},
    "spec": {
        "core": {"image": "avr-runtime:test", "envFrom": [{"secretRef": {"name": "keys"}}]},
        "providers": {"sts": {"image": "agentvoiceresponse/avr-sts-openai"}},
    },
}
SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "keys", "namespace": "calls"},
    "data": {},
}


def cluster_with(spec: dict[str, Any] | None = None, secret: bool = True) -> FakeCluster:
    cluster = FakeCluster()
    body = copy.deepcopy(BODY)
    if spec is not None:
        body["spec"] = spec
    cluster.add(body)
    if secret:
        cluster.add(SECRET)
    return cluster


def set_spec(cluster: FakeCluster, **changes: Any) -> None:
    obj = cluster.objects[API_VERSION, KIND, "calls", "demo"]
    obj["spec"].update(changes)
    obj["metadata"]["generation"] += 1


async def run(cluster: FakeCluster) -> Any:
    return await reconcile(cluster, cluster.resource(), now="2030-01-01T00:00:00Z")


def condition(cluster: FakeCluster, ctype: str) -> dict[str, Any]:
    conditions = cluster.resource()["status"]["conditions"]
    found: dict[str, Any] = next(c for c in conditions if c["type"] == ctype)
    return found


async def test_first_reconcile_creates_every_child_and_the_second_writes_nothing() -> None:
    cluster = cluster_with()
    first = await run(cluster)
    assert cluster.kinds() == [
        ("ConfigMap", "demo-core"), ("ConfigMap", "demo-sts"), ("Deployment", "demo-core"),
        ("Deployment", "demo-sts"), ("Role", "demo-core"), ("RoleBinding", "demo-core"), ("Secret", "keys"),
        ("Service", "demo-core"), ("Service", "demo-core-peers"), ("Service", "demo-sts"),
        ("ServiceAccount", "demo-avr-worker"),
    ]  # fmt: skip
    assert first.writes == 10 and first.status_written
    cluster.reset_writes()
    second = await run(cluster)
    assert second.writes == 0 and not second.status_written
    assert cluster.writes == []
    assert cluster.dry_runs == 9  # only the first reconcile needed previews (a new RoleBinding gets none)


async def test_child_ownership_and_status() -> None:
    cluster = cluster_with()
    await run(cluster)
    res = cluster.resource()
    for kind, name in cluster.kinds():
        if kind != "Secret":
            obj = cluster.find(kind, name)
            assert obj is not None
            assert obj["metadata"]["ownerReferences"][0]["uid"] == res["metadata"]["uid"]
    status = res["status"]
    assert status["observedGeneration"] == 1
    assert status["replicas"] == "0/3"
    assert condition(cluster, "Ready")["status"] == "False"
    assert condition(cluster, "Progressing")["status"] == "True"
    assert condition(cluster, "Degraded")["status"] == "False"
    assert status["components"]["core"]["desiredReplicas"] == 3


async def test_ready_once_rollouts_finish_and_transition_times_stay_put() -> None:
    cluster = cluster_with()
    await run(cluster)
    degraded_since = condition(cluster, "Degraded")["lastTransitionTime"]
    mark_ready(cluster)
    result = await reconcile(cluster, cluster.resource(), now="2030-01-01T00:05:00Z")
    assert result.requeue_after is None
    ready = condition(cluster, "Ready")
    assert (ready["status"], ready["reason"], ready["lastTransitionTime"]) == (
        "True", "AllComponentsReady", "2030-01-01T00:05:00Z",
    )  # fmt: skip
    assert condition(cluster, "Degraded")["lastTransitionTime"] == degraded_since
    assert cluster.resource()["status"]["replicas"] == "3/3"


async def test_a_deleted_child_is_restored() -> None:
    cluster = cluster_with()
    await run(cluster)
    del cluster.objects["v1", "Service", "calls", "demo-core"]
    cluster.reset_writes()
    result = await run(cluster)
    assert result.writes == 1 and cluster.writes == [("apply", "Service", "demo-core")]


async def test_a_hand_edit_is_reverted() -> None:
    cluster = cluster_with()
    await run(cluster)
    dep = cluster.find("Deployment", "demo-core")
    assert dep is not None
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    await run(cluster)
    dep = cluster.find("Deployment", "demo-core")
    assert dep is not None and dep["spec"]["template"]["spec"]["containers"][0]["image"] == "avr-runtime:test"


async def test_a_hand_edit_that_blocks_applying_is_repaired() -> None:
    """A Service port changed by hand leaves an entry of another manager that makes our apply invalid."""
    cluster = cluster_with()
    await run(cluster)
    service = cluster.find("Service", "demo-core")
    assert service is not None
    wanted = copy.deepcopy(service["spec"]["ports"])
    service["spec"]["ports"][1]["port"] = 3999
    cluster.clashing.add(("v1", "Service", "calls", "demo-core"))
    cluster.reset_writes()
    await run(cluster)
    assert cluster.writes[:2] == [("merge-patch", "Service", "demo-core"), ("apply", "Service", "demo-core")]
    repaired = cluster.find("Service", "demo-core")
    assert repaired is not None and repaired["spec"]["ports"] == wanted
    assert condition(cluster, "Degraded")["status"] == "False"


async def test_a_refused_manifest_is_not_repaired_by_a_patch() -> None:
    cluster = cluster_with()
    await run(cluster)
    cluster.reject_kinds.add("Service")
    set_spec(cluster, service={"type": "NodePort"})
    cluster.reset_writes()
    await run(cluster)
    assert [w for w in cluster.writes if w[0] != "status"] == []
    assert condition(cluster, "Degraded")["reason"] == "Rejected"


async def test_missing_secret_degrades_without_writing_anything() -> None:
    cluster = cluster_with(secret=False)
    result = await run(cluster)
    assert result.writes == 0 and cluster.kinds() == []
    degraded = condition(cluster, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "MissingReference")
    assert "Secret 'keys' (core.envFrom[0]) not found" in degraded["message"]
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "MissingReference")]
    assert result.requeue_after is not None
    # The same problem again: no new event, no status write.
    cluster.reset_writes()
    again = await run(cluster)
    assert again.events == [] and cluster.writes == []
    # The Secret appears: everything is applied and the resource recovers.
    cluster.add(SECRET)
    fixed = await run(cluster)
    assert fixed.writes == 10
    assert condition(cluster, "Degraded")["status"] == "False"
    assert ("Normal", "Recovered") in [(e.type, e.reason) for e in fixed.events]


async def test_missing_secret_key_is_named() -> None:
    spec = copy.deepcopy(BODY["spec"])
    spec["providers"]["sts"]["env"] = [
        {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "openai"}}}
    ]
    cluster = cluster_with(spec)
    await run(cluster)
    assert "has no key 'openai' (providers.sts.env[OPENAI_API_KEY])" in condition(cluster, "Degraded")["message"]
    assert cluster.kinds() == [("Secret", "keys")]


async def test_an_invalid_spec_is_reported_not_applied() -> None:
    spec = copy.deepcopy(BODY["spec"])
    spec["autoscaling"] = {"minReplicas": 9, "maxReplicas": 2}
    cluster = cluster_with(spec)
    result = await run(cluster)
    assert result.writes == 0 and cluster.kinds() == [("Secret", "keys")]
    degraded = condition(cluster, "Degraded")
    assert degraded["reason"] == "InvalidSpec" and "minReplicas must not exceed maxReplicas" in degraded["message"]


async def test_a_server_refusal_leaves_nothing_half_applied() -> None:
    cluster = cluster_with()
    cluster.reject_kinds.add("Deployment")
    result = await run(cluster)
    assert result.writes == 0 and cluster.kinds() == [("Secret", "keys")]
    assert condition(cluster, "Degraded")["reason"] == "Rejected"


async def test_enabling_autoscaling_hands_replicas_to_the_hpa_without_scaling_down() -> None:
    cluster = cluster_with()
    await run(cluster)
    mark_ready(cluster)
    set_spec(cluster, autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 8})
    await run(cluster)
    dep = cluster.find("Deployment", "demo-core")
    assert dep is not None and dep["spec"]["replicas"] == 3  # not reset to 1
    managers = {e["manager"] for e in dep["metadata"]["managedFields"]}
    assert managers == {"avr-operator", "avr-operator-handover"}
    hpa = cluster.find("HorizontalPodAutoscaler", "demo-core")
    assert hpa is not None and hpa["spec"]["maxReplicas"] == 8
    # The HPA now scales; the operator leaves replicas alone and writes nothing.
    dep["spec"]["replicas"] = 6
    cluster.reset_writes()
    mark_ready(cluster)
    hpa["status"] = {
        "currentReplicas": 6,
        "desiredReplicas": 6,
        "currentMetrics": [
            {
                "type": "Pods",
                "pods": {"metric": {"name": "avr_queue_length"}, "current": {"averageValue": "4"}},
            }
        ],
    }
    result = await run(cluster)
    assert result.writes == 0
    assert cluster.find("Deployment", "demo-core")["spec"]["replicas"] == 6  # type: ignore[index]
    core = cluster.resource()["status"]["components"]["core"]
    assert core["autoscaler"] == {
        "currentReplicas": 6, "desiredReplicas": 6, "currentMetrics": {"avr_queue_length": "4"},
    }  # fmt: skip


async def test_disabling_autoscaling_prunes_the_hpa() -> None:
    spec = copy.deepcopy(BODY["spec"])
    spec["autoscaling"] = {"enabled": True}
    cluster = cluster_with(spec)
    await run(cluster)
    assert cluster.find("HorizontalPodAutoscaler", "demo-core") is not None
    set_spec(cluster, autoscaling={"enabled": False})
    await run(cluster)
    assert cluster.find("HorizontalPodAutoscaler", "demo-core") is None
    dep = cluster.find("Deployment", "demo-core")
    assert dep is not None and dep["spec"]["replicas"] == 3


async def test_switching_providers_prunes_the_old_ones_and_their_status() -> None:
    cluster = cluster_with()
    await run(cluster)
    set_spec(cluster, providers={"asr": {"image": "a"}, "llm": {"image": "l"}, "tts": {"image": "t"}})
    await run(cluster)
    names = {name for kind, name in cluster.kinds() if kind == "Deployment"}
    assert names == {"demo-core", "demo-asr", "demo-llm", "demo-tts"}
    assert cluster.find("ConfigMap", "demo-sts") is None and cluster.find("Service", "demo-sts") is None
    assert set(cluster.resource()["status"]["components"]) == {"core", "asr", "llm", "tts"}
    config = cluster.find("ConfigMap", "demo-core")
    assert config is not None and "STS_URL" not in config["data"]


async def test_objects_of_someone_else_are_never_pruned() -> None:
    cluster = cluster_with()
    await run(cluster)
    stranger = copy.deepcopy(cluster.find("ConfigMap", "demo-core"))
    assert stranger is not None
    stranger["metadata"] = {**stranger["metadata"], "name": "lookalike", "ownerReferences": []}
    del stranger["metadata"]["uid"]
    cluster.add(stranger)
    await run(cluster)
    assert cluster.find("ConfigMap", "lookalike") is not None


@pytest.mark.parametrize("availability", [{"enabled": True}, {"enabled": True, "minAvailable": 1}])
async def test_disruption_budgets_follow_the_spec(availability: dict[str, Any]) -> None:
    spec = copy.deepcopy(BODY["spec"])
    spec["availability"] = availability
    cluster = cluster_with(spec)
    await run(cluster)
    assert cluster.find("PodDisruptionBudget", "demo-core") is not None
    set_spec(cluster, availability={"enabled": False})
    await run(cluster)
    assert cluster.find("PodDisruptionBudget", "demo-core") is None


async def test_the_workers_role_is_written_before_its_binding() -> None:
    """A RoleBinding is refused while its Role does not exist (for a non-admin writer): the Role goes first."""
    cluster = cluster_with()
    await run(cluster)
    applied = [name for verb, kind, name in cluster.writes if verb == "apply" and kind in ("Role", "RoleBinding")]
    kinds = [kind for verb, kind, _ in cluster.writes if verb == "apply"]
    assert applied == ["demo-core", "demo-core"]
    assert kinds.index("Role") < kinds.index("RoleBinding") < kinds.index("Deployment")
    assert kinds.index("ServiceAccount") < kinds.index("Deployment")


KEDA_SPEC = {"enabled": True, "engine": "keda", "keda": {"serverAddress": "http://prometheus:9090"}}


async def test_keda_not_installed_is_reported_without_writing_children() -> None:
    cluster = cluster_with({**BODY["spec"], "autoscaling": KEDA_SPEC})
    result = await run(cluster)
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "MissingAPI")
    assert "keda.sh/v1alpha1 ScaledObject" in degraded["message"]
    assert [w for w in cluster.writes if w[0] != "status"] == []
    assert result.requeue_after is not None  # retried: KEDA may be installed later
    # Once KEDA is there, the ScaledObject is created and the problem clears.
    cluster.served_kinds.add(("keda.sh/v1alpha1", "ScaledObject"))
    result = await run(cluster)
    assert cluster.find("ScaledObject", "demo-core") is not None
    assert cluster.find("HorizontalPodAutoscaler", "demo-core") is None
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False"


POD_MONITOR = ("monitoring.coreos.com/v1", "PodMonitor")


async def test_pod_monitor_without_prometheus_operator_is_reported_without_writing_children() -> None:
    cluster = cluster_with({**BODY["spec"], "monitoring": {"podMonitor": {"enabled": True}}})
    result = await run(cluster)
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "MissingAPI")
    assert "monitoring.coreos.com/v1 PodMonitor" in degraded["message"]
    assert "monitoring.podMonitor.enabled: false" in degraded["message"]
    assert "KEDA" not in degraded["message"]
    assert [w for w in cluster.writes if w[0] != "status"] == []
    assert result.requeue_after is not None
    cluster.served_kinds.add(POD_MONITOR)
    result = await run(cluster)
    assert cluster.find("PodMonitor", "demo-core") is not None
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False"
    # Turned off again: pruned like any child.
    set_spec(cluster, monitoring={"podMonitor": {"enabled": False}})
    await run(cluster)
    assert cluster.find("PodMonitor", "demo-core") is None


async def test_both_missing_apis_are_named() -> None:
    spec = {**BODY["spec"], "autoscaling": KEDA_SPEC, "monitoring": {"podMonitor": {"enabled": True}}}
    cluster = cluster_with(spec)
    result = await run(cluster)
    message = next(c for c in result.status["conditions"] if c["type"] == "Degraded")["message"]
    assert "keda.sh/v1alpha1 ScaledObject" in message and "monitoring.coreos.com/v1 PodMonitor" in message


async def test_network_policies_are_created_and_pruned() -> None:
    policy = {"enabled": True, "audioSocketFrom": [{"ipBlock": {"cidr": "10.20.0.0/24"}}]}
    cluster = cluster_with({**BODY["spec"], "networkPolicy": policy})
    await run(cluster)
    assert cluster.find("NetworkPolicy", "demo-core") is not None
    assert cluster.find("NetworkPolicy", "demo-sts") is not None
    cluster.reset_writes()
    await run(cluster)
    assert [w for w in cluster.writes if w[0] != "status"] == []
    set_spec(cluster, networkPolicy={"enabled": False})
    await run(cluster)
    assert cluster.find("NetworkPolicy", "demo-core") is None and cluster.find("NetworkPolicy", "demo-sts") is None


async def test_a_missing_api_token_secret_is_a_missing_reference() -> None:
    core = {**BODY["spec"]["core"], "apiTokenSecretRef": {"name": "avr-api", "key": "token"}}
    cluster = cluster_with({**BODY["spec"], "core": core})
    result = await run(cluster)
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "MissingReference"
    assert "core.apiTokenSecretRef" in degraded["message"]
    assert [w for w in cluster.writes if w[0] != "status"] == []
