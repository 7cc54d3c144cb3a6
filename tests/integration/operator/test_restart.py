"""The operator process dies (SIGKILL) in the middle of its work and starts again: it converges without duplicates
or orphans. And once converged, its resyncs write nothing at all (counted in the API server's audit log).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from kubernetes import client

from avr_devcluster import eventually
from avr_operator.constants import API_VERSION, GROUP, KIND, LABEL_COMPONENT, LABEL_INSTANCE, PLURAL, VERSION
from tests.integration.operator.helpers import (
    OperatorEnv,
    children,
    component,
    create,
    custom,
    get,
    is_ready,
    minimal,
    patch,
    pod_names,
    replica_sets,
    wait_ready,
)

pytestmark = pytest.mark.integration

STACKS = [f"stack-{i}" for i in range(5)]
CORE = {"image": "avr-runtime:test", "replicas": 1, "drain": {"timeoutSeconds": 0, "preStopSeconds": 0}}


def test_killed_mid_reconcile_then_restarted_converges_without_duplicates_or_orphans(
    own_operator: OperatorEnv,
) -> None:
    env = own_operator
    api, ns = env.api, env.namespace
    local = env.cluster.require_local()
    mark = local.audit.mark()
    for name in STACKS:
        create(api, ns, minimal(name, core=CORE, rollout={"minReadySeconds": 0}))

    # SIGKILL right after its first write (the audit log is local, so this is quick): mid-reconcile.
    eventually(lambda: env.writes(mark), timeout=30, interval=0.005, what="the operator's first write")
    env.operator.kill()
    partial = children(api, ns)
    assert len(partial) < len(STACKS) * 10, "killed too late: every child was there already"
    assert not all(is_ready(get(api, ns, name)) for name in STACKS)

    env.operator.start()
    for name in STACKS:
        wait_ready(api, ns, name)

    objects = children(api, ns)
    per_component = Counter((o["kind"], o["metadata"]["labels"][LABEL_INSTANCE], component(o)) for o in objects)
    expected = {
        (kind, name, role)
        for name in STACKS
        for role in ("core", "sts")
        for kind in ("ConfigMap", "Service", "Deployment")
    } | {(kind, name, "core") for name in STACKS for kind in ("ServiceAccount", "Role", "RoleBinding")}
    assert set(per_component) == expected

    def wanted(key: tuple[str, str, str]) -> int:
        return 2 if key[0] == "Service" and key[2] == "core" else 1  # the core's Service and its peer Service

    assert [key for key, count in per_component.items() if count != wanted(key)] == []

    # Every child has exactly one owner reference, to a live AVRDeployment of its instance.
    live = custom(api).list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
    owners = {o["metadata"]["uid"]: o["metadata"]["name"] for o in live}
    for obj in objects:
        refs = obj["metadata"].get("ownerReferences") or []
        assert len(refs) == 1, obj["metadata"]
        ref = refs[0]
        assert (ref["apiVersion"], ref["kind"], ref.get("controller")) == (API_VERSION, KIND, True)
        assert owners.get(ref["uid"]) == ref["name"] == obj["metadata"]["labels"][LABEL_INSTANCE]

    # No second rollout either: one ReplicaSet per Deployment, with its one pod.
    for name in STACKS:
        for role in ("core", "sts"):
            sets = replica_sets(api, ns, f"{name}-{role}")
            assert len(sets) == 1, [rs["metadata"]["name"] for rs in sets]
            selector = f"{LABEL_INSTANCE}={name},{LABEL_COMPONENT}={role}"
            assert len(pod_names(api, ns, selector)) == 1


def test_noop_resync_writes_nothing(operated: OperatorEnv) -> None:
    """Counts every write of the operator's own identity: children, status patches, events."""
    env = operated
    api, ns = env.api, env.namespace
    start = env.mark()
    create(api, ns, minimal("quiet", core=CORE))
    wait_ready(api, ns, "quiet")

    # The filter sees the operator's writes of every kind: children, the status subresource, events.
    def seen() -> set[tuple[str, str]]:
        return {(w.resource, w.subresource) for w in env.writes(start)}

    wanted = {("deployments", ""), ("services", ""), ("configmaps", ""), ("avrdeployments", "status"), ("events", "")}
    eventually(lambda: wanted <= seen(), timeout=10, what=f"the operator's writes {wanted} in the audit log")

    # Let the status settle (the last Deployment status changes may cost one more reconcile)...
    def quiet_for_a_resync() -> bool:
        mark = env.mark()
        env.operator.wait_reconciles(1, timeout=30)
        return env.writes(mark) == []

    eventually(quiet_for_a_resync, timeout=30, interval=0, what="a resync without writes")
    # ... then three periodic resyncs write nothing.
    mark = env.mark()
    env.operator.wait_reconciles(3, timeout=30)
    writes = env.writes(mark)
    assert writes == [], writes

    # A change of the resource that does not touch its spec triggers a reconcile, which writes nothing either.
    mark = env.mark()
    patch(api, ns, "quiet", {"metadata": {"annotations": {"example.com/touched": "yes"}}})
    env.operator.wait_reconciles(3, timeout=30)
    writes = env.writes(mark)
    assert writes == [], writes
    core: Any = client.AppsV1Api(api)
    assert core.read_namespaced_deployment("quiet-core", ns).spec.replicas == 1
