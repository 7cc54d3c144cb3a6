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
