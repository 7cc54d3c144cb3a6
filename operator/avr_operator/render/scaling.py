"""HorizontalPodAutoscaler and PodDisruptionBudget of a component."""

from __future__ import annotations

from typing import Any

from avr_operator.api.resource import AVRDeployment
from avr_operator.render.components import Component
from avr_operator.render.names import metadata, selector_labels

Manifest = dict[str, Any]
KEDA_API_VERSION = "keda.sh/v1alpha1"


def scaled_object(owner: AVRDeployment, c: Component) -> Manifest:
    """A KEDA ScaledObject: KEDA creates the HPA itself, from these triggers (engine keda)."""
    a = c.autoscaling
    assert a is not None and a.keda is not None
    triggers: list[dict[str, Any]] = [
        {
            "type": "prometheus",
            "metricType": "AverageValue",
            "metadata": {"serverAddress": a.keda.server_address, "query": a.keda.query, "threshold": a.keda.threshold},
        }
    ]
    if a.keda.cpu_utilization is not None:
        triggers.append(
            {"type": "cpu", "metricType": "Utilization", "metadata": {"value": str(a.keda.cpu_utilization)}}
        )
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": c.name},
        "minReplicaCount": a.min_replicas,
        "maxReplicaCount": a.max_replicas,
        "triggers": triggers,
    }
    if a.behavior is not None:
        spec["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": a.behavior}}
    return {"apiVersion": KEDA_API_VERSION, "kind": "ScaledObject", "metadata": metadata(owner, c.role), "spec": spec}


def autoscaler(owner: AVRDeployment, c: Component) -> Manifest | None:
    """The component's HPA, or with engine keda its ScaledObject (never both, never a ScaledObject unasked)."""
    if c.autoscaling is None:
        return None
    if c.autoscaling.keda is not None:
        return scaled_object(owner, c)
    a = c.autoscaling
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": c.name},
        "minReplicas": a.min_replicas,
        "maxReplicas": a.max_replicas,
        "metrics": a.metrics,
    }
    if a.behavior is not None:
        spec["behavior"] = a.behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(owner, c.role),
        "spec": spec,
    }


def disruption_budget(owner: AVRDeployment, c: Component) -> Manifest | None:
    availability = owner.spec.availability
    if not availability.enabled:
        return None
    spec: dict[str, Any] = {"selector": {"matchLabels": selector_labels(owner, c.role)}}
    if availability.min_available is not None:
        spec["minAvailable"] = availability.min_available
    else:
        spec["maxUnavailable"] = 1 if availability.max_unavailable is None else availability.max_unavailable
    # Lets the eviction of a crash-looping pod through even when the budget is exhausted.
    spec["unhealthyPodEvictionPolicy"] = "AlwaysAllow"
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner, c.role),
        "spec": spec,
    }
