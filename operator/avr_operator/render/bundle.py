"""Everything one AVRDeployment produces, in apply order (config before the pods that read it)."""

from __future__ import annotations

from typing import Any

from avr_operator.api.resource import AVRDeployment
from avr_operator.render.access import worker_access
from avr_operator.render.components import components
from avr_operator.render.monitoring import pod_monitor
from avr_operator.render.names import CORE
from avr_operator.render.network import network_policy
from avr_operator.render.scaling import autoscaler, disruption_budget
from avr_operator.render.workloads import config_map, deployment, peer_service, service

Manifest = dict[str, Any]

# Kinds the operator creates, for pruning and watching: (apiVersion, kind).
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
)

# Kinds from APIs a cluster may not serve (installed add-ons), checked before anything is written, with what to
# do about a missing one.
OPTIONAL_KINDS: dict[tuple[str, str], str] = {
    ("keda.sh/v1alpha1", "ScaledObject"): "install KEDA, or set autoscaling.engine: hpa",
    ("monitoring.coreos.com/v1", "PodMonitor"): (
        "install prometheus-operator (its CRDs), or set monitoring.podMonitor.enabled: false"
    ),
}


def render(owner: AVRDeployment) -> list[Manifest]:
    out: list[Manifest] = worker_access(owner)  # the identity before the pods that use it
    for c in components(owner):
        out += [config_map(owner, c), service(owner, c)]
        if c.role == CORE:
            out.append(peer_service(owner, c))
        out.append(deployment(owner, c))
        for optional in (disruption_budget(owner, c), autoscaler(owner, c), network_policy(owner, c)):
            if optional is not None:
                out.append(optional)
        monitor = pod_monitor(owner, c)
        if monitor is not None:
            out.append(monitor)
    return out


def key(manifest: Manifest) -> tuple[str, str, str]:
    """Identity of a manifest within its namespace."""
    return manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"]
