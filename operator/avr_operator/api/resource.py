"""A whole AVRDeployment object (identity + spec), parsed from a cluster body or a YAML file."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from avr_operator.api.spec import AVRDeploymentSpec
from avr_operator.constants import API_VERSION, KIND, MAX_NAME_LENGTH

NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class InvalidResourceError(ValueError):
    """The object is not an AVRDeployment the operator can act on."""


@dataclass(frozen=True)
class AVRDeployment:
    """Identity and validated spec; `uid` is empty for objects not read from a cluster."""

    name: str
    namespace: str
    spec: AVRDeploymentSpec
    uid: str = ""
    generation: int = 0

    @classmethod
    def from_body(cls, body: Mapping[str, Any], default_namespace: str = "default") -> AVRDeployment:
        if body.get("apiVersion") != API_VERSION or body.get("kind") != KIND:
            raise InvalidResourceError(f"expected apiVersion {API_VERSION} and kind {KIND}")
        meta = body.get("metadata") or {}
        name = str(meta.get("name") or "")
        if not re.match(NAME_PATTERN, name) or len(name) > MAX_NAME_LENGTH:
            raise InvalidResourceError(
                f"metadata.name {name!r} must be a DNS label starting with a letter, "
                f"at most {MAX_NAME_LENGTH} characters"
            )
        return cls(
            name=name,
            namespace=str(meta.get("namespace") or default_namespace),
            spec=AVRDeploymentSpec.model_validate(body.get("spec") or {}),
            uid=str(meta.get("uid") or ""),
            generation=int(meta.get("generation") or 0),
        )
