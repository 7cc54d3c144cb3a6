"""Scale-in that keeps calls: a core worker may set its own pod's deletion cost, and nothing else.

The Role the operator renders allows patching any pod of the namespace (RBAC cannot say "your own pod"); the
chart's ValidatingAdmissionPolicy narrows it. Proven on the real API server with a token bound to pod A, as
the kubelet gives the worker: patching A's deletion cost works, patching B or a label of A is refused.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from avr_devcluster import eventually
from avr_operator.api.resource import AVRDeployment
from avr_operator.render.bundle import render
from avr_operator.render.policy import DELETION_COST, POLICY_NAME, worker_pod_policy
from tests.integration.operator.helpers import minimal

pytestmark = pytest.mark.integration


@pytest.fixture
def policy(api_client: client.ApiClient) -> Iterator[None]:
    admission: Any = client.AdmissionregistrationV1Api(api_client)
    vap, binding = worker_pod_policy()
    for create, body in (
        (admission.create_validating_admission_policy, vap),
        (admission.create_validating_admission_policy_binding, binding),
    ):
        try:
            create(copy.deepcopy(body))
        except ApiException as exc:
            if exc.status != 409:
                raise
    yield
    admission.delete_validating_admission_policy_binding(POLICY_NAME)
    admission.delete_validating_admission_policy(POLICY_NAME)


def _create_access(api: client.ApiClient, namespace: str) -> str:
    """The ServiceAccount, Role and RoleBinding the operator renders for a core; returns the account's name."""
    body = minimal("demo")
    body["metadata"]["namespace"] = namespace
    manifests = {m["kind"]: m for m in render(AVRDeployment.from_body(body)) if m["metadata"]["name"] != "demo-sts"}
    core: Any = client.CoreV1Api(api)
    rbac: Any = client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, manifests["ServiceAccount"])
    rbac.create_namespaced_role(namespace, manifests["Role"])
    rbac.create_namespaced_role_binding(namespace, manifests["RoleBinding"])
    account: str = manifests["ServiceAccount"]["metadata"]["name"]
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account and pod["automountServiceAccountToken"] is True
    return account


def _pod(api: client.ApiClient, namespace: str, name: str, account: str) -> Any:
    """A pod running as the workers' account (as the core Deployment's pods do)."""
    body = {
        "metadata": {"name": name, "labels": {"app": "worker"}},
        "spec": {"serviceAccountName": account, "containers": [{"name": "core", "image": "avr-runtime:test"}]},
    }
    core: Any = client.CoreV1Api(api)
    return core.create_namespaced_pod(namespace, body)


def _client_for(api: client.ApiClient, token: str) -> client.ApiClient:
    config = copy.copy(api.configuration)
    config.api_key = {"authorization": token}
    config.api_key_prefix = {"authorization": "Bearer"}
    config.cert_file = config.key_file = None
    return client.ApiClient(config)


def _patch(api: client.ApiClient, namespace: str, pod: str, meta: dict[str, Any]) -> None:
    core: Any = client.CoreV1Api(api)
    core.patch_namespaced_pod(pod, namespace, {"metadata": meta}, _content_type="application/merge-patch+json")


def _refused(api: client.ApiClient, namespace: str, pod: str, meta: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as refused:
        _patch(api, namespace, pod, meta)
    assert refused.value.status in (403, 422), refused.value.body
    return str(refused.value.body)


def test_a_worker_sets_only_its_own_pods_deletion_cost(
    api_client: client.ApiClient, namespace: str, policy: None
) -> None:
    account = _create_access(api_client, namespace)
    a, b = _pod(api_client, namespace, "pod-a", account), _pod(api_client, namespace, "pod-b", account)
    _pod(api_client, namespace, "pod-probe", account)
    request = {
        "spec": {
            "audiences": [],
            "expirationSeconds": 3600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": a.metadata.name, "uid": a.metadata.uid},
        }
    }
    core: Any = client.CoreV1Api(api_client)
    token = core.create_namespaced_service_account_token(account, namespace, request).status.token
    worker = _client_for(api_client, token)

    # The policy takes a moment to be enforced: wait until a third pod is refused (before that, RBAC alone lets
    # the worker patch it, which is what the policy is for).
    def other_pod_refused() -> bool:
        try:
            _patch(worker, namespace, "pod-probe", {"annotations": {DELETION_COST: "1"}})
        except ApiException as exc:
            return exc.status in (403, 422)
        return False

    eventually(other_pod_refused, timeout=30, what="the admission policy to refuse another pod")
    assert POLICY_NAME in _refused(worker, namespace, "pod-b", {"annotations": {DELETION_COST: "2"}})
    assert DELETION_COST not in (core.read_namespaced_pod("pod-b", namespace).metadata.annotations or {})

    # Its own pod's deletion cost: allowed, set and changed.
    _patch(worker, namespace, "pod-a", {"annotations": {DELETION_COST: "7"}})
    _patch(worker, namespace, "pod-a", {"annotations": {DELETION_COST: "3"}})
    assert core.read_namespaced_pod("pod-a", namespace).metadata.annotations[DELETION_COST] == "3"

    # Anything else on its own pod: refused.
    assert "only change the annotation" in _refused(worker, namespace, "pod-a", {"labels": {"app": "evil"}})
    assert "only change the annotation" in _refused(worker, namespace, "pod-a", {"annotations": {"x.io/y": "1"}})
    assert "integer" in _refused(worker, namespace, "pod-a", {"annotations": {DELETION_COST: "lots"}})
    assert core.read_namespaced_pod("pod-a", namespace).metadata.labels == {"app": "worker"}

    # RBAC still applies: no other verbs.
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(worker).delete_namespaced_pod("pod-a", namespace)
    assert denied.value.status == 403
    assert b.metadata.name == "pod-b"
