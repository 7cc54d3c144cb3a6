"""Access to the stack on a real API server: the API token from its Secret, tracing, NetworkPolicies (accepted,
owned and garbage-collected like every child; not enforced: the control plane has no network plugin), and the
PodMonitor, reported as a missing API until prometheus-operator's CRD exists, then created.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from avr_devcluster import eventually
from avr_operator.constants import API_VERSION, KIND, LABEL_INSTANCE
from tests.integration.operator.helpers import (
    Obj,
    OperatorEnv,
    by_kind,
    children,
    condition,
    create,
    minimal,
    patch,
    wait_missing_api,
    wait_ready,
)

pytestmark = pytest.mark.integration

PBX = {"ipBlock": {"cidr": "10.20.0.0/24"}}
MONITORING_NS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
POD_MONITORS = "podmonitors.monitoring.coreos.com"


def _owned_by(obj: Obj, owner: Obj) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return [(r["apiVersion"], r["kind"], r["uid"], r.get("controller")) for r in refs] == [
        (API_VERSION, KIND, owner["metadata"]["uid"], True)
    ]


def test_token_tracing_and_network_policies_are_applied_owned_and_collected(operated: OperatorEnv) -> None:
    api, ns = operated.api, operated.namespace
    core_api: Any = client.CoreV1Api(api)
    core_api.create_namespaced_secret(
        ns, client.V1Secret(metadata=client.V1ObjectMeta(name="avr-api"), string_data={"token": "t0ken"})
    )
    core = {
        **minimal()["spec"]["core"],
        "tracing": {"endpoint": "http://otel-collector.monitoring:4318", "samplingRatio": 0.25},
        "apiTokenSecretRef": {"name": "avr-api", "key": "token"},
    }
    policy = {"enabled": True, "audioSocketFrom": [PBX], "httpFrom": [PBX, MONITORING_NS]}
    create(api, ns, minimal("guarded", core=core, networkPolicy=policy))
    owner = wait_ready(api, ns, "guarded")

    objs = by_kind(children(api, ns, "guarded"))
    policies = {name: obj for (kind, name), obj in objs.items() if kind == "NetworkPolicy"}
    assert sorted(policies) == ["guarded-core", "guarded-sts"]
    for obj in policies.values():
        assert _owned_by(obj, owner), obj["metadata"]
    core_policy = policies["guarded-core"]["spec"]
    assert core_policy["policyTypes"] == ["Ingress"]
    audio, http = core_policy["ingress"]
    assert audio == {"from": [PBX], "ports": [{"protocol": "TCP", "port": 5001}]}
    assert http["from"][:2] == [PBX, MONITORING_NS] and "podSelector" in http["from"][2]
    assert http["ports"] == [{"protocol": "TCP", "port": 3000}]

    config = objs["ConfigMap", "guarded-core"]["data"]
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring:4318"
    assert (config["OTEL_TRACES_SAMPLER"], config["OTEL_TRACES_SAMPLER_ARG"]) == ("parentbased_traceidratio", "0.25")
    assert "API_TOKEN" not in config
    container = objs["Deployment", "guarded-core"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "avr-api", "key": "token"}
    assert env["OTEL_RESOURCE_ATTRIBUTES"]["value"].startswith("k8s.pod.name=$(POD_NAME),")

    # A resync writes nothing more: the policies match as applied.
    mark = operated.mark()
    operated.operator.wait_reconciles(2)
    writes = [w for w in operated.writes(mark) if w.resource == "networkpolicies"]
    assert writes == []

    # Turned off: pruned. On again, then the resource deleted: collected with everything else.
    patch(api, ns, "guarded", {"spec": {"networkPolicy": {"enabled": False, "audioSocketFrom": []}}})

    def policies_left() -> list[str]:
        return [o["metadata"]["name"] for o in children(api, ns, "guarded") if o["kind"] == "NetworkPolicy"]

    eventually(lambda: policies_left() == [], timeout=30, what="the NetworkPolicies to be pruned")
    patch(api, ns, "guarded", {"spec": {"networkPolicy": policy}})
    eventually(lambda: len(policies_left()) == 2, timeout=30, what="the NetworkPolicies to be recreated")
    custom: Any = client.CustomObjectsApi(api)
    custom.delete_namespaced_custom_object("avr.agentvoiceresponse.com", "v1alpha1", ns, "avrdeployments", "guarded")
    networking: Any = client.NetworkingV1Api(api)

    def collected() -> bool:
        items = networking.list_namespaced_network_policy(ns, label_selector=f"{LABEL_INSTANCE}=guarded").items
        return not items and not children(api, ns, "guarded")

    eventually(collected, timeout=60, what="garbage collection of the NetworkPolicies")


def pod_monitor_crd() -> Obj:
    """A minimal stand-in for prometheus-operator's PodMonitor CRD: the fields the operator sets, typed."""
    string = {"type": "string"}
    endpoint = {
        "type": "object",
        "properties": {"port": string, "path": string, "interval": string, "scrapeTimeout": string},
    }
    spec = {
        "type": "object",
        "required": ["selector"],
        "properties": {
            "selector": {
                "type": "object",
                "properties": {"matchLabels": {"type": "object", "additionalProperties": string}},
            },
            "podMetricsEndpoints": {"type": "array", "items": endpoint},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": POD_MONITORS},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {
                "kind": "PodMonitor",
                "listKind": "PodMonitorList",
                "plural": "podmonitors",
                "singular": "podmonitor",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec}}},
                }
            ],
        },
    }


