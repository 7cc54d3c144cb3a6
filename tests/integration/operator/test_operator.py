"""The operator against a real API server: CRD schema and CEL rules, reconciliation, drift repair, no-op writes.

Runs the handlers in-process with kopf's KopfRunner. Skipped (locally) when no control plane is available.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from avr_devcluster import eventually
from avr_devcluster.testing import ClusterUnderTest
from avr_operator.constants import GROUP, PLURAL, VERSION
from tests.integration.operator.helpers import EXAMPLES, MINIMAL, create, custom, example, get

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_accepted_and_defaulted(
    api_client: client.ApiClient, crd: None, namespace: str, path: Path
) -> None:
    created = create(api_client, namespace, example(path))
    core = created["spec"]["core"]
    assert core["connection"] == {"poolSize": 10, "timeoutMs": 5000, "maxRetries": 3}
    assert core["ports"] == {"audioSocket": 5001, "http": 3000}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"providers": {}}, "either providers.sts"),
        ({"rollout": {"maxSurge": 0, "maxUnavailable": "0%"}}, "must not both be zero"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must not exceed maxReplicas"),
        ({"service": {"externalTrafficPolicy": "Local"}}, "externalTrafficPolicy needs type"),
        ({"availability": {"minAvailable": 1, "maxUnavailable": 1}}, "not both"),
    ],
)
def test_cel_rules_reject_bad_specs(
    api_client: client.ApiClient, crd: None, namespace: str, change: dict[str, Any], message: str
) -> None:
    body = copy.deepcopy(MINIMAL)
    body["spec"].update(change)
    with pytest.raises(ApiException) as refused:
        create(api_client, namespace, body)
    assert refused.value.status == 422 and message in str(refused.value.body)


def test_operator_reconciles_repairs_and_stays_quiet(
    cluster: ClusterUnderTest, api_client: client.ApiClient, crd: None, namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    apps: Any = client.AppsV1Api(api_client)
    core: Any = client.CoreV1Api(api_client)
    args = ["run", "--standalone", "-m", "avr_operator.handlers", "--namespace", namespace]
    start = cluster.local.audit.mark() if cluster.local is not None else 0
    with KopfRunner(args, timeout=120) as runner:
        create(api_client, namespace, copy.deepcopy(MINIMAL))

        def children() -> bool:
            names = {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}
            return names == {"demo-core", "demo-sts"}

        eventually(children, timeout=60, what="the Deployments")
        config = core.read_namespaced_config_map("demo-core", namespace)
        assert config.data["STS_URL"] == "ws://demo-sts:6030"

        def ready() -> bool:
            conditions = get(api_client, namespace, "demo").get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        eventually(ready, timeout=90, what="Ready=True")

        # A deleted child comes back.
        core.delete_namespaced_service("demo-core", namespace)
        eventually(lambda: core.list_namespaced_service(namespace, field_selector="metadata.name=demo-core").items,
                   timeout=30, what="the Service to be restored")  # fmt: skip

        # Reconciles that change nothing write nothing.
        local = cluster.local
        if local is not None:

            def operator_writes(since: int) -> list[Any]:
                # Every write of the operator's clients (the kubernetes client's and kopf's user agents) but this
                # test's own writes of the resource (the operator only writes its status): children, status, events.
                return [
                    w for w in local.audit.writes(since, namespace=namespace)
                    if w.user_agent.startswith(("OpenAPI", "kopf")) and not (w.resource == PLURAL and not w.subresource)
                ]  # fmt: skip

            assert operator_writes(start), "the filter must see the operator's own writes"
            time.sleep(3)
            mark = local.audit.mark()
            custom(api_client).patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "demo", {"metadata": {"labels": {"touched": "yes"}}}
            )
            time.sleep(5)
            assert operator_writes(mark) == []

        # A missing Secret degrades the resource and nothing new is applied.
        body = get(api_client, namespace, "demo")
        body["spec"]["core"]["envFrom"] = [{"secretRef": {"name": "absent"}}]
        body["spec"]["core"]["replicas"] = 5
        custom(api_client).replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "demo", body)

        def degraded() -> str:
            conditions = get(api_client, namespace, "demo").get("status", {}).get("conditions", [])
            return next((c["message"] for c in conditions if c["type"] == "Degraded" and c["status"] == "True"), "")

        assert "Secret 'absent'" in eventually(degraded, timeout=30, what="Degraded=True")
        assert apps.read_namespaced_deployment("demo-core", namespace).spec.replicas == 3
    assert runner.exit_code == 0, runner.output
