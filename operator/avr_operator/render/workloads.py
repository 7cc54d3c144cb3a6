"""ConfigMap, Deployment and Service of a component."""

from __future__ import annotations

from typing import Any

from avr_operator.api.resource import AVRDeployment
from avr_operator.render.components import Component
from avr_operator.render.names import CORE, PEERS, child_name, metadata, selector_labels
from avr_operator.render.pod import pod_template

Manifest = dict[str, Any]


def config_map(owner: AVRDeployment, c: Component) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, c.role),
        "data": dict(c.config),
    }


def deployment(owner: AVRDeployment, c: Component) -> Manifest:
    """A rolling Deployment; `replicas` is left out when an HPA owns it, so applying never fights the HPA."""
    rollout = owner.spec.rollout
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(owner, c.role)},
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": 600,
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": rollout.max_surge, "maxUnavailable": rollout.max_unavailable},
        },
        "template": pod_template(owner, c),
    }
    if rollout.min_ready_seconds:
        # The API server omits a zero minReadySeconds: sending 0 would make every no-op reconcile inconclusive.
        spec["minReadySeconds"] = rollout.min_ready_seconds
    if c.autoscaling is None:
        spec = {"replicas": c.replicas, **spec}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(owner, c.role), "spec": spec}


def service(owner: AVRDeployment, c: Component) -> Manifest:
    """The core's Service follows spec.service; provider Services are internal (ClusterIP)."""
    meta = metadata(owner, c.role)
    spec: dict[str, Any] = {
        "type": "ClusterIP",
        "selector": selector_labels(owner, c.role),
        "ports": [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"} for name, port in c.ports],
    }
    if c.role == CORE:
        svc = owner.spec.service
        spec["type"] = svc.type
        spec["sessionAffinity"] = svc.session_affinity
        if svc.session_affinity_timeout_seconds is not None:
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": svc.session_affinity_timeout_seconds}}
        if svc.external_traffic_policy is not None:
            spec["externalTrafficPolicy"] = svc.external_traffic_policy
        if svc.annotations:
            meta["annotations"] = dict(svc.annotations)
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def peer_service(owner: AVRDeployment, c: Component) -> Manifest:
    """Headless Service of the core pods (DNS returns one address per ready pod; PEER_SERVICE names it).

    A call's HTTP request (/call) and its AudioSocket stream can reach different pods: kube-proxy keeps ClientIP
    affinity per port, not per client. The worker asks its peers, found here, for metadata it lacks. Not-ready
    pods (draining, full) are left out, the Service default.
    """
    http = dict(c.ports)["http"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, c.role, child_name(owner, PEERS)),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(owner, c.role),
            "ports": [{"name": "http", "port": http, "targetPort": "http", "protocol": "TCP"}],
        },
    }
