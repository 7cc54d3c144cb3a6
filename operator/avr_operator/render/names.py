"""Names and labels of the children of one AVRDeployment."""

from __future__ import annotations

from typing import Any

from avr_operator.api.resource import AVRDeployment
from avr_operator.constants import (
    API_VERSION,
    APP_NAME,
    FIELD_MANAGER,
    KIND,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
)

CORE = "core"
# Suffix of the core workers' ServiceAccount (`<name>-avr-worker`). The cluster's admission policy recognises the
# workers by it (request.userInfo.username ends with it), so it must be specific to this operator.
WORKER_ACCOUNT_SUFFIX = "-avr-worker"
# Suffix of the core's headless Service (`<name>-core-peers`): at most 52 + 11 = 63 characters, a DNS label.
PEERS = "core-peers"


def child_name(owner: AVRDeployment, component: str) -> str:
    return f"{owner.name}-{component}"


def worker_account(owner: AVRDeployment) -> str:
    """Name of the core pods' ServiceAccount, matched by the worker admission policy."""
    return f"{owner.name}{WORKER_ACCOUNT_SUFFIX}"


def selector_labels(owner: AVRDeployment, component: str) -> dict[str, str]:
    """Labels that select one component's pods; immutable in a Deployment, so keep them minimal."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: owner.name, LABEL_COMPONENT: component}


def labels(owner: AVRDeployment, component: str) -> dict[str, str]:
    return {**selector_labels(owner, component), LABEL_MANAGED_BY: FIELD_MANAGER, LABEL_PART_OF: APP_NAME}


def owned_selector(owner: AVRDeployment) -> str:
    """Label selector matching every child of `owner`."""
    return f"{LABEL_MANAGED_BY}={FIELD_MANAGER},{LABEL_INSTANCE}={owner.name}"


def metadata(owner: AVRDeployment, component: str, name: str | None = None) -> dict[str, Any]:
    """Child metadata; the ownerReference (known for objects from a cluster) enables garbage collection."""
    meta: dict[str, Any] = {
        "name": name or child_name(owner, component),
        "namespace": owner.namespace,
        "labels": labels(owner, component),
    }
    if owner.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta
