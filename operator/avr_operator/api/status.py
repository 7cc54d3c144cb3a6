"""The AVRDeployment status: what the operator observed, for `kubectl get`, `describe` and automation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from avr_operator.api.base import ApiModel

ConditionType = Literal["Ready", "Progressing", "Degraded"]


class Condition(ApiModel):
    """A standard Kubernetes condition; lastTransitionTime changes only when status does."""

    type: ConditionType = Field(description="Ready, Progressing or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: str = Field(max_length=128, description="CamelCase reason, for machines.")
    message: str = Field("", max_length=4096, description="Explanation, for people.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="Generation of the spec the condition refers to.")


class AutoscalerStatus(ApiModel):
    """What the component's HorizontalPodAutoscaler reports."""

    current_replicas: int | None = Field(None, description="Replicas the HPA last saw.")
    desired_replicas: int | None = Field(None, description="Replicas the HPA wants.")
    current_metrics: dict[str, str] = Field(
        default_factory=dict, description="Current metric values by name (avr_queue_length, cpu)."
    )


class ComponentStatus(ApiModel):
    """Replicas of one component (core, sts, asr, llm or tts)."""

    deployment: str = Field(description="Name of the component's Deployment.")
    desired_replicas: int = Field(0, description="Replicas wanted (by the spec or the HPA).")
    ready_replicas: int = Field(0, description="Pods passing readiness.")
    updated_replicas: int = Field(0, description="Pods running the current pod template.")
    autoscaler: AutoscalerStatus | None = Field(None, description="HPA state, when autoscaling is enabled.")


class AVRDeploymentStatus(ApiModel):
    """Observed state of the stack."""

    observed_generation: int | None = Field(None, description="Last spec generation the operator acted on.")
    replicas: str | None = Field(None, description="Core pods ready/desired, e.g. 3/3.")
    conditions: tuple[Condition, ...] = Field(
        default_factory=tuple,
        description="Ready, Progressing and Degraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    components: dict[str, ComponentStatus] = Field(
        default_factory=dict, description="Per-component replicas, keyed by component name."
    )
