"""The CRD: generated from the models, checked in unchanged, structural, and its CEL rules well-formed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from avr_operator.api.crd import CRD_FILE, crd_manifest, crd_yaml, root_schema
from avr_operator.api.schema import ALLOWED

Node = dict[str, Any]


def walk(node: Node, path: str = "") -> Iterator[tuple[str, Node]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
}


def _has_type(value: object, kind: object) -> bool:
    if not isinstance(kind, str) or kind not in TYPES:
        return False
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, TYPES[kind])


def validate(value: Any, schema: Node, path: str = "") -> list[str]:
    """A small OpenAPI validator for what the CRD uses: types, enums, bounds, patterns, unknown fields."""
    errors: list[str] = []
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str) or isinstance(value, bool):
            return [f"{path}: not int-or-string"]
        if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        return errors
    kind = schema.get("type")
    if not _has_type(value, kind):
        return [f"{path}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: below minimum")
    if "maximum" in schema and (
        value > schema["maximum"] or (schema.get("exclusiveMaximum") and value == schema["maximum"])
    ):
        errors.append(f"{path}: above maximum")
    if kind == "string":
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if len(value) > schema.get("maxLength", 1 << 30) or len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: bad length")
    if kind == "array":
        if len(value) > schema.get("maxItems", 1 << 30):
            errors.append(f"{path}: too many items")
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    if kind == "object":
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        props = schema.get("properties")
        for name, item in value.items():
            if props is not None:
                if name not in props:
                    errors.append(f"{path}.{name}: unknown field")
                else:
                    errors += validate(item, props[name], f"{path}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += validate(item, schema["additionalProperties"], f"{path}.{name}")
    return errors


def test_checked_in_crd_matches_the_models(root: Path) -> None:
    checked_in = (root / "crds" / CRD_FILE).read_text()
    assert checked_in == crd_yaml(), "regenerate with: avr-operator crd -o crds/" + CRD_FILE


def test_crd_identity() -> None:
    crd = crd_manifest()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "avrdeployments.avr.agentvoiceresponse.com"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["avrd"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Ready", "Replicas", "Reason", "Age"]


def test_schema_is_structural() -> None:
    for path, node in walk(root_schema()):
        assert "$ref" not in node and "allOf" not in node and "oneOf" not in node and "not" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
        else:
            assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
            assert "anyOf" not in node, path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert "title" not in node, path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, True), bool), path
        if node.get("type") == "array":
            assert "items" in node, path


def test_only_keywords_kubernetes_accepts() -> None:
    for path, node in walk(root_schema()):
        assert set(node) <= ALLOWED, (path, set(node) - ALLOWED)


def test_every_spec_field_is_described_for_kubectl_explain() -> None:
    spec = root_schema()["properties"]["spec"]
    missing = [
        path for path, node in walk(spec) if path and not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert missing == []


def test_defaults_validate_against_their_own_schema() -> None:
    checked = 0
    for path, node in walk(root_schema()):
        if "default" in node:
            assert validate(node["default"], node, path) == [], path
            checked += 1
    assert checked > 40


def test_every_list_has_a_bound_so_cel_cost_is_estimable() -> None:
    spec = root_schema()["properties"]["spec"]
    unbounded = [path for path, node in walk(spec) if node.get("type") == "array" and "maxItems" not in node]
    assert unbounded == []


def _rules() -> list[tuple[str, Node, str]]:
    return [
        (path, node, rule["rule"])
        for path, node in walk(root_schema())
        for rule in node.get("x-kubernetes-validations", [])
    ]


def test_cross_field_rules_are_present() -> None:
    by_path: dict[str, list[str]] = {}
    for path, _node, rule in _rules():
        by_path.setdefault(path, []).append(rule)
    assert "has(self.sts)" in by_path[".spec.providers"][0]
    assert by_path[".spec.autoscaling"] == [
        "self.minReplicas <= self.maxReplicas",
        "self.engine == 'keda' ? has(self.keda) : !has(self.keda)",
        "!(has(self.targetQueueLength) && has(self.targetUtilization))",
    ]
    assert len(by_path[".spec.core.drain"]) == 4 and len(by_path[".spec.core.logging"]) == 1
    assert by_path[".spec.providers.sts.autoscaling"] == ["self.minReplicas <= self.maxReplicas"]
    assert "maxSurge" in by_path[".spec.rollout"][0]
    assert "minAvailable" in by_path[".spec.availability"][0]
    assert len(by_path[".spec.service"]) == 2
    assert "self.audioSocket != self.http" in by_path[".spec.core.ports"]
    assert by_path[".spec.networkPolicy"] == ["!self.enabled || size(self.audioSocketFrom) > 0"]
    for peers in ("audioSocketFrom", "httpFrom"):
        assert "has(self.ipBlock)" in by_path[f".spec.networkPolicy.{peers}[]"][0]
    assert by_path[".spec.monitoring.podMonitor"] == ["duration(self.scrapeTimeout) <= duration(self.interval)"]
    assert any("metadata.name" in r for r in by_path[""])
    assert all(r.count("(") == r.count(")") for _p, _n, r in _rules())


def test_cel_rules_only_name_fields_that_exist() -> None:
    for path, node, rule in _rules():
        if path == "":
            continue
        for field in re.findall(r"self\.(\w+)", rule):
            assert field in node["properties"], f"{path}: {rule} names unknown field {field}"
        # has() on a field with a default (or a required one) is always true: the rule would be meaningless.
        for field in re.findall(r"has\(self\.(\w+)\)", rule):
            assert "default" not in node["properties"][field], f"{path}: {field}"
            assert field not in node.get("required", []), f"{path}: {field}"


def test_list_map_keys_are_required_fields() -> None:
    for path, node in walk(root_schema()):
        if node.get("x-kubernetes-list-type") == "map":
            item = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in item.get("required", []), path


@pytest.mark.parametrize("example", sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")))
def test_examples_validate_against_the_crd_schema(example: Path) -> None:
    body = yaml.safe_load(example.read_text())
    assert validate(body, root_schema()) == []


def test_the_validator_used_here_can_fail() -> None:
    schema = root_schema()
    bad = {"apiVersion": "x", "kind": "y", "spec": {"core": {"image": 3, "bogus": 1}, "providers": {}}}
    errors = validate(bad, schema)
    assert any("image" in e for e in errors) and any("bogus" in e for e in errors)
