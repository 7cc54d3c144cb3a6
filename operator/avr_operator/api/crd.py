"""The CustomResourceDefinition of AVRDeployment, generated from the models."""

from __future__ import annotations

from typing import Any

import yaml

from avr_operator.api.resource import NAME_PATTERN
from avr_operator.api.schema import openapi_schema
from avr_operator.api.spec import AVRDeploymentSpec
from avr_operator.api.status import AVRDeploymentStatus
from avr_operator.constants import (
    CRD_NAME,
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)

CRD_FILE = f"{CRD_NAME}.yaml"


def root_schema() -> dict[str, Any]:
    """The whole object's schema: spec and status from the models, plus the rules on metadata.name."""
    return {
        "type": "object",
        "description": (
            "AVRDeployment runs an AVR (Agent Voice Response) stack: a core that Asterisk connects to over "
            "AudioSocket, and either one speech-to-speech provider or an ASR, LLM and TTS provider trio."
        ),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": openapi_schema(AVRDeploymentSpec),
            "status": openapi_schema(AVRDeploymentStatus),
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                "message": f"metadata.name has at most {MAX_NAME_LENGTH} characters",
            },
            {
                "rule": f"self.metadata.name.matches('{NAME_PATTERN}')",
                "message": "metadata.name must start with a letter (Service names are DNS-1035 labels)",
            },
        ],
    }


def crd_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["avr", "all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                            "description": "Whether every component has its pods ready.",
                        },
                        {
                            "name": "Replicas",
                            "type": "string",
                            "jsonPath": ".status.replicas",
                            "description": "Core pods ready/desired.",
                        },
                        {
                            "name": "Reason",
                            "type": "string",
                            "priority": 1,
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                            "description": "Why the stack is (not) ready.",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": root_schema()},
                }
            ],
        },
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated sub-schemas out in full: anchors and aliases are legal YAML but unreadable here."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_NoAliasDumper, sort_keys=True, width=120)


def crd_yaml() -> str:
    header = "# Generated from the models in operator/avr_operator/api by `avr-operator crd`: do not edit by hand.\n"
    return header + to_yaml(crd_manifest())
