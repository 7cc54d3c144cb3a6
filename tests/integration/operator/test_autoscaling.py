"""Autoscaling of the core on its queue length: the real HPA controller scales the Deployment on values written
to the custom-metrics adapter, and the operator (running, resyncing, reconciling) never fights it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from avr_devcluster import eventually
from avr_operator.constants import FIELD_MANAGER, LABEL_COMPONENT, LABEL_INSTANCE
from tests.integration.operator.helpers import (
    EXAMPLES,
    Obj,
    OperatorEnv,
    as_dict,
    children,
    condition,
    create,
    example,
    minimal,
    patch,
    pod_names,
    wait_missing_api,
    wait_ready,
)

pytestmark = pytest.mark.integration

QUEUE_METRIC = "avr_queue_length"
HPA_USER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
MIN, MAX = 2, 5
# The target the HPA gets from the spec: 0.5 of maxConcurrentCalls (10) calls in the system per pod.
CAPACITY, UTILIZATION, TARGET = 10, 0.5, 5
SCALE_DOWN_WINDOW = 5


def _autoscaled_example() -> Obj:
    """examples/sts-openai.yaml, with small bounds, fast scaling rules and no drain delays."""
    body = example(next(p for p in EXAMPLES if p.stem == "sts-openai"))
    spec = body["spec"]
    assert spec["autoscaling"]["enabled"] is True
    spec["autoscaling"] = {
        "enabled": True,
        "minReplicas": MIN,
        "maxReplicas": MAX,
        "targetUtilization": UTILIZATION,
        # (no CPU target: the cluster has no resource metrics, and an unavailable metric blocks scaling down)
        "behavior": {
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "policies": [{"type": "Pods", "value": 5, "periodSeconds": 1}],
            },
            "scaleDown": {
                "stabilizationWindowSeconds": SCALE_DOWN_WINDOW,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}],
            },
        },
    }
    spec["core"]["drain"] = {"timeoutSeconds": 0, "preStopSeconds": 0}
    spec["core"]["maxConcurrentCalls"] = CAPACITY
    spec["providers"]["sts"]["drainSeconds"] = 0
    spec["rollout"] = {"minReadySeconds": 0}
    return body


def _owns_replicas(entry: Obj) -> bool:
    return "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})


def test_hpa_scales_the_core_on_queue_length_and_the_operator_leaves_it(operated: OperatorEnv) -> None:
    env = operated
    local = env.cluster.require_local()
    api, ns = env.api, env.namespace
    core_api: Any = client.CoreV1Api(api)
    for name, data in (("openai", {"OPENAI_API_KEY": "sk-test"}), ("avr-webhook", {"secret": "s3cret"})):
        core_api.create_namespaced_secret(
            ns, client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data)
        )
    body = _autoscaled_example()
    name = body["metadata"]["name"]
    deployment = f"{name}-core"
    create(api, ns, body)
    wait_ready(api, ns, name)
    apps: Any = client.AppsV1Api(api)
    pods = f"{LABEL_INSTANCE}={name},{LABEL_COMPONENT}=core"
    mark = env.mark()

    def replicas() -> int:
        return int(apps.read_namespaced_deployment(deployment, ns).spec.replicas)

    def with_queue(length: int, wanted: int) -> bool:
        # New pods start without a value: keep writing one for every current pod while waiting.
        for pod in pod_names(api, ns, pods):
            local.set_pod_metric(ns, pod, QUEUE_METRIC, length)
        return replicas() == wanted

    hpa_api: Any = client.AutoscalingV2Api(api)
    target = hpa_api.read_namespaced_horizontal_pod_autoscaler(deployment, ns).spec.metrics[0].pods.target
    assert (target.type, target.average_value) == ("AverageValue", str(TARGET))

    assert replicas() == MIN
    # Just under the target: no scaling; then far above it: up to the maximum.
    for _ in range(3):
        with_queue(TARGET - 1, MIN)
        time.sleep(1)
    assert replicas() == MIN
    eventually(lambda: with_queue(6 * TARGET, MAX), timeout=60, what=f"the HPA to scale up to {MAX}")

    # spec.replicas belongs to the HPA (it writes the scale subresource): no field manager of the operator
    # owns it, so no apply of the operator can reset it.
    dep = as_dict(api, apps.read_namespaced_deployment(deployment, ns))
    ours = [e for e in dep["metadata"]["managedFields"] if e["manager"].startswith(FIELD_MANAGER)]
    assert [e["manager"] for e in ours] == [FIELD_MANAGER]
    assert not any(map(_owns_replicas, ours)), ours

    # Reconciles while scaled up (a touched annotation, then periodic resyncs) leave the replicas alone.
    patch(api, ns, name, {"metadata": {"annotations": {"example.com/touched": "scaled-up"}}})
    env.operator.wait_reconciles(3, timeout=30)
    assert replicas() == MAX
    wait_ready(api, ns, name)
    hpa = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(deployment, ns)
    assert hpa.status is not None and hpa.status.desired_replicas == MAX

    # Low load: back to the minimum, but only after the scale-down stabilisation window.
    low_since = time.monotonic()
    eventually(lambda: with_queue(1, MIN), timeout=60, what=f"the HPA to scale down to {MIN}")
    assert time.monotonic() - low_since >= SCALE_DOWN_WINDOW - 1
    env.operator.wait_reconciles(2, timeout=30)
    assert replicas() == MIN

    # Throughout: the HPA controller wrote the scale, the operator never wrote the core Deployment.
    writes = local.audit.writes(mark, namespace=ns, resource="deployments", name=deployment)
    assert any(w.username == HPA_USER and w.subresource == "scale" for w in writes), writes
    assert [w for w in writes if w.username == env.operator.username] == []


def test_keda_engine_without_keda_reports_degraded_and_writes_nothing(operated: OperatorEnv) -> None:
    """The control plane has no keda.sh API: the resource says so in its status; no child, no crash loop."""
    env = operated
    api, ns = env.api, env.namespace
    keda = {"enabled": True, "engine": "keda", "keda": {"serverAddress": "http://prometheus:9090"}}
    create(api, ns, minimal("keda", autoscaling=keda))

    obj = wait_missing_api(api, ns, "keda", env.operator.log())
    assert "keda.sh/v1alpha1 ScaledObject" in condition(obj, "Degraded")["message"]
    assert children(api, ns, "keda") == []
    # Still running and re-checking, not crashing.
    env.operator.wait_reconciles(1, timeout=60)
    assert env.operator.popen is not None and env.operator.popen.poll() is None
