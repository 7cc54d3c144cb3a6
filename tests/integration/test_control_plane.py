"""Smoke tests of the test harness itself: the control plane does what the operator's tests will rely on."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from avr_devcluster import eventually
from avr_devcluster.binaries import pinned_version
from avr_devcluster.testing import ClusterUnderTest

QUEUE_METRIC = "avr_queue_length"


def _meta(name: str) -> client.V1ObjectMeta:
    return client.V1ObjectMeta(name=name)


def _deployment(name: str, replicas: int) -> client.V1Deployment:
    labels = {"app": name}
    container = client.V1Container(name="main", image="example.invalid/app:1")
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels), spec=client.V1PodSpec(containers=[container])
            ),
        ),
    )


def _pods(api: client.ApiClient, namespace: str, app: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return [p for p in pods if p.metadata and p.metadata.deletion_timestamp is None]


def _name(obj: client.V1Pod | client.V1ConfigMap) -> str:
    assert obj.metadata and obj.metadata.name
    return obj.metadata.name


def _ready(pod: client.V1Pod) -> bool:
    conditions = (pod.status and pod.status.conditions) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def test_version_is_the_pinned_release(cluster: ClusterUnderTest, api_client: client.ApiClient) -> None:
    local = cluster.require_local()
    expected = pinned_version()
    assert client.VersionApi(api_client).get_code().git_version == expected
    kubectl = subprocess.run(
        [str(local.bin_dir / "kubectl"), "version", "--client", "-o", "json"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(kubectl.stdout)["clientVersion"]["gitVersion"] == expected


def test_deployment_pods_run_on_fake_nodes(api_client: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(namespace, _deployment("web", 3))

    def available() -> bool:
        status = apps.read_namespaced_deployment_status("web", namespace).status
        return status is not None and status.available_replicas == 3

    eventually(available, timeout=60, what="3 available replicas")
    pods = _pods(api_client, namespace, "web")
    assert len(pods) == 3
    for pod in pods:
        assert pod.spec and pod.spec.node_name and pod.spec.node_name.startswith("kwok-node-")
        assert pod.status and pod.status.phase == "Running"
        assert _ready(pod)


def test_deleting_an_owner_collects_its_dependents(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=_meta("owner")))
    assert owner.metadata and owner.metadata.uid
    reference = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    dependent = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[reference]))
    core.create_namespaced_config_map(namespace, dependent)
    core.delete_namespaced_config_map("owner", namespace)

    def collected() -> bool:
        return "dependent" not in {_name(cm) for cm in core.list_namespaced_config_map(namespace).items}

    eventually(collected, timeout=60, what="the garbage collector to delete the dependent")


def test_hpa_scales_on_a_custom_pod_metric(
    cluster: ClusterUnderTest, api_client: client.ApiClient, namespace: str
) -> None:
    local = cluster.require_local()
    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(namespace, _deployment("worker", 1))
    hpa = client.V2HorizontalPodAutoscaler(
        metadata=_meta("worker"),
        spec=client.V2HorizontalPodAutoscalerSpec(
            scale_target_ref=client.V2CrossVersionObjectReference(
                api_version="apps/v1", kind="Deployment", name="worker"
            ),
            min_replicas=1,
            max_replicas=3,
            metrics=[
                client.V2MetricSpec(
                    type="Pods",
                    pods=client.V2PodsMetricSource(
                        metric=client.V2MetricIdentifier(name=QUEUE_METRIC),
                        target=client.V2MetricTarget(type="AverageValue", average_value="10"),
                    ),
                )
            ],
            behavior=client.V2HorizontalPodAutoscalerBehavior(
                scale_up=client.V2HPAScalingRules(stabilization_window_seconds=0),
                scale_down=client.V2HPAScalingRules(stabilization_window_seconds=0),
            ),
        ),
    )
    client.AutoscalingV2Api(api_client).create_namespaced_horizontal_pod_autoscaler(namespace, hpa)

    def replicas_with_queue(length: int, wanted: int) -> bool:
        # New pods start without a value: keep every current pod's metric written while waiting.
        for pod in _pods(api_client, namespace, "worker"):
            local.set_pod_metric(namespace, _name(pod), QUEUE_METRIC, length)
        spec = apps.read_namespaced_deployment("worker", namespace).spec
        return spec is not None and spec.replicas == wanted

    eventually(lambda: replicas_with_queue(30, 3), timeout=90, what="scale-up to 3 replicas")
    eventually(lambda: replicas_with_queue(1, 1), timeout=90, what="scale-down to 1 replica")


def test_rbac_denies_an_unprivileged_service_account(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=_meta("nobody")))
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    status = core.create_namespaced_service_account_token("nobody", namespace, request).status
    assert status and status.token

    settings = client.Configuration()
    settings.host = api_client.configuration.host
    settings.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    settings.api_key = {"authorization": f"Bearer {status.token}"}
    with client.ApiClient(settings) as unprivileged:
        review = client.AuthenticationV1Api(unprivileged).create_self_subject_review(client.V1SelfSubjectReview())
        assert review.status and review.status.user_info
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:nobody"
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(unprivileged).list_namespaced_pod(namespace)
    assert denied.value.status == 403


def test_server_side_apply(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)

    def apply(manager: str, data: dict[str, str], force: bool = False) -> client.V1ConfigMap:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": data}
        return core.patch_namespaced_config_map(
            "applied",
            namespace,
            body,
            field_manager=manager,
            force=force,
            _content_type="application/apply-patch+yaml",
        )

    created = apply("first", {"owner": "first"})
    assert created.metadata and created.metadata.managed_fields
    assert {m.manager for m in created.metadata.managed_fields} == {"first"}
    with pytest.raises(ApiException) as conflict:
        apply("second", {"owner": "second"})
    assert conflict.value.status == 409
    assert apply("second", {"owner": "second"}, force=True).data == {"owner": "second"}


def test_write_counter_counts_writes(cluster: ClusterUnderTest, api_client: client.ApiClient, namespace: str) -> None:
    audit = cluster.require_local().audit
    core = client.CoreV1Api(api_client)

    mark = audit.mark()
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=_meta("counted")))
    core.patch_namespaced_config_map("counted", namespace, {"data": {"k": "v"}})
    core.read_namespaced_config_map("counted", namespace)
    core.delete_namespaced_config_map("counted", namespace)

    def verbs() -> list[str]:
        return [w.verb for w in audit.writes(mark, namespace=namespace, resource="configmaps", name="counted")]

    # The audit line is appended just after the response is sent: allow a moment.
    assert eventually(lambda: len(verbs()) >= 3 and verbs(), timeout=10) == ["create", "patch", "delete"]

    mark = audit.mark()
    core.read_namespace(namespace)
    core.list_namespaced_config_map(namespace)
    time.sleep(1)
    assert audit.writes(mark, namespace=namespace, resource="configmaps", name="counted") == []
