"""What the operator knows of its children and resources without asking the API server.

Fed by the watch events the operator receives anyway (and by the responses to its own writes), so a
reconcile that finds everything as it left it sends no request at all. Entries are slim, to keep memory flat
with thousands of children: no spec is kept, only

- a digest of the object's content (everything but `status` and volatile metadata): it changes with any
  edit, by hand or by a controller, and with nothing else;
- the spec hash and content digest last confirmed to match the desired manifest (`verified`): while the
  content digest is unchanged and the desired hash is the same, the child needs neither a GET nor a dry run;
- for Deployments and HorizontalPodAutoscalers, the few fields the status computation reads (as compact JSON,
  smaller than the nested dicts it came from).

Strings that many entries share (apiVersion, kind, namespace, the owner's uid) are interned: watch events
decode a fresh copy of each for every object.

Resource versions order updates: a response or event older than what is stored is ignored.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zlib
from dataclasses import dataclass
from typing import Any

from avr_operator.constants import API_VERSION, KIND

Obj = dict[str, Any]
ChildKey = tuple[str, str, str, str]  # apiVersion, kind, namespace, name
_VOLATILE_META = ("managedFields", "resourceVersion", "generation")


def child_key(obj: Obj) -> ChildKey:
    meta = obj.get("metadata") or {}
    shared = (str(obj.get("apiVersion", "")), str(obj.get("kind", "")), str(meta.get("namespace", "")))
    return sys.intern(shared[0]), sys.intern(shared[1]), sys.intern(shared[2]), meta["name"]


def content_digest(obj: Obj) -> str:
    """Digest of what an edit can change: the object without status, resource version and managed fields."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _VOLATILE_META}
    content = {k: v for k, v in obj.items() if k != "status"}
    content["metadata"] = meta
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def status_summary(obj: Obj) -> Obj | None:
    """The fields of a Deployment or HPA that the status computation reads (None for other kinds)."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    meta = obj.get("metadata") or {}
    if obj.get("kind") == "Deployment":
        keep = ("observedGeneration", "replicas", "readyReplicas", "updatedReplicas")
        conditions = [
            {k: c[k] for k in ("type", "status", "reason", "message") if k in c}
            for c in status.get("conditions") or []
            if c.get("type") in ("Progressing", "ReplicaFailure")
        ]
        slim: Obj = {k: status[k] for k in keep if k in status}
        if conditions:
            slim["conditions"] = conditions
        return {
            "metadata": {"name": meta.get("name"), "generation": meta.get("generation", 0)},
            "spec": {"replicas": spec["replicas"]} if "replicas" in spec else {},
            "status": slim,
        }
    if obj.get("kind") == "HorizontalPodAutoscaler":
        return {
            "metadata": {"name": meta.get("name")},
            "spec": {"minReplicas": spec["minReplicas"]} if "minReplicas" in spec else {},
            "status": {k: status[k] for k in ("currentReplicas", "desiredReplicas", "currentMetrics") if k in status},
        }
    return None


def _controller_uid(obj: Obj) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("apiVersion") == API_VERSION and ref.get("kind") == KIND and ref.get("controller"):
            return sys.intern(str(ref.get("uid")))  # shared by the resource's children
    return None


def _pack(summary: Obj | None) -> bytes | None:
    return None if summary is None else json.dumps(summary, sort_keys=True, separators=(",", ":")).encode()


def _newer(new: str, old: str) -> bool:
    """Whether resource version `new` is not older than `old` (opaque strings: unknown order counts as newer)."""
    if new.isdigit() and old.isdigit():
        return int(new) >= int(old)
    return True


@dataclass(slots=True)
class Child:
    uid: str
    resource_version: str
    digest: str
    owner_uid: str | None
    packed_summary: bytes | None  # status_summary() as JSON
    verified: tuple[str, str] | None = None  # (desired spec hash, content digest) confirmed equal

    @property
    def summary(self) -> Obj | None:
        """The fields of a Deployment or HPA that the status computation reads (None for other kinds)."""
        if self.packed_summary is None:
            return None
        summary: Obj = json.loads(self.packed_summary)
        return summary


class ChildCache:
    """Children by (apiVersion, kind, namespace, name).

    `complete` says the cache is fed by watches of every child kind: then an owner's children are exactly
    those it lists (pruning needs no LIST). A cache that is not complete only remembers what it was given.
    """

    def __init__(self, *, complete: bool = False) -> None:
        self.complete = complete
        self._children: dict[ChildKey, Child] = {}
        self._by_owner: dict[str, set[ChildKey]] = {}

    def __len__(self) -> int:
        return len(self._children)

    def get(self, key: ChildKey) -> Child | None:
        return self._children.get(key)

    def put(self, obj: Obj) -> bool:
        """Record an object seen in a watch event or a response; True when its content or summary changed."""
        key, meta = child_key(obj), obj.get("metadata") or {}
        version = str(meta.get("resourceVersion", ""))
        old = self._children.get(key)
        if old is not None and old.uid == meta.get("uid") and not _newer(version, old.resource_version):
            return False
        digest, summary, owner = content_digest(obj), _pack(status_summary(obj)), _controller_uid(obj)
        verified = old.verified if old is not None and old.uid == meta.get("uid") else None
        changed = old is None or old.digest != digest or old.packed_summary != summary or old.uid != meta.get("uid")
        if old is not None and old.owner_uid != owner:
            self._unindex(key, old.owner_uid)
        self._children[key] = Child(str(meta.get("uid", "")), version, digest, owner, summary, verified)
        if owner is not None:
            self._by_owner.setdefault(owner, set()).add(key)
        return changed

    def remove(self, key: ChildKey) -> None:
        old = self._children.pop(key, None)
        if old is not None:
            self._unindex(key, old.owner_uid)

    def _unindex(self, key: ChildKey, owner: str | None) -> None:
        keys = self._by_owner.get(owner or "")
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_owner[owner or ""]

    def verify(self, key: ChildKey, spec_hash: str, live: Obj) -> None:
        """`live` (now recorded) matches the desired manifest of hash `spec_hash`."""
        self.put(live)
        child = self._children.get(key)
        if child is not None:
            digest = content_digest(live)
            child.verified = (spec_hash, child.digest if digest == child.digest else digest)

    def in_sync(self, key: ChildKey, spec_hash: str) -> bool:
        """The child was confirmed to match this desired manifest, and has not been edited since."""
        child = self._children.get(key)
        return child is not None and child.verified == (spec_hash, child.digest)

    def owned(self, owner_uid: str) -> list[tuple[ChildKey, str]]:
        """(key, uid) of every child whose controller is the resource with this uid."""
        return [(k, self._children[k].uid) for k in sorted(self._by_owner.get(owner_uid, ()))]


class BodyCache:
    """The latest body of each AVRDeployment (compressed compact JSON, without managed fields, as it is rarely read)."""

    def __init__(self) -> None:
        self._bodies: dict[tuple[str, str], tuple[str, bytes]] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def put(self, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        version = str(meta.get("resourceVersion", ""))
        old = self._bodies.get(key)
        if old is not None and not _newer(version, old[0]):
            return
        slim = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
        self._bodies[key] = (version, zlib.compress(json.dumps(slim, separators=(",", ":")).encode(), 1))

    def get(self, namespace: str, name: str) -> Obj | None:
        found = self._bodies.get((namespace, name))
        if found is None:
            return None
        body: Obj = json.loads(zlib.decompress(found[1]))
        return body

    def forget(self, namespace: str, name: str) -> None:
        self._bodies.pop((namespace, name), None)