@pytest.fixture
def no_pod_monitor_crd(api_client: client.ApiClient) -> Iterator[Any]:
    """The control plane without the PodMonitor CRD at the start, and without it again afterwards."""
    ext: Any = client.ApiextensionsV1Api(api_client)

    def delete() -> None:
        try:
            ext.delete_custom_resource_definition(POD_MONITORS)
        except ApiException as exc:
            if exc.status != 404:
                raise

        def gone() -> bool:
            try:
                ext.read_custom_resource_definition(POD_MONITORS)
            except ApiException as exc:
                return bool(exc.status == 404)
            return False

        eventually(gone, timeout=60, what="the PodMonitor CRD to be deleted")

    delete()
    yield ext
    delete()


def test_pod_monitor_waits_for_its_api_then_is_created(operated: OperatorEnv, no_pod_monitor_crd: Any) -> None:
    api, ns = operated.api, operated.namespace
    ext = no_pod_monitor_crd
    monitoring = {"podMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}}
    create(api, ns, minimal("scraped", monitoring=monitoring))
    obj = wait_missing_api(api, ns, "scraped", operated.operator.log())
    assert "monitoring.coreos.com/v1 PodMonitor" in condition(obj, "Degraded")["message"]
    assert children(api, ns, "scraped") == []
    assert operated.operator.popen is not None and operated.operator.popen.poll() is None

    # prometheus-operator's CRD appears: the next re-check creates the PodMonitor, and the stack comes up.
    ext.create_custom_resource_definition(pod_monitor_crd())
    custom: Any = client.CustomObjectsApi(api)

    def monitor() -> Obj | None:
        try:
            found: Obj = custom.get_namespaced_custom_object(
                "monitoring.coreos.com", "v1", ns, "podmonitors", "scraped-core"
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    found = eventually(monitor, timeout=90, what="the PodMonitor")
    assert found is not None
    owner = wait_ready(api, ns, "scraped")
    assert condition(owner, "Degraded")["status"] == "False"
    assert _owned_by(found, owner)
    assert found["metadata"]["labels"]["release"] == "prom"
    assert found["spec"]["podMetricsEndpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    assert found["spec"]["selector"]["matchLabels"][LABEL_INSTANCE] == "scraped"

    # Deleted by hand: put back (the operator watches PodMonitors once their CRD exists).
    custom.delete_namespaced_custom_object("monitoring.coreos.com", "v1", ns, "podmonitors", "scraped-core")
    eventually(
        lambda: (m := monitor()) is not None and m["metadata"]["uid"] != found["metadata"]["uid"],
        timeout=60,
        what="the PodMonitor to be recreated",
    )
    # Turned off: pruned.
    patch(api, ns, "scraped", {"spec": {"monitoring": {"podMonitor": {"enabled": False}}}})
    eventually(lambda: monitor() is None, timeout=60, what="the PodMonitor to be pruned")
