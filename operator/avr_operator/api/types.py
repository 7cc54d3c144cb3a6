"""Kubernetes value types the spec embeds: quantities, int-or-percent, env vars, env sources, resources.

Only the parts of the core/v1 types an AVR stack needs are modelled, so the CRD stays small and fully
described.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from avr_operator.api.base import ApiModel, Rule

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
PERCENT_PATTERN = r"^[0-9]+%$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


def _int_or_string(pattern: str, description: str) -> dict[str, Any]:
    return {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": pattern,
        "description": description,
    }


def _quantity(value: int | str) -> int | str:
    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"not a Kubernetes quantity: {value!r} (examples: 500m, 2, 1Gi)")
    if isinstance(value, int) and value < 0:
        raise ValueError("a quantity must not be negative")
    return value


def _int_or_percent(value: int | str) -> int | str:
    if isinstance(value, str) and not re.match(PERCENT_PATTERN, value):
        raise ValueError(f"expected an integer or a percentage like '25%', got {value!r}")
    if isinstance(value, int) and value < 0:
        raise ValueError("must not be negative")
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_quantity),
    WithJsonSchema(_int_or_string(QUANTITY_PATTERN, "A Kubernetes quantity, e.g. 500m, 2, 1Gi.")),
]
IntOrPercent = Annotated[
    int | str,
    AfterValidator(_int_or_percent),
    WithJsonSchema(_int_or_string(r"^[0-9]+%?$", "A count of pods, or a percentage such as '25%'.")),
]

ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
EnvName = Annotated[str, Field(min_length=1, max_length=128, pattern=ENV_NAME)]


class ResourceList(ApiModel):
    """Amounts of CPU and memory (a Kubernetes ResourceList limited to what the AVR containers use)."""

    cpu: Quantity | None = Field(None, description="CPU, in cores or millicores (e.g. 1, 500m).")
    memory: Quantity | None = Field(None, description="Memory in bytes, with a suffix (e.g. 1Gi, 512Mi).")


class Resources(ApiModel):
    """Compute resources of one container."""

    requests: ResourceList = Field(
        default_factory=lambda: ResourceList.model_validate({}),
        description="What the scheduler reserves for the container.",
    )
    limits: ResourceList = Field(
        default_factory=lambda: ResourceList.model_validate({}),
        description="The most the container may use; memory above the limit kills it, CPU is throttled.",
    )


def resources_field(requests: dict[str, str], limits: dict[str, str], description: str) -> Any:
    """A `resources` field whose default (in Python and in the CRD) is the given requests and limits."""
    default: dict[str, Any] = {"requests": requests, "limits": limits}
    return Field(
        default_factory=lambda: Resources.model_validate(default),
        description=description,
        json_schema_extra={"default": default},
    )


class SecretKeySelector(ApiModel):
    """One key of a Secret in the resource's namespace."""

    name: ObjectName = Field(description="Name of the Secret.")
    key: Annotated[str, Field(min_length=1, max_length=253)] = Field(description="Key inside the Secret.")
    optional: bool | None = Field(
        None, description="If true, a missing Secret or key is not an error (the variable is left unset)."
    )


class SecretKeyRef(ApiModel):
    """One key of a Secret in the resource's namespace, which must exist (no `optional`)."""

    name: ObjectName = Field(description="Name of the Secret.")
    key: Annotated[str, Field(min_length=1, max_length=253)] = Field(description="Key inside the Secret.")


LabelKey = Annotated[str, Field(min_length=1, max_length=317, pattern=r"^([a-z0-9.-]+/)?[A-Za-z0-9._-]+$")]
LabelValue = Annotated[str, Field(max_length=63, pattern=r"^([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?$")]


class LabelSelectorRequirement(ApiModel):
    """A set-based requirement on one label."""

    key: LabelKey = Field(description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="How the values apply.")
    values: tuple[LabelValue, ...] = Field(
        default_factory=tuple,
        max_length=50,
        description="Values for In and NotIn; empty for Exists, DoesNotExist.",
        json_schema_extra={"default": []},  # read by the CEL rule even when left out
    )

    rules = (
        Rule(
            "(self.operator in ['In', 'NotIn']) == (size(self.values) > 0)",
            "values are required with In and NotIn, and refused with Exists and DoesNotExist",
            lambda s: (s.operator in ("In", "NotIn")) == (len(s.values) > 0),
            field="values",
        ),
    )


