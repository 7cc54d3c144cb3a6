"""kopf wiring: which owner a child event re-checks, and that handlers are registered for every child kind."""

from __future__ import annotations

from typing import Any, cast

import kopf

from avr_operator import handlers


def test_child_events_map_to_their_controller_owner() -> None:
    owned = {
        "metadata": {
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "controller": False},
                {
                    "apiVersion": "avr.agentvoiceresponse.com/v1alpha1",
                    "kind": "AVRDeployment",
                    "name": "demo",
                    "controller": True,
                },
            ]
        }
    }
    assert handlers._owner(cast(kopf.Body, owned)) == "demo"
    assert handlers._owner(cast(kopf.Body, {"metadata": {}})) is None


def test_every_child_kind_is_watched() -> None:
    registry: Any = kopf.get_default_registry()
    watched = {h.id for h in registry._watching.get_all_handlers()}
    for _group, _version, plural in handlers.CHILD_RESOURCES:
        assert f"child-{plural}" in watched
    assert any("resource_changed" in w for w in watched)


class _Queue:
    def __init__(self) -> None:
        self.triggered: list[tuple[str, str]] = []

    def trigger(self, namespace: str, name: str) -> None:
        self.triggered.append((namespace, name))


def _child(rv: str, ready: int, last_update: str = "t0") -> dict[str, Any]:
    ref = {"apiVersion": "avr.agentvoiceresponse.com/v1alpha1", "kind": "AVRDeployment", "name": "demo"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "demo-core",
            "namespace": "calls",
            "uid": "d1",
            "resourceVersion": rv,
            "ownerReferences": [{**ref, "uid": "u1", "controller": True}],
        },
        "spec": {"replicas": 1},
        "status": {"readyReplicas": ready, "conditions": [{"type": "Available", "lastUpdateTime": last_update}]},
    }


async def test_child_status_churn_does_not_trigger_a_reconcile() -> None:
    from avr_operator.apply.cache import ChildCache  # noqa: PLC0415

    queue, memo = _Queue(), {"children": ChildCache(complete=True)}
    memo["queue"] = queue  # type: ignore[assignment]

    async def deliver(kind: str, obj: dict[str, Any]) -> None:
        event = cast(kopf.RawEvent, {"type": kind, "object": obj})
        await handlers.child_changed(event=event, type=kind, body=cast(kopf.Body, obj), namespace="calls", memo=memo)

    await deliver("ADDED", _child("1", 0))
    await deliver("MODIFIED", _child("2", 0, "t1"))  # a timestamp only
    assert queue.triggered == [("calls", "demo")]
    await deliver("MODIFIED", _child("3", 1, "t1"))  # became ready: the status must say so
    await deliver("DELETED", _child("4", 1, "t1"))
    assert queue.triggered == [("calls", "demo")] * 3


async def test_kopf_keeps_no_per_object_memory() -> None:
    from avr_operator.runner import memories  # noqa: PLC0415

    kept = memories()
    raw: Any = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"uid": "c1", "name": "x"}}
    memory = await kept.recall(raw, memobase=kopf.Memo(queue="shared"), noticed_by_listing=True)
    assert memory.memo["queue"] == "shared" and memory.noticed_by_listing  # what the event handler gets
    assert list(kept.iter_all_memories()) == []  # and nothing stays once the event is handled
