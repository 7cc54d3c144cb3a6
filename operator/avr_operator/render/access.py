"""The core workers' own identity: a ServiceAccount, and a Role to patch pods (for the deletion cost).

RBAC cannot restrict `patch` to the caller's own pod; the cluster-wide admission policy in policy.py does, for
accounts named with WORKER_ACCOUNT_SUFFIX. Rendered only when core.scaleIn.deletionCost is on.
"""

from __future__ import annotations

from typing import Any

from avr_operator.api.resource import AVRDeployment
from avr_operator.render.names import CORE, child_name, metadata, worker_account

Manifest = dict[str, Any]


def worker_access(owner: AVRDeployment) -> list[Manifest]:
    if not owner.spec.core.scale_in.deletion_cost:
        return []
    account = worker_account(owner)
    name = child_name(owner, CORE)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(owner, CORE, account)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(owner, CORE, name),
            # get: read its own annotation back; patch: set it. Narrowed to the own pod by the admission policy.
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(owner, CORE, name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": owner.namespace}],
        },
    ]