class LabelSelector(ApiModel):
    """A Kubernetes label selector; empty ({}) selects everything."""

    match_labels: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=20, description="Labels that must all match."
    )
    match_expressions: tuple[LabelSelectorRequirement, ...] = Field(
        default_factory=tuple, max_length=20, description="Requirements that must all hold."
    )


class ConfigMapKeySelector(ApiModel):
    """One key of a ConfigMap in the resource's namespace."""

    name: ObjectName = Field(description="Name of the ConfigMap.")
    key: Annotated[str, Field(min_length=1, max_length=253)] = Field(description="Key inside the ConfigMap.")
    optional: bool | None = Field(None, description="If true, a missing ConfigMap or key is not an error.")


class FieldSelector(ApiModel):
    """A field of the pod, e.g. metadata.name or status.podIP (the downward API)."""

    field_path: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        description="Path of the pod field, e.g. metadata.name, metadata.namespace, status.podIP."
    )


def _count(*flags: bool) -> int:
    return sum(1 for f in flags if f)


class EnvVarSource(ApiModel):
    """Where a variable's value comes from: exactly one of secretKeyRef, configMapKeyRef, fieldRef."""

    secret_key_ref: SecretKeySelector | None = Field(
        None, description="Take the value from a Secret key (the place for API keys)."
    )
    config_map_key_ref: ConfigMapKeySelector | None = Field(None, description="Take the value from a ConfigMap key.")
    field_ref: FieldSelector | None = Field(None, description="Take the value from a field of the pod.")

    rules = (
        Rule(
            "(has(self.secretKeyRef) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0)"
            " + (has(self.fieldRef) ? 1 : 0) == 1",
            "set exactly one of secretKeyRef, configMapKeyRef, fieldRef",
            lambda s: (
                _count(s.secret_key_ref is not None, s.config_map_key_ref is not None, s.field_ref is not None) == 1
            ),
        ),
    )


class EnvVar(ApiModel):
    """An environment variable of a container: a literal value or a reference."""

    name: EnvName = Field(description="Variable name.")
    value: Annotated[str, Field(max_length=32768)] | None = Field(None, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        None, description="Source of the value, instead of a literal (Secrets for keys)."
    )

    rules = (
        Rule(
            "!(has(self.value) && has(self.valueFrom))",
            "set value or valueFrom, not both",
            lambda s: not (s.value is not None and s.value_from is not None),
        ),
    )


class LocalObjectReference(ApiModel):
    """A Secret or ConfigMap in the resource's namespace, all of whose keys become variables."""

    name: ObjectName = Field(description="Name of the object.")
    optional: bool | None = Field(None, description="If true, the object may be missing.")


class EnvFromSource(ApiModel):
    """A whole Secret or ConfigMap as environment variables: exactly one of secretRef, configMapRef."""

    prefix: Annotated[str, Field(max_length=64, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")] | None = Field(
        None, description="Prepended to every key of the source."
    )
    secret_ref: LocalObjectReference | None = Field(
        None, description="A Secret whose keys become variables (e.g. OPENAI_API_KEY)."
    )
    config_map_ref: LocalObjectReference | None = Field(None, description="A ConfigMap whose keys become variables.")

    rules = (
        Rule(
            "has(self.secretRef) != has(self.configMapRef)",
            "set exactly one of secretRef, configMapRef",
            lambda s: (s.secret_ref is None) != (s.config_map_ref is None),
        ),
    )


class ImagePullSecret(ApiModel):
    """A Secret of type kubernetes.io/dockerconfigjson used to pull images."""

    name: ObjectName = Field(description="Name of the Secret.")


def env_field(what: str) -> Any:
    return Field(
        default_factory=tuple,
        max_length=100,
        description=f"Extra environment variables of the {what} container; they override generated ones.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


def env_from_field(what: str) -> Any:
    return Field(
        default_factory=tuple,
        max_length=20,
        description=(
            f"Secrets or ConfigMaps whose keys become variables of the {what} container (API keys). "
            "Settings generated from this spec take precedence over them."
        ),
    )
