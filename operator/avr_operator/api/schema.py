"""Turn pydantic's JSON Schema into a Kubernetes structural OpenAPI v3 schema.

apiextensions.k8s.io/v1 accepts a subset of JSON Schema: no $ref, a type on every node (except
int-or-string), no anyOf beyond int-or-string, boolean exclusive bounds, no additionalProperties next to
properties. Pydantic emits all of those, so they are rewritten here rather than the schema written by hand.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

JsonObj = dict[str, Any]

_DROP = {"title", "additionalProperties"}
# What apiextensions.k8s.io/v1 JSONSchemaProps accepts (the subset this project uses).
ALLOWED = {
    "type", "description", "properties", "items", "additionalProperties", "required", "enum", "default",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern",
    "minItems", "maxItems", "minProperties", "maxProperties", "format", "anyOf", "x-kubernetes-int-or-string",
    "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
}  # fmt: skip


class SchemaError(ValueError):
    """A model produces a schema Kubernetes would refuse."""


def _resolve(node: JsonObj, defs: JsonObj) -> JsonObj:
    """Inline $ref / single-element allOf, then drop the null branch of Optional fields."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**_resolve(target, defs), **node}
    if "allOf" in node:
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise SchemaError(f"allOf with {len(parts)} parts")
        node = {**_resolve(parts[0], defs), **node}
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
        if len(branches) != 1:
            raise SchemaError(f"anyOf of several types: {branches}")
        node = {**_resolve(branches[0], defs), **node}
        if node.get("default", ...) is None:
            del node["default"]
    return node


def _structural(node: JsonObj, defs: JsonObj, path: str) -> JsonObj:
    node = _resolve(node, defs)
    out: JsonObj = {}
    for key, value in node.items():
        if key in _DROP and not (key == "additionalProperties" and "properties" not in node):
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs, f"{path}[]")
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out[key.replace("exclusive", "").lower()] = value
            out[key] = True
        elif key in ALLOWED:
            out[key] = value
        else:
            raise SchemaError(f"{path}: {key!r} is not allowed in a CRD schema")
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        raise SchemaError(f"{path}: no type")
    return out


def openapi_schema(model: type[BaseModel]) -> JsonObj:
    """The structural OpenAPI v3 schema of `model`, with camelCase property names."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(raw, defs, model.__name__)
