"""Check that every Secret and ConfigMap the spec references exists (with its key) before writing anything."""

from __future__ import annotations

from avr_operator.apply.cluster import Cluster
from avr_operator.render.references import Reference
from avr_operator.render.status import Problem


def _keys(obj: dict[str, object]) -> set[str]:
    keys: set[str] = set()
    for section in ("data", "stringData", "binaryData"):
        value = obj.get(section)
        if isinstance(value, dict):
            keys |= set(value)
    return keys


async def missing_references(cluster: Cluster, namespace: str, refs: list[Reference]) -> list[Problem]:
    problems: list[Problem] = []
    cache: dict[tuple[str, str], dict[str, object] | None] = {}
    for ref in refs:
        key = (ref.kind, ref.name)
        if key not in cache:
            cache[key] = await cluster.get("v1", ref.kind, namespace, ref.name)
        obj = cache[key]
        if obj is None:
            problems.append(Problem("MissingReference", f"{ref.kind} {ref.name!r} ({ref.where}) not found"))
        elif ref.key is not None and ref.key not in _keys(obj):
            problems.append(
                Problem("MissingReference", f"{ref.kind} {ref.name!r} has no key {ref.key!r} ({ref.where})")
            )
    return problems
