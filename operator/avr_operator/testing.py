"""An in-memory API server for tests: apply (with dry-run), get, list, delete, status patches.

It mimics the one server-side-apply behaviour the operator must handle: a Deployment field removed from the
applied configuration and owned by no other manager is reset (replicas defaults to 1).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from avr_operator.apply.cluster import ApiError
from avr_operator.constants import API_VERSION, KIND

Obj = dict[str, Any]
Key = tuple[str, str, str, str]
_uids = itertools.count(1)


def key_of(obj: Obj) -> Key:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]


class FakeCluster:
    def __init__(self) -> None:
        self.objects: dict[Key, Obj] = {}
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.dry_runs = 0
        self.reject_kinds: set[str] = set()
        # Objects whose apply is refused until a merge patch replaced them (a list entry of another manager).
        self.clashing: set[Key] = set()
        # Kinds of optional APIs (add-ons) this cluster serves.
        self.served_kinds: set[tuple[str, str]] = set()

    # --- test helpers -----------------------------------------------------------------------------------
    def add(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("uid", f"uid-{next(_uids)}")
        obj["metadata"].setdefault("generation", 1)
        self.objects[key_of(obj)] = obj
        return obj

    def find(self, kind: str, name: str) -> Obj | None:
        return next((o for k, o in self.objects.items() if k[1] == kind and k[3] == name), None)

    def kinds(self) -> list[tuple[str, str]]:
        return sorted((k[1], k[3]) for k in self.objects if k[1] != KIND)

    def resource(self, name: str = "demo", namespace: str = "calls") -> Obj:
        return copy.deepcopy(self.objects[API_VERSION, KIND, namespace, name])

    def reset_writes(self) -> None:
        self.writes.clear()

    # --- Cluster protocol ---------------------------------------------------------------------------------
    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        obj = self.objects.get((api_version, kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def served(self, api_version: str, kind: str) -> bool:
        return api_version.count(".") == 0 or "k8s.io" in api_version or (api_version, kind) in self.served_kinds

    async def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[Obj]:
        wanted = dict(part.split("=", 1) for part in label_selector.split(","))
        return [
            copy.deepcopy(o)
            for (av, k, ns, _), o in self.objects.items()
            if (av, k, ns) == (api_version, kind, namespace)
            and all(o["metadata"].get("labels", {}).get(lk) == lv for lk, lv in wanted.items())
        ]

    async def apply(self, manifest: Obj, *, field_manager: str, dry_run: bool = False) -> Obj:
        if manifest["kind"] in self.reject_kinds:
            raise ApiError(422, f"{manifest['kind']} is invalid: admission refused it")
        if manifest["kind"] == "RoleBinding":
            # As for a writer without cluster-admin: the roleRef is resolved to check escalation.
            role = (manifest["apiVersion"], "Role", manifest["metadata"]["namespace"], manifest["roleRef"]["name"])
            if role not in self.objects:
                raise ApiError(404, f'roles.rbac.authorization.k8s.io "{role[3]}" not found')
        if key_of(manifest) in self.clashing:
            raise ApiError(422, f"{manifest['kind']} is invalid: spec.ports[2].name: Duplicate value")
        live = self.objects.get(key_of(manifest))
        new = copy.deepcopy(manifest)
        entry: Obj = {"manager": field_manager, "operation": "Apply", "fieldsV1": {"f:spec": {}}}
        if "replicas" in new.get("spec", {}):
            entry["fieldsV1"]["f:spec"]["f:replicas"] = {}
        if live is not None:
            others = [e for e in live["metadata"].get("managedFields", []) if e["manager"] != field_manager]
            if field_manager.endswith("-handover"):  # a partial apply: merge into the live object
                merged = copy.deepcopy(live)
                merged["spec"].update(new["spec"])
                new = merged
            else:
                new["metadata"]["uid"] = live["metadata"]["uid"]
                new["metadata"]["generation"] = live["metadata"].get("generation", 1)
                if "status" in live:
                    new["status"] = copy.deepcopy(live["status"])
                if new["kind"] == "Deployment" and "replicas" not in new["spec"]:
                    kept = any("f:replicas" in e["fieldsV1"].get("f:spec", {}) for e in others)
                    new["spec"]["replicas"] = live["spec"]["replicas"] if kept else 1
                if new.get("spec") != live.get("spec"):
                    new["metadata"]["generation"] += 1
            new["metadata"]["managedFields"] = [*others, entry]
        else:
            new["metadata"]["uid"] = f"uid-{next(_uids)}"
            new["metadata"]["generation"] = 1
            new["metadata"]["managedFields"] = [entry]
            if new["kind"] == "Deployment":
                new["spec"].setdefault("replicas", 1)
        if dry_run:
            self.dry_runs += 1
        else:
            self.objects[key_of(new)] = new
            self.writes.append(("apply", new["kind"], new["metadata"]["name"]))
        return copy.deepcopy(new)

    async def merge_patch(self, manifest: Obj, *, field_manager: str, dry_run: bool = False) -> Obj:
        if manifest["kind"] in self.reject_kinds:
            raise ApiError(422, f"{manifest['kind']} is invalid: admission refused it")
        live = self.objects[key_of(manifest)]
        patched = _merge(live, {k: v for k, v in manifest.items() if k != "metadata"})
        patched["metadata"] = _merge(live["metadata"], manifest["metadata"])
        if dry_run:
            self.dry_runs += 1
        else:
            self.objects[key_of(manifest)] = patched
            self.clashing.discard(key_of(manifest))
            self.writes.append(("merge-patch", manifest["kind"], manifest["metadata"]["name"]))
        return copy.deepcopy(patched)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str) -> None:
        obj = self.objects.get((api_version, kind, namespace, name))
        if obj is not None and obj["metadata"]["uid"] == uid:
            del self.objects[api_version, kind, namespace, name]
            self.writes.append(("delete", kind, name))

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Obj) -> Obj:
        obj = self.objects[api_version, kind, namespace, name]
        obj["status"] = _merge(obj.get("status") or {}, status)
        self.writes.append(("status", kind, name))
        return copy.deepcopy(obj)


def _merge(target: Obj, patch: Obj) -> Obj:
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def mark_ready(cluster: FakeCluster) -> None:
    """Pretend the Deployment controller finished every rollout."""
    for obj in cluster.objects.values():
        if obj["kind"] == "Deployment":
            n = obj["spec"]["replicas"]
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "replicas": n,
                "readyReplicas": n,
                "updatedReplicas": n,
                "availableReplicas": n,
            }
