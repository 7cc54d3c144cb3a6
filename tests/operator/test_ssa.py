"""Change detection and replica handover of the apply layer, and the REST paths of the real client."""

from __future__ import annotations

from typing import Any

from avr_operator.apply.kube import resource_path
from avr_operator.apply.ssa import is_subset, needs_handover, spec_hash, with_hash
from avr_operator.constants import ANNOTATION_SPEC_HASH


def test_subset_allows_server_additions_but_not_changes() -> None:
    desired = {"spec": {"ports": [{"port": 1}], "type": "ClusterIP"}}
    assert is_subset(desired, {"spec": {"ports": [{"port": 1, "protocol": "TCP"}], "type": "ClusterIP", "x": 1}})
    assert not is_subset(desired, {"spec": {"ports": [{"port": 2}], "type": "ClusterIP"}})
    assert not is_subset(desired, {"spec": {"ports": [{"port": 1}, {"port": 2}], "type": "ClusterIP"}})
    assert not is_subset(desired, {"spec": {"ports": [{"port": 1}]}})


def test_hash_annotation_tracks_the_manifest() -> None:
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "a"},
        "data": {},
    }
    annotated = with_hash(manifest)
    assert annotated["metadata"]["annotations"][ANNOTATION_SPEC_HASH] == spec_hash(manifest)
    assert "annotations" not in manifest["metadata"]  # the input is not modified
    assert spec_hash({**manifest, "data": {"k": "v"}}) != spec_hash(manifest)


def _deployment(replicas: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"replicas": 3} if replicas else {}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": spec}


def _live(manager: str) -> dict[str, Any]:
    entry = {"manager": manager, "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    return {**_deployment(True), "metadata": {"name": "d", "managedFields": [entry]}}


def test_handover_only_when_we_drop_replicas_we_own() -> None:
    assert needs_handover(_deployment(False), _live("avr-operator"))
    assert not needs_handover(_deployment(True), _live("avr-operator"))
    assert not needs_handover(_deployment(False), _live("someone-else"))
    assert not needs_handover(_deployment(False), None)


def test_resource_paths() -> None:
    assert resource_path("v1", "ConfigMap", "ns", "a") == "/api/v1/namespaces/ns/configmaps/a"
    assert resource_path("apps/v1", "Deployment", "ns") == "/apis/apps/v1/namespaces/ns/deployments"
    assert (
        resource_path("avr.agentvoiceresponse.com/v1alpha1", "AVRDeployment", "ns", "x")
        == "/apis/avr.agentvoiceresponse.com/v1alpha1/namespaces/ns/avrdeployments/x"
    )
    assert resource_path("autoscaling/v2", "HorizontalPodAutoscaler", "n", "h").endswith("horizontalpodautoscalers/h")
